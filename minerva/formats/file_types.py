"""Static tables of tensor element types: GGML types, llama.cpp file types, SafeTensors dtypes.

Copied from llama.cpp's ``ggml.h`` / ``ggml.c`` (type traits) and ``llama.h`` (``LLAMA_FTYPE``)
so that minerva never imports gguf-py at runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

# GGML tensor type id -> (name, elements per block, bytes per block), from ggml.c's type traits.
GGML_TYPES: Mapping[int, tuple[str, int, int]] = MappingProxyType(
    {
        0: ("F32", 1, 4),
        1: ("F16", 1, 2),
        2: ("Q4_0", 32, 18),
        3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24),
        8: ("Q8_0", 32, 34),
        9: ("Q8_1", 32, 40),
        10: ("Q2_K", 256, 84),
        11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210),
        15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66),
        17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98),
        19: ("IQ1_S", 256, 50),
        20: ("IQ4_NL", 32, 18),
        21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82),
        23: ("IQ4_XS", 256, 136),
        24: ("I8", 1, 1),
        25: ("I16", 1, 2),
        26: ("I32", 1, 4),
        27: ("I64", 1, 8),
        28: ("F64", 1, 8),
        29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2),
        34: ("TQ1_0", 256, 54),
        35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17),
        40: ("NVFP4", 64, 36),
        41: ("Q1_0", 128, 18),
        42: ("Q2_0", 64, 18),
    }
)

# llama.cpp's LLAMA_FTYPE enum (the GGUF ``general.file_type`` value) -> display name.
LLAMA_FILE_TYPES: Mapping[int, str] = MappingProxyType(
    {
        0: "F32",
        1: "F16",
        2: "Q4_0",
        3: "Q4_1",
        7: "Q8_0",
        8: "Q5_0",
        9: "Q5_1",
        10: "Q2_K",
        11: "Q3_K_S",
        12: "Q3_K_M",
        13: "Q3_K_L",
        14: "Q4_K_S",
        15: "Q4_K_M",
        16: "Q5_K_S",
        17: "Q5_K_M",
        18: "Q6_K",
        19: "IQ2_XXS",
        20: "IQ2_XS",
        21: "Q2_K_S",
        22: "IQ3_XS",
        23: "IQ3_XXS",
        24: "IQ1_S",
        25: "IQ4_NL",
        26: "IQ3_S",
        27: "IQ3_M",
        28: "IQ2_S",
        29: "IQ2_M",
        30: "IQ4_XS",
        31: "IQ1_M",
        32: "BF16",
        36: "TQ1_0",
        37: "TQ2_0",
        38: "MXFP4",  # LLAMA_FTYPE_MOSTLY_MXFP4_MOE: MXFP4 experts, the rest Q8_0/F32
        39: "NVFP4",
        40: "Q1_0",
        41: "Q2_0",
    }
)

# SafeTensors dtype -> bits per element (sub-byte float types pack several elements per byte).
SAFETENSORS_DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E8M0": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }
)


def ggml_type_name(ggml_type: int) -> str:
    """Display name of a GGML tensor type id (``GGML_TYPE_<n>`` when unknown)."""
    known = GGML_TYPES.get(ggml_type)
    return known[0] if known else f"GGML_TYPE_{ggml_type}"


def llama_file_type_name(file_type: int) -> str | None:
    """Display name of a llama.cpp ``general.file_type`` value, or None when unknown."""
    return LLAMA_FILE_TYPES.get(file_type)


def dominant_type(bytes_by_type: Iterable[tuple[str, int]]) -> str | None:
    """The type that holds the most bytes (ties: the first seen), or None when there is none."""
    totals: dict[str, int] = {}
    for type_name, n_bytes in bytes_by_type:
        totals[type_name] = totals.get(type_name, 0) + n_bytes
    if not totals:
        return None
    return max(totals, key=lambda name: totals[name])
