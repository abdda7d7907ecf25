"""Loaded engines: load on first use (once), unload when idle or to stay under a memory budget."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from minerva.engine.adapted import AdaptedEngine
from minerva.engine.base import Engine
from minerva.engine.memory import physical_memory_bytes
from minerva.core.errors import MinervaError, ModelLoadError, ModelUnavailableError
from minerva.registry import RegisteredModel
from minerva.settings import Settings

logger = logging.getLogger(__name__)

# One registry of engines, keyed by package name under minerva.engine; each package's `engine`
# module has ENGINE (the class) and imports its heavy backend only when a model is loaded.
ENGINE_NAMES = ("llamacpp", "transformers")

EngineLoader = Callable[[RegisteredModel, Settings], Engine]


def load_engine(model: RegisteredModel, settings: Settings) -> Engine:
    """Import the model's engine and load the model with the server's settings."""
    if model.upstream is not None:  # served by another server: nothing loads here
        from minerva.engine.upstream.engine import UpstreamEngine

        return UpstreamEngine.connect(model.info, model.upstream)
    if model.engine not in ENGINE_NAMES:
        raise ModelLoadError(f"unknown engine {model.engine!r}; known: {', '.join(ENGINE_NAMES)}")
    try:
        engine_cls = importlib.import_module(f"{__package__}.{model.engine}.engine").ENGINE
    except ImportError as exc:
        raise ModelLoadError(f"no engine available for {model.info.format} models: {exc}") from exc
    return engine_cls.from_settings(
        model.info, settings, n_ctx=settings.n_ctx or default_context_length(model, settings)
    )


def kv_bytes_per_token(model: RegisteredModel) -> int:
    """An upper bound on KV-cache bytes per token (f16 K and V, no grouped-query savings assumed)."""
    return 2 * 2 * (model.info.block_count or 24) * (model.info.embedding_length or 1024)


def default_context_length(model: RegisteredModel, settings: Settings) -> int | None:
    """The trained context, capped so every slot's KV cache fits in half the memory budget."""
    trained = model.info.context_length
    if trained is None:
        return None
    budget = (settings.memory_budget_mb * 1024**2) if settings.memory_budget_mb else physical_memory_bytes() * 0.8
    room = budget * 0.5 - model.info.file_size_bytes
    cap = int(room // (kv_bytes_per_token(model) * max(1, settings.n_slots))) // 256 * 256
    if cap < trained:
        logger.warning("model %s: context capped at %d tokens (trained %d) to fit memory; set n_ctx to override",
                       model.id, max(cap, 512), trained)
    return max(512, min(trained, cap))


def estimate_memory_bytes(model: RegisteredModel, settings: Settings) -> int:
    """What a loaded model may hold: its weights, a KV cache for every slot (f16) and, on llama.cpp,
    the host-memory cache of evicted prompts at its bound."""
    if model.upstream is not None:
        return 0
    n_ctx = settings.n_ctx or default_context_length(model, settings) or 4096
    weights = model.info.file_size_bytes
    if model.info.format == "safetensors" and settings.safetensors_dtype == "auto" \
            and (model.info.quantization or "").upper() in ("BF16", "F16"):
        weights *= 2  # half-precision weights may be upcast to float32 where that computes faster
    saved_prompts = max(0, settings.prompt_cache_mb) * 2**20 if model.engine == "llamacpp" else 0
    return weights + kv_bytes_per_token(model) * n_ctx * max(1, settings.n_slots) + saved_prompts


@dataclass
class _Loaded:
    engine: Engine
    fingerprint: tuple[int, int]
    memory_bytes: int
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0
    keep_alive_s: float | None = None  # this model's idle TTL when a client set one (Ollama's keep_alive)


class EnginePool:
    """Owns every loaded engine of one server; all state lives on the instance."""

    def __init__(self, settings: Settings, loader: EngineLoader = load_engine):
        self._settings = settings
        self._loader = loader
        self._loaded: dict[str, _Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._released = asyncio.Event()  # set whenever a model stops being in use (room may be freed)
        budget_mb = settings.memory_budget_mb
        self._budget = budget_mb * 1024**2 if budget_mb else int(physical_memory_bytes() * 0.8)

    def is_loaded(self, model_id: str) -> bool:
        """Whether the model is in memory now."""
        return model_id in self._loaded

    def loaded(self) -> dict[str, Engine]:
        """The loaded engines by model id."""
        return {model_id: entry.engine for model_id, entry in self._loaded.items()}

    def memory_bytes(self) -> dict[str, int]:
        """Estimated memory of each loaded model."""
        return {model_id: entry.memory_bytes for model_id, entry in self._loaded.items()}

    def _ttl(self, entry: _Loaded) -> float | None:
        """How long the entry may stay idle before it unloads; None: never."""
        if entry.keep_alive_s is not None:
            return None if entry.keep_alive_s < 0 else entry.keep_alive_s
        return self._settings.idle_ttl_s if self._settings.idle_ttl_s > 0 else None

    def expires_in(self, model_id: str) -> float | None:
        """Seconds until the loaded model unloads for idleness (a model in use counts from now); None: never."""
        entry = self._loaded.get(model_id)
        ttl = self._ttl(entry) if entry is not None else None
        if ttl is None:
            return None
        idle = 0.0 if entry.in_use else time.monotonic() - entry.last_used
        return max(0.0, ttl - idle)

    async def load(self, model: RegisteredModel, keep_alive_s: float | None = None) -> None:
        """Load the model (its base, for a fine-tuned one) now; `keep_alive_s` sets its idle TTL (<0: forever)."""
        entry = await self._ensure_loaded(model.base or model)
        entry.last_used = time.monotonic()
        if keep_alive_s is not None:
            entry.keep_alive_s = keep_alive_s

    def keep_alive(self, model: RegisteredModel, keep_alive_s: float) -> None:
        """Set a loaded model's idle TTL from now (<0: never unload for idleness; 0: unload once idle)."""
        entry = self._loaded.get(model.serving_id)
        if entry is not None:
            entry.keep_alive_s = keep_alive_s
            entry.last_used = time.monotonic()

    async def unload(self, model_id: str) -> bool:
        """Unload a model now unless a request is using it; whether it was unloaded."""
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            entry = self._loaded.get(model_id)
            if entry is None or entry.in_use:
                return False
            logger.info("unloading model %s on request", model_id)
            await self._unload(model_id)
            return True

    @contextlib.asynccontextmanager
    async def use(self, model: RegisteredModel) -> AsyncIterator[Engine]:
        """The model's engine, loaded if needed, kept from unloading while the block runs.

        A fine-tuned model is served by its base's engine, seen through its adapter.
        """
        entry = await self._ensure_loaded(model.base or model)
        entry.in_use += 1
        entry.last_used = time.monotonic()
        try:
            yield AdaptedEngine(entry.engine, model.adapter) if model.adapter else entry.engine
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.in_use == 0:
                self._released.set()

    async def _ensure_loaded(self, model: RegisteredModel) -> _Loaded:
        lock = self._locks.setdefault(model.id, asyncio.Lock())
        async with lock:
            entry = self._loaded.get(model.id)
            if entry and entry.fingerprint == model.fingerprint:
                return entry
            if entry:  # the file changed on disk: serve the new one
                logger.info("model %s changed on disk; reloading", model.id)
                await self._unload(model.id)
            need = estimate_memory_bytes(model, self._settings)
            await self._make_room(need, keep=model.id)
            started = time.monotonic()
            logger.info("loading model %s (%s, %.1f MB)", model.id, model.info.format, model.info.file_size_mb)
            try:
                engine = await asyncio.to_thread(self._loader, model, self._settings)
            except MinervaError:
                raise
            except Exception as exc:  # a backend failure we did not foresee: still this model's only
                logger.exception("loading model %s failed", model.id)
                raise ModelLoadError(f"model '{model.id}' failed to load: {exc}") from exc
            logger.info("loaded model %s in %.2f s", model.id, time.monotonic() - started)
            entry = _Loaded(engine, model.fingerprint, need)
            self._loaded[model.id] = entry
            return entry

    async def drop_adapter(self, model: RegisteredModel) -> None:
        """Free what the base's loaded engine holds for a fine-tuned model's adapter (nothing when not loaded)."""
        entry = self._loaded.get(model.serving_id)
        drop = getattr(entry.engine, "drop_adapter", None) if entry is not None and model.adapter else None
        if drop is not None:
            await asyncio.to_thread(drop, model.adapter)

    async def _make_room(self, need: int, keep: str) -> None:
        """Unload idle models, least recently used first, until `need` bytes fit the budget; while every
        loaded model is busy, wait for one to go idle (as Ollama queues) rather than load past the budget."""
        deadline = time.monotonic() + self._settings.load_wait_s
        while self._loaded and sum(e.memory_bytes for e in self._loaded.values()) + need > self._budget:
            idle = [(e.last_used, mid) for mid, e in self._loaded.items() if e.in_use == 0 and mid != keep]
            if idle:
                _, victim = min(idle)
                logger.info("unloading model %s to make room", victim)
                await self._unload(victim)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelUnavailableError(
                    f"Model '{keep}' does not fit in the memory budget beside the models serving requests now; "
                    f"retry when they finish.")
            logger.info("model %s waits for a busy model to go idle (memory budget)", keep)
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=left)

    async def _unload(self, model_id: str) -> None:
        entry = self._loaded.pop(model_id, None)
        if entry is not None:
            await asyncio.to_thread(entry.engine.close)

    async def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload models unused for longer than their idle TTL; returns their ids."""
        now = time.monotonic() if now is None else now

        def expired(entry: _Loaded) -> bool:
            ttl = self._ttl(entry)
            return ttl is not None and entry.in_use == 0 and now - entry.last_used >= ttl

        stale = [mid for mid, e in self._loaded.items() if expired(e)]
        for model_id in stale:
            logger.info("unloading idle model %s", model_id)
            await self._unload(model_id)
        return stale

    async def unload_missing(self, present_ids: set[str]) -> list[str]:
        """Unload idle models that are no longer registered (their file was removed); returns their ids."""
        gone = [mid for mid, e in self._loaded.items() if mid not in present_ids and e.in_use == 0]
        for model_id in gone:
            logger.info("unloading model %s: it is no longer registered", model_id)
            await self._unload(model_id)
        return gone

    async def run_reaper(self, registered_ids: Callable[[], set[str]], interval_s: float | None = None) -> None:
        """Background task: unload idle and vanished models periodically."""
        ttl = self._settings.idle_ttl_s
        interval = interval_s or max(1.0, min(5.0, ttl / 4 if ttl > 0 else 5.0))
        while True:
            await asyncio.sleep(interval)
            await self.unload_idle()
            if self._loaded:
                await self.unload_missing(registered_ids())

    async def close(self) -> None:
        """Unload everything."""
        for model_id in list(self._loaded):
            await self._unload(model_id)
