"""TransformersEngine: SafeTensors (Hugging Face directory) models on transformers + torch, CPU.

This module is the only importer of torch/transformers, and the pool imports it only when a
SafeTensors model is first loaded, so a server that serves GGUF models never pays for torch.
Chat/completion models decode on a worker thread (see transformers_worker); a request's LoRA adapter
(a PEFT directory) is loaded once next to the base weights and applied to that request's forwards
only (PEFT's adapter_names), and its kept KV caches serve only requests with the same adapter; sentence-transformers
directories embed with their declared pooling and normalisation (see transformers_embed).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import inspect
import logging
import os
import threading
import time
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch
import transformers

from minerva.engine.base import EngineStats, GenerationEvent, GenerationRequest
from minerva.engine.checks import check_embedding_inputs, check_prompt
from minerva.engine.memory import physical_memory_bytes
from minerva.engine.relay import EventSink, relay_events
from minerva.engine.transformers.dtype import compute_dtype
from minerva.engine.transformers.embed import POOLING_MODES, EmbeddingRecipe, SentenceEmbedder
from minerva.engine.transformers.sampling import TorchSampler
from minerva.engine.transformers.vocab import token_pieces
from minerva.engine.transformers.worker import DecodeJob, DecodeWorker, WorkerConfig
from minerva.core.errors import InvalidRequestError, ModelLoadError, ModelUnavailableError
from minerva.formats.model_info import ModelInfo
from minerva.settings import Settings

logger = logging.getLogger(__name__)

_DEFAULT_N_CTX = 4096
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _config_dtype(config: Any) -> torch.dtype:
    """The dtype the config names (`dtype`, formerly `torch_dtype`); float32 when it names none."""
    for key in ("dtype", "torch_dtype"):
        value = getattr(config, key, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and value in _DTYPES:
            return _DTYPES[value]
    return torch.float32


T = TypeVar("T")


async def _on_own_thread(function: Callable[..., T], *args: Any) -> T:
    """Run torch work on a thread that ends with it.

    A long-lived thread (asyncio's executor) that runs a parallel torch op keeps an OpenMP team that
    competes with the decode thread's: after one embeddings request, SafeTensors decoding on the same
    server fell from 33 to 19 tok/s. A thread that exits takes its team with it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome: tuple[Any, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="minerva-torch-call", daemon=True).start()
    return await done


def _hidden_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "hidden_size", None)
    return value if isinstance(value, int) and value > 0 else 1024


def _trained_context(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _load_failure(info: ModelInfo, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(f"model '{info.name}' could not be loaded by transformers: {exc}")


class TransformersEngine:
    """A Hugging Face SafeTensors model: generation on a worker thread, or sentence embeddings."""

    def __init__(self, info: ModelInfo, tokenizer: Any, model: Any, n_ctx: int, n_vocab: int,
                 worker_config: WorkerConfig | None, recipe: EmbeddingRecipe | None):
        self.info = info
        self.n_ctx = n_ctx
        self.bos_token = tokenizer.bos_token or info.bos_token or ""
        self.eos_token = tokenizer.eos_token or info.eos_token or ""
        self._tokenizer = tokenizer
        self._model = model
        self._n_vocab = n_vocab
        self._pieces = token_pieces(tokenizer, n_vocab)
        self._eos_ids = _eos_ids(model, tokenizer)
        self._keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._grammar_lock = threading.Lock()
        self._model_lock = threading.Lock()  # forwards and adapter (un)loading, one at a time
        self._adapters: dict[str, str] = {}  # adapter path → PEFT adapter name
        self._grammar_tokenizer: Any = None
        self._embed_lock = threading.Lock()
        self._embedder = None
        self._worker = None
        if recipe is not None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            self._embedder = SentenceEmbedder(model, recipe, pad)
        if worker_config is not None:
            self._worker = DecodeWorker(self._forward, self.token_piece, self._eos_ids, worker_config, info.name)
        self._closed = False

    @classmethod
    def load(
        cls,
        info: ModelInfo,
        *,
        n_ctx: int | None = None,
        n_slots: int = 4,
        n_threads: int | None = None,
        n_batch: int = 512,
        queue_limit: int = 64,
        dtype: str | None = None,
        prefill_chunk: int = 256,
    ) -> TransformersEngine:
        """Load a HF directory; n_ctx is what one sequence may hold.

        dtype None or "auto": the config's dtype, except half-precision weights compute in float32 when
        a measured matmul says this CPU is faster so (and twice the weights fit in memory).

        `n_threads` sets torch's intra-op thread count, which is per process. Raises ModelLoadError
        when the directory cannot be loaded.
        """
        if info.format != "safetensors":
            raise ModelLoadError(f"'{info.name}' is a {info.format} model; the transformers engine reads SafeTensors.")
        if not info.path.is_dir():
            raise ModelLoadError(f"'{info.name}' is a bare .safetensors file; serve its Hugging Face directory "
                                 "(config.json and tokenizer files) instead.")
        if dtype not in (None, "auto") and dtype not in _DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use auto or one of {sorted(_DTYPES)}")
        if n_threads:
            torch.set_num_threads(n_threads)
        started = time.monotonic()
        path = str(info.path)
        embedding = info.kind == "embedding"
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            if dtype in (None, "auto"):
                torch_dtype = compute_dtype(_config_dtype(config), _hidden_size(config), info.file_size_bytes,
                                            physical_memory_bytes())
            else:
                torch_dtype = _DTYPES[dtype]
            logger.info("model %s: tokenizer read; loading %.1f MB of weights as %s", info.name, info.file_size_mb,
                        str(torch_dtype).removeprefix("torch."))
            auto = transformers.AutoModel if embedding else transformers.AutoModelForCausalLM
            model = auto.from_pretrained(path, config=config, dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
            raise _load_failure(info, exc) from exc
        model.eval()
        logger.info("model %s: weights loaded in %.2f s", info.name, time.monotonic() - started)
        trained = _trained_context(config)
        limit = min(v for v in (info.context_length, trained) if v) if (info.context_length or trained) else None
        ctx_len = min(n_ctx, limit) if n_ctx and limit else (n_ctx or limit or _DEFAULT_N_CTX)
        if n_ctx and limit and n_ctx > limit:
            logger.warning("model %s: n_ctx %d capped to the trained %d", info.name, n_ctx, limit)
        output = model.get_output_embeddings() if not embedding else None
        n_vocab = int(output.weight.shape[0]) if output is not None else len(tokenizer)
        if embedding:
            recipe = EmbeddingRecipe(
                pooling=info.pooling if info.pooling in POOLING_MODES else "mean",
                normalize=("normalize_embeddings", "true") in info.extra,
            )
            return cls(info, tokenizer, model, ctx_len, n_vocab, None, recipe)
        worker = WorkerConfig(n_slots=max(1, n_slots), n_ctx=ctx_len,
                              prefill_chunk=max(1, min(prefill_chunk, n_batch)), queue_limit=queue_limit)
        return cls(info, tokenizer, model, ctx_len, n_vocab, worker, None)

    @classmethod
    def from_settings(cls, info: ModelInfo, settings: Settings, *, n_ctx: int | None) -> TransformersEngine:
        """Load with the server's settings (the pool's entry point)."""
        return cls.load(info, n_ctx=n_ctx, n_slots=settings.n_slots, n_threads=settings.n_threads,
                        n_batch=settings.n_batch, queue_limit=settings.queue_limit, dtype=settings.safetensors_dtype)

    # ---- vocabulary -------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids (add_special: the tokenizer's BOS/CLS/SEP; parse_special: honour marker text)."""
        self._check_open()
        extra = {} if parse_special else {"split_special_tokens": True}
        return list(self._tokenizer(text, add_special_tokens=add_special, verbose=False, **extra)["input_ids"])

    def token_piece(self, token_id: int) -> bytes:
        """The raw bytes of one token (special tokens rendered as their text)."""
        return self._pieces[token_id] if 0 <= token_id < len(self._pieces) else b""

    # ---- generation -------------------------------------------------------------------------

    def _forward(self, tokens: list[int], cache: Any, adapter: str | None = None) -> tuple[torch.Tensor, Any]:
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last_logits else {}
        with self._model_lock:
            if adapter is not None or self._adapters:
                # PEFT applies the named adapter to this forward only; "__base__" runs without any
                extra["adapter_names"] = [self._adapter_name(adapter) if adapter is not None else "__base__"]
            with torch.inference_mode():
                out = self._model(input_ids=torch.tensor([tokens], dtype=torch.long), past_key_values=cache,
                                  use_cache=True, **extra)
        return out.logits[0, -1].float(), out.past_key_values

    def _adapter_name(self, path: str) -> str:
        """The PEFT name of the adapter at `path`, loaded next to the base weights on first use."""
        name = self._adapters.get(path)
        if name is not None:
            return name
        name = "ft_" + hashlib.sha1(path.encode()).hexdigest()[:12]  # module keys allow no dots
        try:
            from peft import PeftModel

            if isinstance(self._model, PeftModel):
                self._model.load_adapter(path, adapter_name=name, is_trainable=False)
            else:
                self._model = PeftModel.from_pretrained(self._model, path, adapter_name=name, is_trainable=False)
            self._model.eval()
        except ImportError as exc:
            raise ModelLoadError(f"serving fine-tuned SafeTensors models needs the peft package: {exc}") from exc
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"the LoRA adapter {os.path.basename(path)} could not be loaded: {exc}") from exc
        self._adapters[path] = name
        logger.info("model %s: LoRA adapter %s loaded as %s", self.info.name, os.path.basename(path), name)
        return name

    def drop_adapter(self, path: str) -> None:
        """Unload a LoRA adapter's weights (a no-op when it was never loaded)."""
        with self._model_lock:
            name = self._adapters.pop(path, None)
            if name is not None and self._model is not None:
                self._model.delete_adapter(name)

    def _grammar(self, gbnf: str):
        from minerva.engine.transformers.grammar import GrammarConstraint, grammar_tokenizer

        with self._grammar_lock:
            if self._grammar_tokenizer is None:
                self._grammar_tokenizer = grammar_tokenizer(self._tokenizer, self._n_vocab, sorted(self._eos_ids))
            return GrammarConstraint(self._grammar_tokenizer, gbnf, self._n_vocab)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream TokenEvents then one GenerationEnd. Closing the iterator cancels the sequence.

        Errors found before any event (embedding model, prompt too long, bad grammar, queue full)
        raise on the first iteration.
        """
        worker = self._require_worker()
        if request.adapter is not None and not os.path.isfile(os.path.join(request.adapter, "adapter_config.json")):
            raise ModelLoadError(f"The LoRA adapter {os.path.basename(request.adapter)} is missing.")
        prompt = list(request.prompt_tokens)
        check_prompt(prompt, self.n_ctx, self._n_vocab)
        grammar = await asyncio.to_thread(self._grammar, request.sampling.grammar) if request.sampling.grammar else None
        sampler = TorchSampler(request.sampling, self._n_vocab, prompt, grammar)
        sink = EventSink()
        job: DecodeJob

        def emit(event: object) -> None:
            sink.send(event)
            if sink.lost:
                job.cancelled = True

        job = DecodeJob(request, prompt, min(request.max_tokens, self.n_ctx - len(prompt)), sampler, emit)
        async for event in relay_events(sink, lambda: worker.submit(job), lambda: worker.cancel(job)):
            yield event

    def stats(self) -> EngineStats:
        """Live counters: active/total slots, queued requests, cached tokens reused."""
        if self._worker is None:
            return EngineStats.idle(self.n_ctx)
        return self._worker.stats()

    # ---- embeddings -------------------------------------------------------------------------

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One pooled embedding per token list, normalised when the model's pipeline says so."""
        self._check_open()
        if self._embedder is None:
            raise InvalidRequestError(f"The model '{self.info.name}' is a chat model; it does not produce embeddings. "
                                      "Use an embedding model.", param="model")
        check_embedding_inputs(inputs, self.n_ctx, self._n_vocab)
        return await _on_own_thread(self._embed_sync, inputs)

    def _embed_sync(self, inputs: list[list[int]]) -> list[list[float]]:
        with self._embed_lock:
            if self._embedder is None:
                raise ModelUnavailableError("The model was unloaded while the request ran.")
            return self._embedder.embed(inputs)

    # ---- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker and free the model; pending sequences end with ModelUnavailableError."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.close()
        with self._embed_lock:
            self._embedder = None
            self._model = None
        gc.collect()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelUnavailableError(f"The model '{self.info.name}' was unloaded; retry the request.")

    def _require_worker(self) -> DecodeWorker:
        self._check_open()
        if self._worker is None:
            raise InvalidRequestError(f"The model '{self.info.name}' is an embedding model; it cannot generate text. "
                                      "Use /v1/embeddings.", param="model")
        return self._worker


ENGINE = TransformersEngine
