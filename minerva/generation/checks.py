"""Request checks the generation services share, raised before any output is sent."""

from __future__ import annotations

from collections.abc import Iterable

from minerva.core.errors import InvalidRequestError
from minerva.engine.base import Engine


def refuse_embedding_model(engine: Engine, model_id: str) -> None:
    """Generation asked of an embedding model is the client's mistake: a 400 before any stream."""
    if engine.info.kind == "embedding":
        raise InvalidRequestError(f"The model '{model_id}' is an embedding model; use /v1/embeddings.",
                                  param="model")


def check_token_ids(ids: Iterable[int], vocab_size: int | None, param: str) -> None:
    """Refuse token ids outside the vocabulary."""
    for token in ids:
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequestError(f"token id {token} is outside the vocabulary", param=param)
