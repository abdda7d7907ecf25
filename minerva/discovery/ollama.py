"""Ollama's store: manifests/<registry>/<namespace>/<model>/<tag> naming blobs/sha256-<hex> by digest.

The GGUF blob of a manifest's model layer is the model, listed under Ollama's own name
(``qwen2.5-coder:7b``: the default registry and the ``library`` namespace are dropped, as Ollama
shows them). Its template, params and system layers are kept as facts; the template is a Go
template, not Jinja, so serving uses the GGUF's own chat template. Names whose manifests point at
the same blob are one model with aliases.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minerva.discovery.scan import ScanBuilder, StoreScan, access_problem

STORE = "ollama"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MANIFEST_MEDIA_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v2+json",
                                  "application/vnd.oci.image.manifest.v1+json"})
LAYER_PREFIX = "application/vnd.ollama.image."
MODEL_LAYER = LAYER_PREFIX + "model"
ADAPTER_LAYER = LAYER_PREFIX + "adapter"
PROJECTOR_LAYER = LAYER_PREFIX + "projector"
TEXT_LAYERS = {LAYER_PREFIX + "template": "template", LAYER_PREFIX + "system": "system",
               LAYER_PREFIX + "params": "params"}
"""Layers read as facts, by media type: what each becomes."""
CONFIG_FACTS = {"model_family": "family", "model_type": "parameter_size", "file_type": "quantization",
                "model_format": "model_format"}
"""Keys of the manifest's config blob kept as facts."""
DIGEST = re.compile(r"^sha256[:-](?P<hex>[0-9a-f]{64})$")
PARTIAL_SUFFIX = "-partial"
MAX_MANIFEST_BYTES = 1 << 20
MAX_LAYER_BYTES = 1 << 20


def default_roots(env: Mapping[str, str], home: Path) -> tuple[Path, ...]:
    """Where Ollama keeps models: OLLAMA_MODELS, else ~/.ollama/models and the Linux service's store."""
    if env.get("OLLAMA_MODELS"):
        return (Path(env["OLLAMA_MODELS"]).expanduser(),)
    return (home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models"))


def display_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """A model's name as Ollama shows it: the default registry and namespace left out."""
    if registry.lower() != DEFAULT_REGISTRY:
        return f"{registry}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def blob_name(digest: str) -> str | None:
    """The file name of a blob (``sha256-<hex>``), or None for a digest Ollama would not write."""
    match = DIGEST.match(digest) if isinstance(digest, str) else None
    return f"sha256-{match['hex']}" if match else None


def discover(root: Path) -> StoreScan:
    """Every model in an Ollama store, and what was skipped (partial blobs, missing blobs, bad manifests)."""
    scan = ScanBuilder(STORE)
    if scan.entries(root) is None:
        return scan.result()
    blobs_dir = root / "blobs"
    blobs = {entry.name for entry in scan.entries(blobs_dir) or ()}
    by_blob: dict[Path, list[tuple[str, Path, tuple[tuple[str, str], ...]]]] = {}
    used: set[str] = set()
    manifests = root / "manifests"
    for registry in _subdirectories(scan, manifests):
        for namespace in _subdirectories(scan, manifests / registry):
            for model in _subdirectories(scan, manifests / registry / namespace):
                for tag in sorted(e.name for e in scan.entries(manifests / registry / namespace / model) or ()):
                    name = display_name(registry, namespace, model, tag)
                    manifest = manifests / registry / namespace / model / tag
                    read = _read_manifest(scan, name, manifest, blobs_dir, blobs, used)
                    if read is not None:
                        by_blob.setdefault(read[0], []).append((name, manifest, read[1]))
    for blob, names in by_blob.items():
        (name, manifest, facts), *others = sorted(names)
        scan.found(name, blob, manifest, facts, aliases=tuple(other[0] for other in others))
    for partial in sorted(blobs):
        if partial.endswith(PARTIAL_SUFFIX) and partial.removesuffix(PARTIAL_SUFFIX) not in used:
            scan.skip(partial, blobs_dir / partial, "an unfinished Ollama download (no manifest names it yet)")
    return scan.result()


def _subdirectories(scan: ScanBuilder, directory: Path) -> list[str]:
    return [entry.name for entry in scan.entries(directory) or () if entry.is_dir()]


def _read_manifest(scan: ScanBuilder, name: str, manifest: Path, blobs_dir: Path, blobs: set[str],
                   used: set[str]) -> tuple[Path, tuple[tuple[str, str], ...]] | None:
    """The model blob a manifest names and its facts; None (and a skip) when it cannot be served."""
    text = scan.read_text(manifest, name, MAX_MANIFEST_BYTES)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        scan.skip(name, manifest, "the manifest is not valid JSON")
        return None
    if not _is_image_manifest(data):
        scan.skip(name, manifest, "not an image manifest (schemaVersion 2 with layers)")
        return None
    layers = [layer for layer in data["layers"] if isinstance(layer, dict)]
    blob_of = {id(layer): blob_name(layer.get("digest", "")) for layer in layers}
    used.update(blob for blob in blob_of.values() if blob)
    models = [layer for layer in layers if layer.get("mediaType") == MODEL_LAYER]
    if len(models) != 1:
        scan.skip(name, manifest, f"{len(models)} model layers ({MODEL_LAYER}); minerva serves one GGUF")
        return None
    if any(layer.get("mediaType") == ADAPTER_LAYER for layer in layers):
        scan.skip(name, manifest, f"it has a LoRA adapter layer ({ADAPTER_LAYER}), which minerva does not apply")
        return None
    model_blob = blob_of[id(models[0])]
    if model_blob is None:
        scan.skip(name, manifest, f"the model layer's digest {models[0].get('digest')!r} is not sha256:<hex>")
        return None
    blob = blobs_dir / model_blob
    problem = _blob_problem(blob, blobs, models[0].get("size"))
    if problem:
        scan.skip(name, blob, problem)
        return None
    facts = [("model_digest", "sha256:" + model_blob.removeprefix("sha256-")),
             ("manifest_digest", "sha256:" + hashlib.sha256(text.encode()).hexdigest()),
             *_config_facts(data.get("config"), blobs_dir, blobs)]
    model_format = dict(facts).get("model_format", "gguf")
    if model_format.lower() != "gguf":
        scan.skip(name, manifest, f"its model format is {model_format}, not GGUF")
        return None
    for layer in layers:
        kind, layer_blob = TEXT_LAYERS.get(layer.get("mediaType", "")), blob_of[id(layer)]
        if layer_blob not in blobs:
            continue
        if kind and (value := _small_text(blobs_dir / layer_blob)) is not None:
            facts.append((kind, value))
        if layer.get("mediaType") == PROJECTOR_LAYER:
            facts.append(("projector", str(blobs_dir / layer_blob)))
    return blob, tuple(facts)


def _is_image_manifest(data: Any) -> bool:
    return (isinstance(data, dict) and data.get("schemaVersion") == 2 and isinstance(data.get("layers"), list)
            and data.get("mediaType") in (None, *MANIFEST_MEDIA_TYPES))


def _blob_problem(blob: Path, blobs: set[str], size: Any) -> str | None:
    if blob.name not in blobs:
        if blob.name + PARTIAL_SUFFIX in blobs:
            return f"a partial download: its model blob is still {blob.name}{PARTIAL_SUFFIX}"
        return f"its model blob {blob.name} is missing"
    problem = access_problem(blob)
    if problem:
        return f"its model blob is {problem}"
    actual = blob.stat().st_size
    if isinstance(size, int) and not isinstance(size, bool) and size != actual:
        return f"its model blob has {actual} bytes, the manifest says {size} (an incomplete or damaged file)"
    return None


def _config_facts(config: Any, blobs_dir: Path, blobs: set[str]) -> list[tuple[str, str]]:
    config_blob = blob_name(config.get("digest", "")) if isinstance(config, dict) else None
    if config_blob not in blobs:
        return []
    text = _small_text(blobs_dir / config_blob)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    return [(fact, data[key]) for key, fact in CONFIG_FACTS.items() if isinstance(data.get(key), str) and data[key]]


def _small_text(path: Path) -> str | None:
    """A template/params/system/config blob's text; None when unreadable, too large or not UTF-8."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LAYER_BYTES + 1)
        return data.decode("utf-8") if len(data) <= MAX_LAYER_BYTES else None
    except (OSError, UnicodeDecodeError):
        return None
