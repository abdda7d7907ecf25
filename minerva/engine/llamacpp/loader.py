"""Loading GGUF models and contexts through llama.cpp's C API, with its errors mapped to minerva's."""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import llama_cpp as llama

from minerva.core.errors import ModelLoadError
from minerva.formats.model_info import ModelInfo

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("minerva.engine.llamacpp.native")

RopeScaling = Literal["yarn", "linear"]
_ROPE_SCALING_TYPES = {"yarn": llama.LLAMA_ROPE_SCALING_TYPE_YARN, "linear": llama.LLAMA_ROPE_SCALING_TYPE_LINEAR}
_GGUF_MAGIC = b"GGUF"
_FLASH_ATTN_TYPES = {
    None: llama.LLAMA_FLASH_ATTN_TYPE_AUTO,
    False: llama.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    True: llama.LLAMA_FLASH_ATTN_TYPE_ENABLED,
}


def _forward_native_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    if text and native_logger.isEnabledFor(logging.DEBUG):
        native_logger.debug("%s", text.decode("utf-8", errors="replace").rstrip("\n"))


# llama.cpp keeps one process-wide log callback and may call it at any time, from any thread, so
# the ctypes trampoline must outlive every engine: it is a module constant, never a per-instance one
# (an instance's callback would dangle after close). It holds no state.
_NATIVE_LOG_CALLBACK = llama.llama_log_callback(_forward_native_log)


def route_native_logs() -> None:
    """Send llama.cpp/ggml log lines to Python logging at debug level instead of stderr."""
    llama.llama_log_set(_NATIVE_LOG_CALLBACK, ctypes.c_void_p(0))


@dataclass(frozen=True)
class ContextShape:
    """How a context is sized: per-sequence tokens, sequences, batch, threads and RoPE scaling."""

    n_ctx: int  # tokens one sequence may hold
    n_seq: int  # sequences (slots), each with its own KV stream of n_ctx cells
    n_batch: int
    n_threads: int
    rope_scaling: RopeScaling | None = None
    n_ctx_train: int | None = None
    embeddings: bool = False
    flash_attn: bool | None = None  # None: llama.cpp decides (False decoded 3k contexts faster here, see load)

    @property
    def n_ctx_total(self) -> int:
        """KV cells over all streams: every sequence can hold a full n_ctx at once."""
        return self.n_ctx * self.n_seq


def check_gguf_file(info: ModelInfo) -> None:
    """Fail early, with a clear message, on a missing or non-GGUF file."""
    for path in info.files or (info.path,):
        p = Path(path)
        if not p.is_file():
            raise ModelLoadError(f"Model file {p.name} is missing; cannot load model '{info.name}'.")
        try:
            with p.open("rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise ModelLoadError(f"Model file {p.name} cannot be read: {exc.strerror}.") from exc
        if magic != _GGUF_MAGIC:
            raise ModelLoadError(f"Model file {p.name} is not a GGUF file; cannot load model '{info.name}'.")


def load_model(info: ModelInfo, use_mmap: bool = False) -> llama.llama_model_p:
    """Load the weights of a (possibly split) GGUF model; ModelLoadError when llama.cpp refuses.

    Without mmap the weights are read into memory: a file truncated in place while the model is
    loaded (`cp new.gguf old.gguf` does that) would otherwise kill the process with SIGBUS.
    """
    check_gguf_file(info)
    llama.llama_backend_init()
    params = llama.llama_model_default_params()
    params.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
    files = [str(p) for p in (info.files or (info.path,))]
    if len(files) > 1:
        paths = (ctypes.c_char_p * len(files))(*[f.encode() for f in files])
        model = llama.llama_model_load_from_splits(paths, len(files), params)
    else:
        model = llama.llama_model_load_from_file(files[0].encode(), params)
    if not model:
        raise ModelLoadError(
            f"llama.cpp could not load '{info.name}' ({Path(files[0]).name}): the file may be corrupt or "
            "truncated, use an unsupported architecture, or need more memory than is available."
        )
    return model


def context_params(shape: ContextShape) -> llama.llama_context_params:
    """llama_context_params for n_seq KV streams of n_ctx cells each."""
    params = llama.llama_context_default_params()
    params.n_ctx = shape.n_ctx_total
    params.n_seq_max = shape.n_seq
    # One stream per slot, as llama-server does: a sequence attends over its own stream only. In one
    # unified pool every step attended over all cached cells of every slot, which cost about 7 % of a
    # decode step per 1,000 tokens other slots held. Sharing a prefix then copies a stream instead.
    params.kv_unified = False
    params.n_batch = shape.n_batch
    params.n_ubatch = shape.n_batch
    params.n_threads = shape.n_threads
    params.n_threads_batch = shape.n_threads
    params.no_perf = True
    params.flash_attn_type = _FLASH_ATTN_TYPES[shape.flash_attn]
    if shape.embeddings:
        params.embeddings = True
        params.pooling_type = llama.LLAMA_POOLING_TYPE_UNSPECIFIED  # the file's own pooling
    train = shape.n_ctx_train
    if train and shape.n_ctx > train:
        kind = shape.rope_scaling or "yarn"
        params.rope_scaling_type = _ROPE_SCALING_TYPES[kind]
        params.rope_freq_scale = train / shape.n_ctx
        if kind == "yarn":
            params.yarn_orig_ctx = train
        logger.warning(
            "n_ctx %d exceeds the trained context %d: using %s RoPE scaling (factor %.2f); quality may drop",
            shape.n_ctx, train, kind, shape.n_ctx / train,
        )
    return params


def kv_cache_bytes(model: llama.llama_model_p, n_cells: int) -> int:
    """Size of an f16 K+V cache of n_cells tokens for this model (an estimate for the log)."""
    n_layer = llama.llama_model_n_layer(model)
    n_head = max(llama.llama_model_n_head(model), 1)
    n_head_kv = llama.llama_model_n_head_kv(model)
    n_embd_kv = llama.llama_model_n_embd(model) // n_head * n_head_kv
    return 2 * 2 * n_layer * n_embd_kv * n_cells


def new_context(model: llama.llama_model_p, info: ModelInfo, shape: ContextShape) -> llama.llama_context_p:
    """Create a context; ModelLoadError (with the KV size it wanted) when llama.cpp refuses."""
    params = context_params(shape)
    kv_mib = kv_cache_bytes(model, shape.n_ctx_total) / 2**20
    ctx = llama.llama_init_from_model(model, params)
    if not ctx:
        raise ModelLoadError(
            f"llama.cpp could not create a context for '{info.name}' with {shape.n_seq} x {shape.n_ctx} tokens "
            f"(about {math.ceil(kv_mib)} MiB of KV cache); lower n_ctx or the number of slots."
        )
    logger.info(
        "%s: %d slot(s) x %d tokens of KV cache (%d cells), about %.0f MiB",
        info.name, shape.n_seq, shape.n_ctx, llama.llama_n_ctx(ctx), kv_mib,
    )
    return ctx
