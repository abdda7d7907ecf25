"""LlamaCppEngine: GGUF models on llama.cpp's C API, with continuous batching across slots."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp as llama
import numpy as np

from minerva.engine.base import EngineStats, GenerationEvent, GenerationRequest
from minerva.engine.checks import check_embedding_inputs, check_prompt
from minerva.engine.llamacpp.adapters import AdapterRun, apply_lora, load_lora
from minerva.engine.llamacpp.disk_cache import CacheKey, DiskPrompts, file_identity
from minerva.engine.llamacpp.loader import ContextShape, RopeScaling, load_model, new_context, route_native_logs
from minerva.engine.llamacpp.sampling import SequenceSampler
from minerva.engine.llamacpp.speculation import DEFAULT_ROW_SHARE
from minerva.engine.llamacpp.scheduler import BatchScheduler, SchedulerConfig, Sequence
from minerva.engine.relay import EventSink, relay_events
from minerva.core.errors import InvalidRequestError, ModelLoadError, ModelUnavailableError
from minerva.formats.model_info import ModelInfo
from minerva.settings import Settings

logger = logging.getLogger(__name__)

_DEFAULT_N_CTX = 4096  # when the file does not say how long its training context was


class LlamaCppEngine:
    """A GGUF model served by llama.cpp: n_slots sequences decode together in one context.

    A request with `adapter` (a LoRA GGUF path) runs in that adapter's own context, with its own
    slots and prefix cache (see minerva.engine.llamacpp.adapters), so no KV cell crosses adapters.
    """

    def __init__(
        self,
        info: ModelInfo,
        model: llama.llama_model_p,
        n_ctx: int,
        scheduler: BatchScheduler | None,
        embed_ctx: llama.llama_context_p | None,
        gen_ctx: llama.llama_context_p | None,
    ):
        self.info = info
        self.n_ctx = n_ctx
        self._model = model
        self._vocab = llama.llama_model_get_vocab(model)
        self._n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self._scheduler = scheduler
        self._gen_ctx = gen_ctx
        self._embed_ctx = embed_ctx
        self._embed_lock = threading.Lock()  # this engine's embedding context, one batch at a time
        self._context_shape: ContextShape | None = None
        self._scheduler_config: SchedulerConfig | None = None
        self._adapter_runs: dict[str, AdapterRun] = {}  # by adapter path; see minerva.engine.llamacpp.adapters
        self._adapter_lock = threading.Lock()
        self._disk_cache: tuple[Path, int] | None = None  # (directory, budget bytes) of the disk prompt cache
        self._closed = False
        self._grammar_first = False  # see load(grammar_first=...)
        self.bos_token = self._special_text(llama.llama_vocab_bos(self._vocab))
        self.eos_token = self._special_text(llama.llama_vocab_eos(self._vocab))

    @classmethod
    def load(
        cls,
        info: ModelInfo,
        *,
        n_ctx: int | None = None,
        n_slots: int = 4,
        n_threads: int | None = None,
        n_batch: int = 512,
        prefill_chunk: int = 256,
        queue_limit: int = 64,
        rope_scaling: RopeScaling | None = None,
        use_mmap: bool = False,
        flash_attn: bool | None = None,
        prompt_cache_mb: int = 0,
        prompt_cache_dir: Path | None = None,
        disk_prompt_cache_mb: int = 0,
        max_draft: int = 0,
        draft_row_cost: float = DEFAULT_ROW_SHARE,
        grammar_first: bool = False,
    ) -> LlamaCppEngine:
        """Load a GGUF model; n_ctx (default: its trained context) is what one sequence may hold.

        The KV memory holds n_slots * n_ctx cells so every slot can hold a full sequence; n_ctx beyond
        the trained length turns on RoPE scaling (YaRN unless `rope_scaling` says otherwise).
        prompt_cache_mb: host memory for the KV cells of evicted slots, restored when a prompt continues them.
        prompt_cache_dir, disk_prompt_cache_mb: where and how much disk (all models together) keeps the KV
        cells of long prompts across restarts, keyed by the model file and KV layout (0: off).
        max_draft: n-gram draft tokens verified per step and sequence (0: no speculation).
        draft_row_cost: what verifying one more row costs, as a share of a one-token step (sets draft lengths).
        grammar_first: mask the vocabulary with a request's grammar before every pick instead of checking
        the chosen token (the reference path: same greedy output, slower).
        flash_attn: None (default) lets llama.cpp decide. False decoded long shared-prefix contexts
        several times faster on CPU here, but batched greedy output then drifted from solo output
        sooner and one shared-prefix test stalled; not the default until that is understood.
        Raises ModelLoadError when the file or the memory it needs is not usable.
        """
        if info.format != "gguf":
            raise ModelLoadError(f"'{info.name}' is a {info.format} model; the llama.cpp engine reads GGUF only.")
        if n_slots < 1 or n_batch < 1:
            raise ModelLoadError("n_slots and n_batch must be at least 1.")
        route_native_logs()
        model = load_model(info, use_mmap)
        try:
            n_ctx_train = llama.llama_model_n_ctx_train(model) or info.context_length or _DEFAULT_N_CTX
            ctx_len = n_ctx or info.context_length or n_ctx_train
            threads = n_threads or max(os.cpu_count() or 1, 1)
            if info.kind == "embedding":
                shape = ContextShape(ctx_len, 1, ctx_len, threads, rope_scaling, n_ctx_train, True, flash_attn)
                embed_ctx = new_context(model, info, shape)
                return cls(info, model, ctx_len, None, embed_ctx, None)
            shape = ContextShape(ctx_len, n_slots, n_batch, threads, rope_scaling, n_ctx_train, False, flash_attn)
            gen_ctx = new_context(model, info, shape)
        except BaseException:
            llama.llama_model_free(model)
            raise
        engine = cls(info, model, ctx_len, None, None, gen_ctx)
        config = SchedulerConfig(
            n_slots=n_slots,
            n_ctx=ctx_len,
            n_batch=n_batch,
            prefill_chunk=max(1, min(prefill_chunk, n_batch)),
            queue_limit=queue_limit,
            saved_prompts_bytes=max(0, prompt_cache_mb) * 2**20,
            max_draft=max(0, max_draft),
            draft_row_cost=draft_row_cost,
        )
        if prompt_cache_dir is not None and disk_prompt_cache_mb > 0:
            engine._disk_cache = (Path(prompt_cache_dir), disk_prompt_cache_mb * 2**20)
        engine._context_shape, engine._scheduler_config = shape, config
        engine._scheduler = BatchScheduler(
            gen_ctx, engine._vocab, engine._n_vocab, config, engine.token_piece, name=info.name,
            disk=engine._disk_prompts(None),
        )
        engine._grammar_first = grammar_first
        return engine

    @classmethod
    def from_settings(cls, info: ModelInfo, settings: Settings, *, n_ctx: int | None) -> LlamaCppEngine:
        """Load with the server's settings (the pool's entry point)."""
        return cls.load(info, n_ctx=n_ctx, n_slots=settings.n_slots, n_threads=settings.n_threads,
                        n_batch=settings.n_batch, queue_limit=settings.queue_limit, use_mmap=settings.use_mmap,
                        prompt_cache_mb=settings.prompt_cache_mb, prompt_cache_dir=settings.data_dir / "prompt-cache",
                        disk_prompt_cache_mb=settings.disk_prompt_cache_mb, max_draft=settings.speculation_max_draft,
                        draft_row_cost=settings.speculation_row_cost)

    # ---- vocabulary -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids (add_special: prepend BOS when the model wants one)."""
        self._check_open()
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            if n == -(2**31):
                raise InvalidRequestError("The text is too long to tokenize.")
            capacity = -n

    def token_piece(self, token_id: int) -> bytes:
        """The raw bytes of one token (special tokens rendered as their text)."""
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._vocab, token_id, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token_id, buf, -n, 0, True)
        return buf.raw[:n]

    def _special_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        text = llama.llama_vocab_get_text(self._vocab, token_id)
        return text.decode("utf-8", errors="replace") if text else ""

    # ---- generation -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream TokenEvents then one GenerationEnd. Closing the iterator cancels the sequence.

        Errors found before any event (prompt too long, bad grammar, queue full) raise on the first
        iteration; an error inside the running sequence raises from the iterator and ends it.
        """
        scheduler = self._require_scheduler()
        if request.adapter is not None:
            run = self._adapter_runs.get(request.adapter)
            scheduler = run.scheduler if run else await asyncio.to_thread(self._adapter_scheduler, request.adapter)
        prompt = list(request.prompt_tokens)
        check_prompt(prompt, self.n_ctx, self._n_vocab)
        sampler = SequenceSampler.build(self._vocab, self._n_vocab, request.sampling, prompt,
                                        grammar_first=self._grammar_first)
        sink = EventSink()
        seq = Sequence(
            request=request,
            prompt=prompt,
            max_tokens=min(request.max_tokens, self.n_ctx - len(prompt)),
            sampler=sampler,
            sink=sink,
        )

        def submit() -> None:
            try:
                scheduler.submit(seq)
            except BaseException:
                sampler.free()
                raise

        async for event in relay_events(sink, submit, lambda: scheduler.cancel(seq)):
            yield event

    def _adapter_scheduler(self, path: str) -> BatchScheduler:
        """The scheduler of the adapter's own context, made on its first request."""
        with self._adapter_lock:
            self._check_open()
            run = self._adapter_runs.get(path)
            if run is not None:
                return run.scheduler
            assert self._context_shape is not None and self._scheduler_config is not None
            lora = load_lora(self._model, path)
            ctx = None
            try:
                ctx = new_context(self._model, self.info, self._context_shape)
                apply_lora(ctx, lora)
                scheduler = BatchScheduler(ctx, self._vocab, self._n_vocab, self._scheduler_config, self.token_piece,
                                           name=f"{self.info.name}+{os.path.basename(path)}",
                                           disk=self._disk_prompts(path))
            except BaseException:
                if ctx:
                    llama.llama_free(ctx)
                llama.llama_adapter_lora_free(lora)
                raise
            self._adapter_runs[path] = AdapterRun(lora, ctx, scheduler)
            logger.info("%s: LoRA adapter %s loaded with its own context", self.info.name, os.path.basename(path))
            return scheduler

    def _disk_prompts(self, adapter: str | None) -> DiskPrompts | None:
        """The disk prompt cache of the base context or of an adapter's (None when off)."""
        if self._disk_cache is None or self._context_shape is None:
            return None
        directory, budget = self._disk_cache
        return DiskPrompts(directory, _cells_key(self.info, self._context_shape, adapter), budget)

    def drop_adapter(self, path: str) -> None:
        """Free an adapter's context and tensors; its running sequences end with ModelUnavailableError."""
        with self._adapter_lock:
            run = self._adapter_runs.pop(path, None)
        if run is not None:
            run.close()

    def stats(self) -> EngineStats:
        """Live counters summed over the base context and every adapter's context."""
        if self._scheduler is None:
            return EngineStats.idle(self.n_ctx)
        stats = self._scheduler.stats()
        for run in list(self._adapter_runs.values()):
            more = run.scheduler.stats()
            stats = dataclasses.replace(stats, **{
                f.name: getattr(stats, f.name) + getattr(more, f.name)
                for f in dataclasses.fields(EngineStats) if f.name != "n_ctx"})
        return stats

    # ---- embeddings -------------------------------------------------------------------------

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One pooled, L2-normalised embedding per input token list (GGUF embedding models only)."""
        self._check_open()
        if self._embed_ctx is None:
            raise InvalidRequestError(f"The model '{self.info.name}' does not produce embeddings.", param="model")
        check_embedding_inputs(inputs, self.n_ctx, self._n_vocab)
        return await asyncio.to_thread(self._embed_sync, inputs)

    def _embed_sync(self, inputs: list[list[int]]) -> list[list[float]]:
        with self._embed_lock:
            ctx = self._embed_ctx
            if ctx is None:
                raise ModelUnavailableError("The model was unloaded while the request ran.")
            n_embd = llama.llama_model_n_embd(self._model)
            pooled = llama.llama_pooling_type(ctx) != llama.LLAMA_POOLING_TYPE_NONE
            encoder_only = llama.llama_model_has_encoder(self._model) and not llama.llama_model_has_decoder(self._model)
            mem = llama.llama_get_memory(ctx)
            out: list[list[float]] = []
            batch = llama.llama_batch_init(self.n_ctx, 0, 1)
            try:
                for tokens in inputs:
                    if mem:
                        llama.llama_memory_clear(mem, True)
                    batch.n_tokens = len(tokens)
                    for i, tok in enumerate(tokens):
                        batch.token[i] = tok
                        batch.pos[i] = i
                        batch.n_seq_id[i] = 1
                        batch.seq_id[i][0] = 0
                        batch.logits[i] = 1
                    rc = (llama.llama_encode if encoder_only else llama.llama_decode)(ctx, batch)
                    if rc != 0:
                        raise InvalidRequestError(f"The model could not embed this input (code {rc}).", param="input")
                    if pooled:
                        ptr = llama.llama_get_embeddings_seq(ctx, 0)
                        vec = np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64)
                    else:
                        rows = [np.ctypeslib.as_array(llama.llama_get_embeddings_ith(ctx, i), shape=(n_embd,))
                                for i in range(len(tokens))]
                        vec = np.mean(np.stack(rows), axis=0, dtype=np.float64)
                    norm = float(np.linalg.norm(vec))
                    out.append((vec / norm if norm > 0 else vec).tolist())
            finally:
                llama.llama_batch_free(batch)
            return out

    # ---- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model and its memory; pending sequences end with ModelUnavailableError."""
        if self._closed:
            return
        self._closed = True
        with self._adapter_lock:
            runs, self._adapter_runs = list(self._adapter_runs.values()), {}
        for run in runs:
            run.close()
        if self._scheduler is not None:
            self._scheduler.close()
        with self._embed_lock:
            for ctx in (self._gen_ctx, self._embed_ctx):
                if ctx:
                    llama.llama_free(ctx)
            self._gen_ctx = self._embed_ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def _check_open(self) -> None:
        if self._closed:
            raise ModelUnavailableError(f"The model '{self.info.name}' was unloaded; retry the request.")

    def _require_scheduler(self) -> BatchScheduler:
        self._check_open()
        if self._scheduler is None:
            raise InvalidRequestError(f"The model '{self.info.name}' is an embedding model; it cannot generate text.",
                                      param="model")
        return self._scheduler


def _cells_key(info: ModelInfo, shape: ContextShape, adapter: str | None) -> CacheKey:
    """What KV cells computed here depend on: the model file(s), the adapter, the KV layout, the llama.cpp build."""
    defaults = llama.llama_context_default_params()  # minerva leaves the cache types at llama.cpp's defaults
    library = getattr(getattr(llama, "llama_cpp", None), "_lib", None)
    return CacheKey.of({
        "model": [file_identity(Path(p)) for p in (info.files or (info.path,))],
        "adapter": file_identity(Path(adapter)) if adapter else None,
        "n_ctx": shape.n_ctx, "n_seq": shape.n_seq, "n_ctx_train": shape.n_ctx_train,
        "rope_scaling": shape.rope_scaling, "flash_attn": shape.flash_attn,
        "type_k": int(defaults.type_k), "type_v": int(defaults.type_v),
        "llama": llama.llama_version().decode(errors="replace"), "llama_cpp_python": llama.__version__,
        "state_seq_version": llama.LLAMA_STATE_SEQ_VERSION,
        "library": file_identity(Path(library._name)) if getattr(library, "_name", None) else None,
        "system": llama.llama_print_system_info().decode(errors="replace"),
    })


ENGINE = LlamaCppEngine
