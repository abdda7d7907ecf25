"""A real SafeTensors chat model for tests and benchmarks: SmolLM2-135M-Instruct made from its GGUF.

transformers reads the Q4_1 GGUF (dequantised to float), we copy its weights into a plain model of
the same config and save it as a Hugging Face directory with the tokenizer and chat template. The
directory is built once and cached outside the repository (``MINERVA_TEST_CACHE`` or
``~/.cache/minerva-test``); a ``.complete`` marker makes a half-written build invisible.
Use from a test module with ``from safetensors_models import smollm2_safetensors_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

BUILD_VERSION = "2"  # bump when the recipe changes, so stale caches are rebuilt
MODEL_DIR_NAME = f"SmolLM2-135M-Instruct-safetensors-v{BUILD_VERSION}"
_COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """Where built test models live between runs (never inside the repository)."""
    configured = os.environ.get("MINERVA_TEST_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "minerva-test"


def build_smollm2_safetensors(gguf_path: Path, target: Path, dtype: str = "float32") -> Path:
    """Convert the SmolLM2 GGUF into a HF SafeTensors directory at ``target``; its path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    source = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = plain.load_state_dict(source.state_dict(), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (target / _COMPLETE_MARKER).write_text(BUILD_VERSION)
    return target


def smollm2_safetensors_path(gguf_path: Path) -> Path:
    """The cached SafeTensors SmolLM2 directory, built on first use."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / MODEL_DIR_NAME
    if (target / _COMPLETE_MARKER).is_file():
        return target
    logger.info("building the SafeTensors SmolLM2 test model in %s", target)
    return build_smollm2_safetensors(gguf_path, target)


@pytest.fixture(scope="session")
def smollm2_safetensors_dir(smollm2_path: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face SafeTensors directory (float32, chat template kept)."""
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    return smollm2_safetensors_path(smollm2_path)
