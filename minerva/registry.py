"""The model registry: stable ids → ModelInfo, from explicit registrations, the default, directories and
the stores of other tools (minerva.discovery)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from minerva.core.errors import InvalidRequestError, ModelFormatError, ModelNotFoundError
from minerva.discovery import DiscoveredModel, StoreLocation
from minerva.discovery.cache import StoreCache
from minerva.formats.detect import discover_models, read_model_info
from minerva.formats.model_info import ModelInfo

if TYPE_CHECKING:
    from minerva.engine.upstream.engine import UpstreamModel

logger = logging.getLogger(__name__)

SPLIT_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)
MODEL_SUFFIXES = (".gguf", ".safetensors")

Fingerprint = tuple[int, int]  # (total size, newest mtime in ns)

ENGINE_BY_FORMAT = {"gguf": "llamacpp", "safetensors": "transformers"}
"""The engine that serves a local model file of each format."""


@dataclass(frozen=True)
class RegisteredModel:
    """A model the server can serve: its id, where it came from and its header metadata."""

    id: str
    info: ModelInfo
    source: str  # "explicit", "default", "dir", "fine_tuned", or the discovery store ("ollama", "huggingface"...)
    fingerprint: Fingerprint
    engine: str = ""  # the engine package that serves it (minerva.engine.<name>); by format when empty
    base: RegisteredModel | None = None  # a fine-tuned model: the model whose engine serves it
    adapter: str | None = None  # a fine-tuned model: its LoRA adapter (a GGUF file or a PEFT directory)
    adapter_fingerprint: Fingerprint | None = None
    discovered: DiscoveredModel | None = None  # a model another tool downloaded: where, and that store's facts
    upstream: UpstreamModel | None = None  # a model served by another server (engine "upstream")

    def __post_init__(self) -> None:
        if not self.engine:
            object.__setattr__(self, "engine", ENGINE_BY_FORMAT[self.info.format])

    @property
    def serving_id(self) -> str:
        """The id of the loaded engine that serves this model (the base's, for a fine-tuned model)."""
        return self.base.id if self.base is not None else self.id


def capabilities_of(model: RegisteredModel) -> list[str]:
    """What the model can be asked to do through this server."""
    if model.info.kind == "embedding":
        return ["embeddings"]
    caps = ["completions", "chat"]
    if model.info.format == "gguf" or model.info.path not in model.info.files:  # GGUF, or a HF directory
        caps += ["tools", "json_schema"]
    return caps


@dataclass(frozen=True)
class _Candidate:
    path: Path
    explicit_id: str
    source: str
    priority: int
    discovered: DiscoveredModel | None = None


def derive_model_id(path: Path) -> str:
    """Id from a file or directory name: lowercase, model suffixes and split suffixes dropped."""
    name = path.name
    for suffix in MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = SPLIT_SUFFIX.sub("", name)
    return name.strip().lower() or "model"


def fingerprint_of(path: Path) -> Fingerprint | None:
    """(size, mtime) of a model file, or summed over a directory's files; None when it is gone."""
    try:
        st = os.stat(path)  # one stat per listing and model: the registry lists on every /v1/models
        if stat.S_ISDIR(st.st_mode):
            size, newest = 0, 0
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_file():
                        entry_st = entry.stat()
                        size += entry_st.st_size
                        newest = max(newest, entry_st.st_mtime_ns)
            return size, newest
        if SPLIT_SUFFIX.search(path.stem):
            size, newest = 0, 0
            prefix = SPLIT_SUFFIX.sub("", path.stem)
            for sibling in path.parent.glob(f"{glob_escape(prefix)}-*-of-*{path.suffix}"):
                sst = sibling.stat()
                size += sst.st_size
                newest = max(newest, sst.st_mtime_ns)
            return size, newest
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a literal file-name prefix."""
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass(frozen=True)
class FineTunedEntry:
    """A fine-tuned model's registration: the base model id and the adapter applied on it."""

    base_id: str
    adapter: Path


def check_adapter_for(base: RegisteredModel, adapter: Path) -> None:
    """The adapter must be the kind the base's engine loads: a LoRA GGUF file, or a PEFT directory."""
    if base.base is not None:
        raise InvalidRequestError(f"'{base.id}' is itself fine-tuned; register adapters on its base model.",
                                  param="model")
    if base.engine == "llamacpp" and not (adapter.is_file() and adapter.suffix.lower() == ".gguf"):
        raise InvalidRequestError(f"'{base.id}' is served by llama.cpp: its adapter must be a LoRA .gguf file.")
    if base.engine == "transformers" and not (adapter / "adapter_config.json").is_file():
        raise InvalidRequestError(f"'{base.id}' is served by transformers: its adapter must be a PEFT directory.")


def _candidate_order(item: tuple[_Candidate, Fingerprint | None]) -> tuple[int, str, str]:
    """Priority first; a store's models by their id, everything else by path."""
    candidate = item[0]
    return candidate.priority, candidate.discovered.id if candidate.discovered else "", str(candidate.path)


def _disambiguate(base: str, path: Path) -> str:
    return f"{base}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


class UpstreamModels(Protocol):
    """Models other servers serve (minerva.engine.upstream.catalogue), listed after the local ones."""

    version: int

    def models(self) -> list[RegisteredModel]:
        """The upstream models known now."""
        ...


class ModelRegistry:
    """Resolves model ids; rescans its directories and stores on every listing, reparsing only changed files."""

    def __init__(
        self,
        models_dirs: Iterable[Path] = (),
        explicit: dict[str, Path] | None = None,
        default_model: Path | None = None,
        default_model_id: str = "smollm2-135m-instruct",
        discovery: Iterable[StoreLocation] = (),
        upstreams: UpstreamModels | None = None,
    ):
        self.upstreams = upstreams
        self._dirs = [Path(d) for d in models_dirs]
        self._locations = tuple(discovery)
        self._stores = StoreCache()
        self._labels: dict[Path, str] = {}  # a discovered model's path -> how failures name it
        self._explicit = dict(explicit or {})
        self._default = (default_model_id, default_model) if default_model else None
        self._infos: dict[Path, tuple[Fingerprint, ModelInfo]] = {}
        self._failures: dict[Path, tuple[Fingerprint, str]] = {}
        self._snapshot: tuple[tuple, dict[str, RegisteredModel]] | None = None
        self._dir_scans: dict[Path, tuple[int, list[Path]]] = {}
        self._fine_tuned: dict[str, FineTunedEntry] = {}
        self.version = 0  # bumped whenever the set of models or their metadata changes

    def _candidates(self) -> list[_Candidate]:
        found: list[_Candidate] = []
        for model_id, path in sorted(self._explicit.items()):
            found.append(_Candidate(path, model_id, "explicit", 0))
        if self._default:
            found.append(_Candidate(self._default[1], self._default[0], "default", 1))
        for index, directory in enumerate(self._dirs):
            for root in self._scan_directory(directory):
                found.append(_Candidate(root, "", "dir", 2 + index))
        for index, location in enumerate(self._locations, start=2 + len(self._dirs)):
            for model in self._stores.scan(location).found:
                found.append(_Candidate(model.path, model.id, model.store, index, model))
        return found

    def _scan_directory(self, directory: Path) -> list[Path]:
        # Adding or removing an entry changes the directory's mtime: rescan only then.
        try:
            mtime = directory.stat().st_mtime_ns
        except OSError:
            self._dir_scans.pop(directory, None)
            return []
        cached = self._dir_scans.get(directory)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            roots = sorted(discover_models(directory))
        except (OSError, ModelFormatError) as exc:
            logger.warning("cannot scan %s: %s", directory, exc)
            roots = []
        self._dir_scans[directory] = (mtime, roots)
        return roots

    def _info_for(self, path: Path, fingerprint: Fingerprint) -> ModelInfo | None:
        cached = self._infos.get(path)
        if cached and cached[0] == fingerprint:
            return cached[1]
        failed = self._failures.get(path)
        if failed and failed[0] == fingerprint:
            return None
        try:
            info = read_model_info(path)
        except ModelFormatError as exc:
            logger.warning("skipping model %s: %s", path, exc.reason)
            self._failures[path] = (fingerprint, exc.reason)
            self._infos.pop(path, None)
            return None
        except OSError as exc:
            logger.warning("skipping model %s: %s", path, exc)
            self._failures[path] = (fingerprint, str(exc))
            return None
        self._infos[path] = (fingerprint, info)
        self._failures.pop(path, None)
        return info

    def _scan(self) -> dict[str, RegisteredModel]:
        candidates = self._candidates()
        fingerprints = [(c, fingerprint_of(c.path)) for c in candidates]
        tuned = tuple((model_id, entry, fingerprint_of(entry.adapter)) for model_id, entry in self._fine_tuned.items())
        remote = tuple(self.upstreams.models()) if self.upstreams is not None else ()
        key = (tuple((c.path, c.explicit_id, c.discovered, fp) for c, fp in fingerprints), tuned, remote)
        if self._snapshot and self._snapshot[0] == key:
            return self._snapshot[1]
        models: dict[str, RegisteredModel] = {}
        seen_paths: set[Path] = set()
        self._labels = {c.path: f"{c.source} {c.explicit_id}" for c, _ in fingerprints if c.discovered}
        seen_targets: set[str] = set()  # what the registered paths resolve to (an HF snapshot link: its blob)
        for candidate, fp in sorted(fingerprints, key=_candidate_order):
            resolved = candidate.path.absolute()
            target = os.path.realpath(candidate.path)
            if fp is None or resolved in seen_paths or (candidate.discovered and target in seen_targets):
                if fp is None and candidate.source in ("explicit", "default"):
                    logger.warning("registered model %s not found at %s", candidate.explicit_id, candidate.path)
                continue
            info = self._info_for(candidate.path, fp)
            if info is None:
                continue
            seen_paths.add(resolved)
            seen_targets.add(target)
            model_id = candidate.explicit_id or derive_model_id(candidate.path)
            if model_id in models:
                model_id = _disambiguate(model_id, candidate.path)
            models[model_id] = RegisteredModel(model_id, info, candidate.source, fp, discovered=candidate.discovered)
        for model_id, entry, adapter_fp in tuned:
            base = models.get(entry.base_id)
            if base is None or adapter_fp is None or model_id in models:
                logger.warning("fine-tuned model %s is not servable: base %s or adapter %s missing, or id taken",
                               model_id, entry.base_id, entry.adapter)
                continue
            models[model_id] = RegisteredModel(model_id, base.info, "fine_tuned", base.fingerprint, base.engine,
                                               base=base, adapter=str(entry.adapter), adapter_fingerprint=adapter_fp)
        for model in remote:
            if model.id in models:
                model = dataclasses.replace(model, id=f"{model.upstream.upstream}/{model.id}")
            models.setdefault(model.id, model)
        live = {c.path for c in candidates}
        for stale in [p for p in self._infos if p not in live]:
            del self._infos[stale]
        self._snapshot = (key, models)
        self.version += 1
        return models

    def list(self) -> list[RegisteredModel]:
        """Every servable model, current as of this call."""
        return list(self._scan().values())

    def get(self, model_id: str) -> RegisteredModel:
        """The model with this id, or ModelNotFoundError."""
        model = self._scan().get(model_id)
        if model is None:
            raise ModelNotFoundError(model_id)
        return model

    def register_fine_tuned(self, model_id: str, base_id: str, adapter: Path) -> RegisteredModel:
        """Serve `adapter` on the base model `base_id` under `model_id` (ModelNotFoundError for an unknown base)."""
        base = self.get(base_id)
        adapter = Path(adapter).absolute()
        check_adapter_for(base, adapter)
        existing = self._scan().get(model_id)
        if existing is not None and existing.base is None:
            raise InvalidRequestError(f"The model id '{model_id}' is already taken by a model file.", param="model")
        self._fine_tuned[model_id] = FineTunedEntry(base_id, adapter)
        return self.get(model_id)

    def unregister_fine_tuned(self, model_id: str) -> RegisteredModel | None:
        """Stop serving a fine-tuned model; the model it was (None when no such registration)."""
        if model_id not in self._fine_tuned:
            return None
        model = self._scan().get(model_id)
        del self._fine_tuned[model_id]
        return model

    @property
    def store_locations(self) -> tuple[StoreLocation, ...]:
        """Where this registry looks for models other tools downloaded."""
        return self._locations

    def failures(self) -> dict[Path, str]:
        """Files that were found but could not be read, and what the stores hold but do not serve, with the reason."""
        failures = {path: f"{self._labels[path]}: {reason}" if path in self._labels else reason
                    for path, (_, reason) in self._failures.items()}
        scans = self._stores.scans()
        for location in self._locations:
            for skipped in scans[location].skipped if location in scans else ():
                failures.setdefault(skipped.path, f"{skipped.store} {skipped.name}: {skipped.reason}")
        return failures


def register_fine_tuned(registry: ModelRegistry, model_id: str, base_id: str, adapter_path: Path) -> RegisteredModel:
    """Serve a LoRA adapter on a registered base model under a new id (see ModelRegistry.register_fine_tuned)."""
    return registry.register_fine_tuned(model_id, base_id, adapter_path)


def unregister_fine_tuned(registry: ModelRegistry, model_id: str) -> RegisteredModel | None:
    """Stop serving a fine-tuned model (see ModelRegistry.unregister_fine_tuned)."""
    return registry.unregister_fine_tuned(model_id)
