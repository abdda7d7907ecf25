"""The transformers engine's decode loop: one worker thread steps up to n_slots sequences in turn.

Each sequence owns a KV cache; a finished sequence's cache is kept (a few of them, newest first)
and cropped to the common prefix when a later prompt starts with the same tokens, so turns of one
conversation only prefill what is new. torch releases the GIL inside its ops, so the event loop
keeps serving while the worker computes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from minerva.engine.admission import refuse_when_full
from minerva.engine.base import EngineStats, GenerationEnd, GenerationRequest, PromptProcessed
from minerva.engine.prefix import longest_shared_prefix
from minerva.engine.sampled import token_event
from minerva.engine.transformers.sampling import TorchSampler, token_logprobs
from minerva.core.errors import MinervaError, ModelUnavailableError

logger = logging.getLogger(__name__)

Forward = Callable[[list[int], Any, str | None], tuple[torch.Tensor, Any]]  # (tokens, cache, adapter) → (logits, cache)


@dataclass(frozen=True)
class WorkerConfig:
    """How many sequences run together, how long each may be, how much waits."""

    n_slots: int
    n_ctx: int
    prefill_chunk: int
    queue_limit: int


@dataclass(eq=False)
class DecodeJob:
    """One sequence from submit to its end; the worker owns the fields below `cancelled`."""

    request: GenerationRequest
    prompt: list[int]
    max_tokens: int
    sampler: TorchSampler
    emit: Callable[[object], None]
    cancelled: bool = False
    cache: Any = None
    cache_tokens: list[int] = field(default_factory=list)
    feed: list[int] = field(default_factory=list)
    completion_tokens: int = 0
    cached_tokens: int = 0
    started: bool = False


@dataclass(eq=False)
class _CachedSequence:
    tokens: list[int]
    cache: Any
    adapter: str | None  # the LoRA adapter the cache was computed under (None: the base model)


class PrefixCacheStore:
    """KV caches of finished sequences, lent to a new prompt that starts with the same tokens.

    A cache is only lent to a prompt run under the same adapter: KV values depend on the adapter.
    """

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._entries: list[_CachedSequence] = []  # oldest first

    def take(self, prompt: Sequence[int], adapter: str | None = None) -> tuple[Any, int]:
        """The cache computed under `adapter` sharing the longest prefix with `prompt`, cropped to it, and that length."""
        entry, best_len = longest_shared_prefix([e for e in self._entries if e.adapter == adapter], prompt)
        if entry is None:
            return None, 0
        self._entries.remove(entry)
        tokens, cache = entry.tokens, entry.cache
        reuse = min(best_len, len(prompt) - 1)  # at least one token must run to give logits
        if reuse <= 0:
            return None, 0
        if not _croppable(cache):
            return None, 0
        try:
            held = cache.get_seq_length()
            if held != len(tokens):
                return None, 0
            if held > reuse:
                cache.crop(reuse - held)  # a negative count removes that many tokens from the end
        except (AttributeError, ValueError, RuntimeError, NotImplementedError):
            return None, 0  # a cache kind that cannot be cropped: start afresh
        return cache, reuse

    def put(self, tokens: list[int], cache: Any, adapter: str | None = None) -> None:
        """Keep a finished sequence's cache, computed under `adapter` (dropping the oldest beyond capacity)."""
        if cache is None or not tokens or self._capacity <= 0:
            return
        self._entries.append(_CachedSequence(tokens, cache, adapter))
        del self._entries[: max(0, len(self._entries) - self._capacity)]

    def clear(self) -> None:
        """Drop every kept cache."""
        self._entries.clear()


class DecodeWorker:
    """Runs submitted sequences on its own thread until closed."""

    def __init__(self, forward: Forward, piece: Callable[[int], bytes], eos_ids: frozenset[int],
                 config: WorkerConfig, name: str):
        self._forward = forward
        self._piece = piece
        self._eos_ids = eos_ids
        self._config = config
        self._store = PrefixCacheStore(config.n_slots)
        self._cond = threading.Condition()
        self._waiting: deque[DecodeJob] = deque()
        self._active: list[DecodeJob] = []
        self._closed = False
        self._cached_total = 0
        self._thread = threading.Thread(target=self._run, name=f"minerva-decode-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: DecodeJob) -> None:
        """Queue a sequence; QueueFullError when queue_limit sequences already wait beyond the free slots."""
        with self._cond:
            if self._closed:
                raise ModelUnavailableError("The model was unloaded; retry the request.")
            refuse_when_full(len(self._waiting), self._config.n_slots - len(self._active), self._config.queue_limit)
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: DecodeJob) -> None:
        """Stop a sequence at its next step (a no-op once it has ended)."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def stats(self) -> EngineStats:
        """Live counters: active/total slots, queued requests, cached tokens reused."""
        return EngineStats(active_slots=len(self._active), total_slots=self._config.n_slots,
                           queued=len(self._waiting), n_ctx=self._config.n_ctx,
                           cached_tokens_total=self._cached_total)

    def close(self) -> None:
        """Stop the thread; sequences still running end with ModelUnavailableError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)

    # ---- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._active:
                    self._cond.wait()
                if self._closed:
                    break
                while self._waiting and len(self._active) < self._config.n_slots:
                    self._active.append(self._waiting.popleft())
            for job in list(self._active):
                if job.cancelled:
                    self._finish(job, None)
                    continue
                try:
                    self._step(job)
                except MinervaError as exc:
                    self._finish(job, exc)
                except Exception as exc:  # one sequence's failure must not stop the others
                    logger.exception("sequence failed")
                    self._finish(job, MinervaError(f"generation failed: {exc}"))
        gone = ModelUnavailableError("The model was unloaded while the request ran; retry it.")
        with self._cond:
            pending = list(self._waiting) + self._active
            self._waiting.clear()
            self._active = []
        for job in pending:
            job.emit(gone)
        self._store.clear()

    def _start(self, job: DecodeJob) -> None:
        job.started = True
        job.cache, job.cached_tokens = self._store.take(job.prompt, job.request.adapter)
        job.cache_tokens = job.prompt[: job.cached_tokens]
        job.feed = job.prompt[job.cached_tokens:]
        self._cached_total += job.cached_tokens
        if job.cached_tokens:
            logger.debug("reusing %d of %d prompt tokens", job.cached_tokens, len(job.prompt))
        job.emit(PromptProcessed(len(job.prompt), job.cached_tokens))

    def _step(self, job: DecodeJob) -> None:
        if not job.started:
            self._start(job)
        chunk = job.feed[: self._config.prefill_chunk]
        job.feed = job.feed[len(chunk):]
        logits, job.cache = self._forward(chunk, job.cache, job.request.adapter)
        job.cache_tokens.extend(chunk)
        if job.feed:
            return  # the prompt is still being read
        choice = job.sampler.choose(logits)
        if choice.dead_end or choice.token_id in self._eos_ids:
            if choice.dead_end:
                logger.info("grammar allowed no further token; ending the sequence")
            self._finish(job, self._end(job, "stop"))
            return
        token = choice.token_id
        params = job.sampler.params
        event = token_event(token, self._piece, params, lambda t, k: token_logprobs(logits, t, k))
        job.completion_tokens += 1
        job.emit(event)
        grammar = job.sampler.grammar
        if grammar is not None and grammar.finished:
            self._finish(job, self._end(job, "stop"))
        elif job.completion_tokens >= job.max_tokens or len(job.prompt) + job.completion_tokens >= self._config.n_ctx:
            self._finish(job, self._end(job, "length"))
        else:
            job.feed = [token]

    @staticmethod
    def _end(job: DecodeJob, reason: str) -> GenerationEnd:
        return GenerationEnd(reason, len(job.prompt), job.completion_tokens, job.cached_tokens)  # type: ignore[arg-type]

    def _finish(self, job: DecodeJob, end: object | None) -> None:
        if job in self._active:
            self._active.remove(job)
        if end is not None:
            job.emit(end)
        if job.cache is not None and len(job.cache_tokens) == _cache_length(job.cache):
            self._store.put(job.cache_tokens, job.cache, job.request.adapter)
        job.cache = None


def _croppable(cache: Any) -> bool:
    """Only full-attention caches hold every earlier token (sliding windows and SSM states do not)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return hasattr(cache, "crop")
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _cache_length(cache: Any) -> int:
    try:
        return int(cache.get_seq_length())
    except (AttributeError, TypeError):
        return -1
