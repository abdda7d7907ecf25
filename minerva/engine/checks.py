"""Input checks every engine applies before a sequence or an embedding batch reaches its backend."""

from __future__ import annotations

from collections.abc import Sequence

from minerva.core.errors import ContextLengthExceededError, InvalidRequestError


def check_prompt(prompt: Sequence[int], n_ctx: int, n_vocab: int) -> None:
    """Refuse an empty prompt, one with no room to generate, or token ids outside the vocabulary."""
    if not prompt:
        raise InvalidRequestError("The prompt is empty.", param="messages")
    if len(prompt) > n_ctx - 1:
        raise ContextLengthExceededError(n_ctx, len(prompt))
    if min(prompt) < 0 or max(prompt) >= n_vocab:
        raise InvalidRequestError("The prompt contains token ids outside the vocabulary.", param="prompt")


def check_embedding_inputs(inputs: list[list[int]], n_ctx: int, n_vocab: int) -> None:
    """Refuse empty, over-long or out-of-vocabulary inputs before they reach a backend."""
    for tokens in inputs:
        if not tokens:
            raise InvalidRequestError("An embedding input is empty.", param="input")
        if len(tokens) > n_ctx:
            raise ContextLengthExceededError(n_ctx, len(tokens), param="input")
        if min(tokens) < 0 or max(tokens) >= n_vocab:
            raise InvalidRequestError("The input contains token ids outside the vocabulary.", param="input")
