"""LM Studio's models folder: <publisher>/<repo>/<file>.gguf, and SafeTensors directories as <publisher>/<repo>.

A GGUF is listed as ``publisher/repo/<file stem>`` (split sets once, by their first part; mmproj
projectors are not models); a complete SafeTensors directory as ``publisher/repo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from minerva.discovery.huggingface import safetensors_directory
from minerva.discovery.layout import gguf_sets
from minerva.discovery.scan import ScanBuilder, StoreScan, first_access_problem

STORE = "lmstudio"


def default_roots(env: Mapping[str, str], home: Path) -> tuple[Path, ...]:
    """LM Studio's models folders: ~/.lmstudio/models, and ~/.cache/lm-studio/models of older versions."""
    return (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models")


def discover(root: Path) -> StoreScan:
    """Every model in an LM Studio models folder, and what was skipped."""
    scan = ScanBuilder(STORE)
    for publisher in scan.entries(root) or ():
        if not publisher.is_dir():
            continue
        for repo in scan.entries(root / publisher.name, name=publisher.name) or ():
            if repo.is_dir():
                _scan_repo(scan, root / publisher.name / repo.name, f"{publisher.name}/{repo.name}")
    return scan.result()


def _scan_repo(scan: ScanBuilder, folder: Path, repo_id: str) -> None:
    files = {entry.name for entry in scan.entries(folder, name=repo_id) or () if not entry.is_dir()}
    safetensors_directory(scan, folder, files, repo_id)
    for gguf in gguf_sets(files):
        model_id = f"{repo_id}/{gguf.stem}"
        first = folder / gguf.first
        if gguf.missing:
            scan.skip(model_id, first, f"split part {gguf.missing[0]} is missing")
        elif problem := first_access_problem(folder, gguf.parts):
            scan.skip(model_id, first, problem)
        else:
            scan.found(model_id, first, first)
