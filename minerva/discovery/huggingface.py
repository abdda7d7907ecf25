"""The Hugging Face hub cache: models--<org>--<name>/snapshots/<commit>/ with symlinks into blobs/.

The snapshot refs/main names is the one read (else the only, or the newest, snapshot). A complete
SafeTensors directory at its root is listed as ``org/name``; its GGUF files too, as ``org/name`` when
the repository holds one GGUF model and as ``org/name:<file stem>`` when it holds several (one per
quantization). A snapshot missing a shard that model.safetensors.index.json lists, a GGUF whose link
points at a blob that is gone, and downloads still in ``blobs/*.incomplete`` are skipped with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from minerva.discovery.layout import gguf_sets
from minerva.discovery.scan import ScanBuilder, StoreScan, first_access_problem
from minerva.formats.safetensors import CONFIG_FILE, SAFETENSORS_INDEX_FILE, SAFETENSORS_SUFFIX

STORE = "huggingface"
REPO_PREFIX = "models--"
INCOMPLETE_SUFFIX = ".incomplete"
MAIN_REF = "main"
MAX_REF_BYTES = 1024
MAX_JSON_BYTES = 64 * 1024 * 1024


def default_roots(env: Mapping[str, str], home: Path) -> tuple[Path, ...]:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG, ~/.cache."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return (Path(env[variable]).expanduser(),)
    if env.get("HF_HOME"):
        return (Path(env["HF_HOME"]).expanduser() / "hub",)
    if env.get("XDG_CACHE_HOME"):
        return (Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub",)
    return (home / ".cache" / "huggingface" / "hub",)


def repo_id_of(folder: str) -> str | None:
    """``models--org--name`` → ``org/name`` (None for datasets, spaces and other folders)."""
    if not folder.startswith(REPO_PREFIX) or len(folder) == len(REPO_PREFIX):
        return None
    return folder[len(REPO_PREFIX):].replace("--", "/")


def discover(root: Path) -> StoreScan:
    """Every model in a hub cache, and what was skipped."""
    scan = ScanBuilder(STORE)
    for entry in scan.entries(root) or ():
        repo_id = repo_id_of(entry.name)
        if repo_id is not None and entry.is_dir():
            scan_repo(scan, root / entry.name, repo_id)
    return scan.result()


def scan_repo(scan: ScanBuilder, repo: Path, repo_id: str) -> None:
    """Add one cached repository's models (or why they are skipped) to a scan."""
    incomplete = sorted(e.name for e in scan.entries(repo / "blobs", name=repo_id) or ()
                        if e.name.endswith(INCOMPLETE_SUFFIX))
    snapshot = _chosen_snapshot(scan, repo, repo_id)
    if snapshot is None:
        if incomplete:
            scan.skip(repo_id, repo / "blobs" / incomplete[0],
                      "a partial download: blobs/*.incomplete and no snapshot yet")
        return
    files = _snapshot_files(scan, snapshot, repo_id)
    note = f" (a download in progress: {len(incomplete)} file(s) in blobs/*.incomplete)" if incomplete else ""
    revision = (("revision", snapshot.name),)
    has_directory = safetensors_directory(scan, snapshot, files, repo_id, note, revision)
    sets = gguf_sets(files)
    for gguf in sets:
        model_id = repo_id if len(sets) == 1 and not has_directory else f"{repo_id}:{gguf.stem}"
        first = snapshot / gguf.first
        if gguf.missing:
            scan.skip(model_id, first, f"split part {gguf.missing[0]} is missing{note}")
        elif problem := first_access_problem(snapshot, gguf.parts):
            scan.skip(model_id, first, problem + note)
        else:
            scan.found(model_id, first, snapshot, revision)


def safetensors_directory(scan: ScanBuilder, folder: Path, files: set[str], model_id: str, note: str = "",
                          facts: tuple[tuple[str, str], ...] = ()) -> bool:
    """Add a folder to a scan as a SafeTensors directory when it is one; whether it is one (servable or not).

    Servable means config.json and every shard model.safetensors.index.json lists (or the loose
    .safetensors files) can be read, and the weights are not MLX-quantized (transformers cannot load those).
    """
    weights = sorted(f for f in files if "/" not in f and f.endswith(SAFETENSORS_SUFFIX))
    if CONFIG_FILE not in files or not (weights or SAFETENSORS_INDEX_FILE in files):
        return False
    needed = [CONFIG_FILE]
    if SAFETENSORS_INDEX_FILE in files:
        shards = _index_shards(scan, folder, model_id)
        if shards is None:
            return True
        missing = [shard for shard in shards if shard not in files]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            scan.skip(model_id, folder, f"shard {missing[0]} listed in {SAFETENSORS_INDEX_FILE} is missing{more}{note}")
            return True
        needed += shards
    else:
        needed += weights
    problem = first_access_problem(folder, needed)
    if problem:
        scan.skip(model_id, folder, problem + note)
        return True
    config = _json_object(scan, folder / CONFIG_FILE, model_id)
    if isinstance(config.get("quantization"), dict) and "bits" in config["quantization"]:
        scan.skip(model_id, folder, "MLX-quantized weights (config.json 'quantization'), which transformers cannot load")
        return True
    scan.found(model_id, folder, folder, facts)
    return True


def _chosen_snapshot(scan: ScanBuilder, repo: Path, repo_id: str) -> Path | None:
    """refs/main's snapshot when present, else the only (or newest) snapshot."""
    snapshots = repo / "snapshots"
    revisions = [e.name for e in scan.entries(snapshots, name=repo_id) or () if e.is_dir()]
    if not revisions:
        return None
    ref = repo / "refs" / MAIN_REF  # watched even when absent: its creation changes its mtime from 0
    if scan.watch(ref):
        commit = (scan.read_text(ref, repo_id, MAX_REF_BYTES) or "").strip()
        if commit in revisions:
            return snapshots / commit
    return max((snapshots / r for r in revisions), key=lambda p: (scan.watch(p), p.name))


def _snapshot_files(scan: ScanBuilder, snapshot: Path, repo_id: str) -> set[str]:
    """Every file (or link) under a snapshot, as paths relative to it with '/'."""
    files: set[str] = set()
    pending = [""]
    while pending:
        relative = pending.pop()
        for entry in scan.entries(snapshot / relative, name=repo_id) or ():
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(name)
            else:
                files.add(name)
    return files


def _index_shards(scan: ScanBuilder, folder: Path, model_id: str) -> list[str] | None:
    """The shard file names model.safetensors.index.json lists; None (and a skip) when it cannot say."""
    index = folder / SAFETENSORS_INDEX_FILE
    problem = first_access_problem(folder, [SAFETENSORS_INDEX_FILE])
    if problem:
        scan.skip(model_id, index, problem)
        return None
    weight_map = _json_object(scan, index, model_id).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        scan.skip(model_id, index, f"{index.name} has no weight_map of shard file names")
        return None
    return sorted({shard for shard in weight_map.values() if os.path.basename(shard) == shard})


def _json_object(scan: ScanBuilder, path: Path, model_id: str) -> dict:
    text = scan.read_text(path, model_id, MAX_JSON_BYTES)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
