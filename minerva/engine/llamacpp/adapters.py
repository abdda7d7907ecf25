"""LoRA adapters on llama.cpp: loaded once per model, applied to a whole context.

llama.cpp applies adapters per context (llama_set_adapters_lora), never per sequence, and one
llama_decode runs every slot of a context together. So each adapter gets its own context and
scheduler, made on its first request: its slots and prefix cache only ever hold KV cells computed
under that adapter, and the base context never sees them. The weights are shared (one model);
each adapter context costs its own KV memory (n_slots x n_ctx cells), freed by `drop_adapter`
or when the engine closes.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama

from minerva.core.errors import ModelLoadError
from minerva.engine.llamacpp.scheduler import BatchScheduler


@dataclass
class AdapterRun:
    """One adapter's loaded tensors, its context (with the adapter set) and the scheduler on it."""

    lora: llama.llama_adapter_lora_p
    ctx: llama.llama_context_p
    scheduler: BatchScheduler

    def close(self) -> None:
        """Stop the scheduler, then free the context and the adapter's tensors."""
        self.scheduler.close()
        llama.llama_free(self.ctx)
        llama.llama_adapter_lora_free(self.lora)


def load_lora(model: llama.llama_model_p, path: str) -> llama.llama_adapter_lora_p:
    """Load a LoRA GGUF for this model; ModelLoadError when the file is missing or does not fit."""
    if not Path(path).is_file():
        raise ModelLoadError(f"The LoRA adapter {Path(path).name} is missing.")
    lora = llama.llama_adapter_lora_init(model, str(path).encode())
    if not lora:
        raise ModelLoadError(f"llama.cpp could not load the LoRA adapter {Path(path).name}: it is not a LoRA GGUF "
                             "for this base model.")
    return lora


def apply_lora(ctx: llama.llama_context_p, lora: llama.llama_adapter_lora_p, scale: float = 1.0) -> None:
    """Make `lora` the only adapter of the context, at `scale`."""
    adapters = (llama.llama_adapter_lora_p_ctypes * 1)(lora)
    scales = (ctypes.c_float * 1)(scale)
    if llama.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
        raise ModelLoadError("llama.cpp could not apply the LoRA adapter to a context.")
