"""A PEFT LoRA adapter directory → a llama.cpp LoRA GGUF, as llama.cpp's convert_lora_to_gguf.py writes it.

llama.cpp computes `W·x + scale·B(A·x)` with `scale = alpha / rank`, so the adapter needs one alpha
and one rank for every tensor, and tensors named as in the base GGUF (`blk.N.attn_q.weight.lora_a`).
For Llama-family bases the converter permutes the rows of q_proj/k_proj (rotary halves interleaved);
the same permutation is applied to lora_B of q and k, whose rows are those output rows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minerva.core.errors import InvalidRequestError
from minerva.finetune.gguf_writer import write_gguf
from minerva.formats.gguf import read_gguf_header
from minerva.formats.safetensors import read_safetensors_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# HF model_type → (GGUF architecture, whether convert_hf_to_gguf permutes q/k rows)
_HF_ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
                     "qwen3": ("qwen3", False)}
_PERMUTED_ARCHITECTURES = {"llama"}
_GGUF_ARCHITECTURES = {"llama", "qwen2", "qwen3"}
_MODULE_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(.+)\.lora_([AB])(?:\.default)?\.weight$")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16}


class AdapterConversionError(InvalidRequestError):
    """The adapter cannot be expressed as a llama.cpp LoRA (400)."""

    code = "unsupported_adapter"


@dataclass(frozen=True)
class BaseShape:
    """What the conversion needs from the base model: its GGUF architecture and attention heads."""

    architecture: str
    n_head: int
    n_head_kv: int
    permute_qk: bool
    tensor_shapes: Mapping[str, tuple[int, ...]] | None = None  # GGML-order shapes, when the base is a GGUF


def base_shape(base: Path) -> BaseShape:
    """Read the base's architecture and heads from its GGUF header or its HF config.json."""
    base = Path(base)
    if base.is_dir():
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        model_type = config.get("model_type", "")
        if model_type not in _HF_ARCHITECTURES:
            raise AdapterConversionError(f"LoRA adapters for '{model_type}' models cannot be served by llama.cpp here; "
                                         f"supported: {', '.join(sorted(_HF_ARCHITECTURES))}.")
        arch, permute = _HF_ARCHITECTURES[model_type]
        n_head = int(config["num_attention_heads"])
        return BaseShape(arch, n_head, int(config.get("num_key_value_heads") or n_head), permute)
    header = read_gguf_header(base)
    arch = str(header.get("general.architecture", ""))
    if arch not in _GGUF_ARCHITECTURES:
        raise AdapterConversionError(f"LoRA adapters for '{arch}' GGUF models are not supported; "
                                     f"supported: {', '.join(sorted(_GGUF_ARCHITECTURES))}.")
    n_head = int(header.get(f"{arch}.attention.head_count"))
    n_head_kv = int(header.get(f"{arch}.attention.head_count_kv", n_head))
    shapes = {t.name: tuple(t.shape) for t in header.tensors}
    return BaseShape(arch, n_head, n_head_kv, arch in _PERMUTED_ARCHITECTURES, shapes)


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on the rows of a (rows, …) matrix split into n_head heads."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def _lora_scale_alpha(config: Mapping) -> float:
    """The alpha that gives llama.cpp's alpha/rank the scale PEFT applies."""
    for unsupported in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "lora_bias",
                        "trainable_token_indices", "target_parameters", "layer_replication"):
        if config.get(unsupported):
            raise AdapterConversionError(f"The adapter uses {unsupported}, which llama.cpp LoRA cannot load.")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        return alpha * math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r)
    return alpha


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    header = read_safetensors_header(path)
    start = 8 + header.header_size
    tensors: dict[str, np.ndarray] = {}
    with path.open("rb") as file:
        for info in header.tensors:
            file.seek(start + info.start)
            raw = file.read(info.n_bytes)
            if info.dtype == "BF16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = bits.view(np.float32)
            elif info.dtype in _SAFETENSORS_DTYPES:
                array = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[info.dtype]).newbyteorder("<"))
            else:
                raise AdapterConversionError(f"Adapter tensor {info.name} has dtype {info.dtype}; expected F32/F16/BF16.")
            tensors[info.name] = array.astype(np.float32).reshape(info.shape)
    return tensors


def _gguf_name(key: str) -> tuple[str, str]:
    """A PEFT tensor key → (the base GGUF weight name, "a" or "b")."""
    match = _PEFT_KEY.match(key)
    if match is None or match.group(2) not in _MODULE_NAMES:
        if "embed" in key or "lm_head" in key:
            raise AdapterConversionError("The adapter trains embeddings or lm_head, which llama.cpp LoRA cannot load.")
        raise AdapterConversionError(f"The adapter tensor {key} has no llama.cpp counterpart.")
    layer, module, side = match.groups()
    return f"blk.{layer}.{_MODULE_NAMES[module]}.weight", side.lower()


def lora_tensors(adapter: Mapping[str, np.ndarray], shape: BaseShape) -> dict[str, np.ndarray]:
    """PEFT tensors → llama.cpp LoRA tensors (name → float32 array in numpy order), checked against the base."""
    out: dict[str, np.ndarray] = {}
    for key in sorted(adapter):
        weight, side = _gguf_name(key)
        array = np.ascontiguousarray(adapter[key], dtype=np.float32)
        if side == "b" and shape.permute_qk and ".attn_q." in weight:
            array = permute_rows(array, shape.n_head)
        elif side == "b" and shape.permute_qk and ".attn_k." in weight:
            array = permute_rows(array, shape.n_head_kv)
        out[f"{weight}.lora_{side}"] = array
    for name in out:
        weight = name.rsplit(".lora_", 1)[0]
        if f"{weight}.lora_a" not in out or f"{weight}.lora_b" not in out:
            raise AdapterConversionError(f"The adapter has only one of lora_A/lora_B for {weight}.")
        if shape.tensor_shapes is not None:
            base = shape.tensor_shapes.get(weight)
            a, b = out[f"{weight}.lora_a"], out[f"{weight}.lora_b"]  # (r, in), (out, r) in numpy order
            if base is None:
                raise AdapterConversionError(f"The base model has no tensor {weight}; wrong base model?")
            if (a.shape[1], b.shape[0]) != tuple(base[:2]):
                raise AdapterConversionError(f"The adapter for {weight} does not fit the base's shape {base}.")
    return out


def write_lora_gguf(adapter_dir: Path, base: Path, out: Path) -> Path:
    """Convert a PEFT LoRA directory for `base` (a HF directory or a GGUF file) into a llama.cpp LoRA GGUF at `out`."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterConversionError(f"The adapter is {config.get('peft_type')}, not LoRA.")
    alpha = _lora_scale_alpha(config)
    shape = base_shape(base)
    tensors = lora_tensors(_read_tensors(adapter_dir / ADAPTER_WEIGHTS), shape)
    if not tensors:
        raise AdapterConversionError("The adapter holds no LoRA tensors.")
    metadata = {
        "general.architecture": shape.architecture,
        "general.type": "adapter",
        "general.name": adapter_dir.name,
        "adapter.type": "lora",
        "adapter.lora.alpha": alpha,
    }
    return write_gguf(Path(out), metadata, tensors)
