"""The "auto" hyperparameters of a LoRA job, and the requested ones checked against OpenAI's ranges.

The auto values come from a measurement on SmolLM2-135M (LoRA r=8, α=16, all linear layers, f32 on
CPU): 20 one-turn chats of a made-up fact, 4 epochs of batch 4 (20 steps, 4,396 tokens). lr 5e-4 had
not learnt the fact (final loss 0.5, the name half right); 1e-3 learnt it but with one seed "2+2"
became "2"; 7e-4 learnt it (loss 0.2, two seeds) with "capital of France" and "2+2" keeping the base's
answers. That run trains at about 160 tokens/s on 2 idle cores (27 s for the 20 steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from minerva.core.errors import InvalidRequestError

BASE_LEARNING_RATE = 7e-4
"""LoRA learning rate at learning_rate_multiplier 1 (linearly decayed to 0 over the run)."""

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 80
"""A small file gets epochs until about this many examples are seen: 20 × 4 learnt the measured fact."""
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 10  # a CPU bound: more passes over a tiny file buy little
MAX_AUTO_BATCH = 8
EPOCH_RANGE = (1, 50)
DEFAULT_BETA = 0.1  # DPO: OpenAI's and the paper's default
BATCH_RANGE = (1, 256)


class HyperparameterError(InvalidRequestError):
    """A requested hyperparameter is outside what a job accepts (400)."""

    code = "invalid_hyperparameters"


def _requested_int(requested: Mapping[str, Any], name: str, bounds: tuple[int, int]) -> int | None:
    value = requested.get(name, "auto")
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise HyperparameterError(f"hyperparameters.{name} must be 'auto' or an integer.", param=name)
    if not bounds[0] <= value <= bounds[1]:
        raise HyperparameterError(f"hyperparameters.{name} must be between {bounds[0]} and {bounds[1]}.", param=name)
    return int(value)


def _requested_multiplier(requested: Mapping[str, Any]) -> float:
    value = requested.get("learning_rate_multiplier", "auto")
    if value is None or value == "auto":
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise HyperparameterError("hyperparameters.learning_rate_multiplier must be 'auto' or a number above 0.",
                                  param="learning_rate_multiplier")
    return float(value)


def auto_batch_size(n_examples: int) -> int:
    """Small jobs take small batches so they still get enough optimizer steps (20 examples: 4)."""
    return max(1, min(MAX_AUTO_BATCH, n_examples // 5))


def auto_epochs(n_examples: int) -> int:
    """The cookbook's rule (3 epochs, more for small files, fewer for huge ones) with measured targets."""
    n = max(1, n_examples)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def choose_hyperparameters(n_examples: int, n_tokens: int, requested: Mapping[str, Any]) -> tuple[int, int, float]:
    """(n_epochs, batch_size, learning_rate): the requested values, with "auto" ones chosen for the data."""
    del n_tokens  # accepted for the job's sake; the measured rule depends on the example count only
    n_epochs = _requested_int(requested, "n_epochs", EPOCH_RANGE) or auto_epochs(n_examples)
    batch_size = _requested_int(requested, "batch_size", BATCH_RANGE) or auto_batch_size(n_examples)
    return n_epochs, min(batch_size, max(1, n_examples)), BASE_LEARNING_RATE * _requested_multiplier(requested)


def choose_beta(requested: Mapping[str, Any]) -> float:
    """DPO's beta: the requested one, in OpenAI's range (0, 2], or the default for "auto"."""
    value = requested.get("beta", "auto")
    if value is None or value == "auto":
        return DEFAULT_BETA
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 2:
        raise HyperparameterError("hyperparameters.beta must be 'auto' or a number above 0 and at most 2.",
                                  param="beta")
    return float(value)
