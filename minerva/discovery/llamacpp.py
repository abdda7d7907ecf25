"""llama.cpp's download cache (``-hf``, ``-mu``): flat files, or the hub layout of newer versions.

Up to early 2026 llama.cpp stored ``-hf org/repo:tag`` downloads flat in its cache directory as
``org_repo_<file>.gguf`` (slashes of the file's path also ``_``), with ``<file>.etag`` beside it,
``manifest=org=repo=tag.json`` naming the file (its ``ggufFile.rfilename``) and
``<file>.downloadInProgress`` while downloading. A file a manifest names is listed as
``org/repo:tag``, the name ``-hf`` took and ``--cache-list`` shows; any other GGUF by its cache file
name without ``.gguf``. Newer versions keep ``models--org--repo`` folders in the hub layout (in
``LLAMA_CACHE`` when set, else in the Hugging Face cache); those are read as the hub cache is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from minerva.discovery.huggingface import repo_id_of, scan_repo
from minerva.discovery.layout import gguf_sets
from minerva.discovery.scan import ScanBuilder, StoreScan, first_access_problem

STORE = "llamacpp"
MANIFEST_PREFIX = "manifest="
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".downloadInProgress"
MAX_MANIFEST_BYTES = 1 << 20


def default_roots(env: Mapping[str, str], home: Path, platform: str = sys.platform) -> tuple[Path, ...]:
    """llama.cpp's cache: LLAMA_CACHE, else XDG_CACHE_HOME/llama.cpp or the platform's cache folder."""
    if env.get("LLAMA_CACHE"):
        return (Path(env["LLAMA_CACHE"]).expanduser(),)
    if platform == "darwin":
        return (home / "Library" / "Caches" / "llama.cpp",)
    if env.get("XDG_CACHE_HOME"):
        return (Path(env["XDG_CACHE_HOME"]).expanduser() / "llama.cpp",)
    return (home / ".cache" / "llama.cpp",)


def cache_file_name(repo: str, file: str) -> str:
    """The flat cache file llama.cpp writes a repository's file to: ``org_repo_file`` with '/' as '_'."""
    return f"{repo}_{file}".replace("/", "_")


def discover(root: Path) -> StoreScan:
    """Every model in a llama.cpp cache, and what was skipped (partial downloads, dangling links)."""
    scan = ScanBuilder(STORE)
    entries = scan.entries(root)
    if entries is None:
        return scan.result()
    names = {entry.name for entry in entries if not entry.is_dir()}
    for entry in entries:
        repo_id = repo_id_of(entry.name)
        if repo_id is not None and entry.is_dir():
            scan_repo(scan, root / entry.name, repo_id)
    named = _manifest_names(scan, root, names)
    for gguf in gguf_sets(names):
        model_id = named.get(gguf.first, gguf.stem)
        first = root / gguf.first
        if gguf.missing:
            partial = [p for p in gguf.missing if p + PARTIAL_SUFFIX in names]
            reason = f"a partial download: {partial[0]}{PARTIAL_SUFFIX}" if partial else \
                f"split part {gguf.missing[0]} is missing"
            scan.skip(model_id, first, reason)
        elif problem := first_access_problem(root, gguf.parts):
            scan.skip(model_id, first, problem)
        else:
            scan.found(model_id, first, first, aliases=(gguf.stem,) if model_id != gguf.stem else ())
    for name in sorted(names):
        final = name.removesuffix(PARTIAL_SUFFIX)
        if name != final and final not in names and [s.first for s in gguf_sets([final])] == [final]:
            scan.skip(named.get(final, final[: -len(".gguf")]), root / name, f"a partial download: {name}")
    for file, model_id in named.items():
        if file not in names and file + PARTIAL_SUFFIX not in names:
            scan.skip(model_id, root / file, f"its manifest names {file}, which is not in the cache")
    return scan.result()


def _manifest_names(scan: ScanBuilder, root: Path, names: set[str]) -> dict[str, str]:
    """Cache file name → ``org/repo:tag``, from the manifest=org=repo=tag.json files."""
    named: dict[str, str] = {}
    for name in sorted(names):
        if not (name.startswith(MANIFEST_PREFIX) and name.endswith(MANIFEST_SUFFIX)):
            continue
        parts = name[len(MANIFEST_PREFIX):-len(MANIFEST_SUFFIX)].split("=")
        if len(parts) != 3 or not all(parts):
            continue
        repo, tag = f"{parts[0]}/{parts[1]}", parts[2]
        text = scan.read_text(root / name, f"{repo}:{tag}", MAX_MANIFEST_BYTES)
        try:
            gguf_file = json.loads(text)["ggufFile"]["rfilename"] if text else None
        except (ValueError, KeyError, TypeError):
            gguf_file = None
        if isinstance(gguf_file, str) and gguf_file:
            named.setdefault(cache_file_name(repo, gguf_file), f"{repo}:{tag}")
    return named
