"""Other tools' model stores, laid out in a directory exactly as each tool writes them, for tests and benchmarks.

Model files are hard links to real GGUFs (the embedded SmolLM2), so the registry reads real headers
without copying 98 MB per store; a hard link is a distinct path, so dedup by path does not merge them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

OLLAMA_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OLLAMA_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA_LAYER = "application/vnd.ollama.image."


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> Path:
    """Hard-link a file into place (a copy where links are impossible); the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


# --------------------------------------------------------------------------- Ollama


def ollama_blob(root: Path, data: bytes) -> dict:
    """Write a blob under its digest; its layer descriptor (without mediaType)."""
    hex_digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{hex_digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{hex_digest}", "size": len(data)}


def ollama_model(root: Path, name: str, gguf: Path, gguf_sha256: str, *, template: str | None = "{{ .Prompt }}",
                 params: Mapping | None = None, system: str | None = None, registry: str = "registry.ollama.ai",
                 namespace: str = "library", family: str = "llama", link_blob: bool = True,
                 extra_layers: tuple[dict, ...] = ()) -> Path:
    """Write an Ollama model `model:tag` as `ollama pull` leaves it (blobs by digest, a v2 manifest); the manifest."""
    model, _, tag = name.partition(":")
    blob = root / "blobs" / f"sha256-{gguf_sha256}"
    if link_blob and not blob.exists():
        link_or_copy(gguf, blob)
    config = ollama_blob(root, json.dumps({"model_format": "gguf", "model_family": family, "model_families": [family],
                                           "model_type": "135M", "file_type": "Q4_1", "architecture": "amd64",
                                           "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    layers = [{"mediaType": OLLAMA_LAYER + "model", "digest": f"sha256:{gguf_sha256}", "size": gguf.stat().st_size}]
    for kind, text in (("template", template), ("system", system),
                       ("params", json.dumps(params) if params is not None else None)):
        if text is not None:
            layers.append({"mediaType": OLLAMA_LAYER + kind, **ollama_blob(root, text.encode())})
    manifest = {"schemaVersion": 2, "mediaType": OLLAMA_MANIFEST_TYPE,
                "config": {"mediaType": OLLAMA_CONFIG_TYPE, **config}, "layers": [*layers, *extra_layers]}
    path = root / "manifests" / registry / namespace / model / (tag or "latest")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


# --------------------------------------------------------------------------- Hugging Face hub cache


def hf_repo(root: Path, repo_id: str, files: Mapping[str, Path | bytes], *, commit: str = "a" * 40,
            ref: bool = True, digests: Mapping[Path, str] | None = None) -> Path:
    """Write a repository as huggingface_hub caches it (blobs by hash, snapshot symlinks, refs/main); the snapshot.

    ``files`` maps paths in the repository to a file (hard-linked as the blob) or bytes; ``digests``
    gives known sha256s of large files so they are not hashed again.
    """
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for relative, content in files.items():
        if isinstance(content, bytes):
            blob_hash = hashlib.sha256(content).hexdigest()
            blob = repo / "blobs" / blob_hash
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
        else:
            blob_hash = (digests or {}).get(content) or sha256_file(content)
            blob = repo / "blobs" / blob_hash
            if not blob.exists():
                link_or_copy(content, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


def hf_directory_files(directory: Path) -> dict[str, Path]:
    """A model directory's files as `hf_repo` takes them."""
    return {p.name: p for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}


# --------------------------------------------------------------------------- llama.cpp


def llamacpp_download(root: Path, repo: str, file: str, gguf: Path, *, tag: str | None = "latest") -> Path:
    """A `llama-server -hf repo:tag` download in the flat cache: the file, its .etag and the manifest; the file."""
    target = link_or_copy(gguf, root / f"{repo}_{file}".replace("/", "_"))
    (root / (target.name + ".etag")).write_text('"0123456789abcdef"')
    if tag is not None:
        manifest = {"ggufFile": {"rfilename": file, "blobId": "sha256:0", "size": gguf.stat().st_size}}
        (root / ("manifest=" + f"{repo}={tag}".replace("/", "=") + ".json")).write_text(json.dumps(manifest))
    return target
