"""POST /v1/embeddings: inputs → token lists → the engine's pooled vectors → the OpenAI list object."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

from minerva.engine.base import Engine
from minerva.errors import InvalidRequestError
from minerva.formats.model_info import ModelInfo
from minerva.protocol.requests import EmbeddingRequest
from minerva.services.completions import check_token_ids

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


@dataclass(frozen=True)
class PreparedEmbedding:
    """The inputs of one embeddings request as token lists, checked before the engine runs."""

    inputs: tuple[tuple[int, ...], ...]
    dimensions: int | None
    encoding_format: str


def _raw_inputs(request: EmbeddingRequest) -> list[str | list[int]]:
    value = request.input
    if isinstance(value, str):
        return [value]
    if not value:
        raise InvalidRequestError("input must not be empty", param="input")
    if all(isinstance(item, int) for item in value):
        return [list(value)]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]


def require_embedding_model(info: ModelInfo, model_id: str) -> None:
    """Refuse a chat or completion model before anything is loaded for it."""
    if info.kind != "embedding":
        raise InvalidRequestError(f"The model '{model_id}' is a {info.kind} model, not an embedding model; "
                                  "choose a model whose capabilities include embeddings.", param="model")


def prepare_embedding(request: EmbeddingRequest, engine: Engine) -> PreparedEmbedding:
    """Tokenize strings (token-id inputs pass as given) and check the request against the model."""
    require_embedding_model(engine.info, request.model)
    raw = _raw_inputs(request)
    if len(raw) > MAX_INPUTS:
        raise InvalidRequestError(f"at most {MAX_INPUTS} inputs per request", param="input")
    inputs = []
    for item in raw:
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError("input must not contain empty strings", param="input")
            tokens = engine.tokenize(item, add_special=True, parse_special=False)
        else:
            if not item:
                raise InvalidRequestError("input must not contain empty token lists", param="input")
            check_token_ids(item, engine.info.vocab_size, "input")
            tokens = list(item)
        inputs.append(tuple(tokens))
    native = engine.info.embedding_length
    if request.dimensions is not None and native is not None and request.dimensions > native:
        raise InvalidRequestError(f"dimensions must be at most {native} for this model", param="dimensions")
    return PreparedEmbedding(tuple(inputs), request.dimensions, request.encoding_format)


def truncate_and_normalize(vector: list[float], dimensions: int) -> list[float]:
    """The first `dimensions` components, rescaled to unit length (Matryoshka-style truncation)."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head] if norm > 0 else head


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 (what the OpenAI SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def create_embeddings(prepared: PreparedEmbedding, engine: Engine, model_id: str) -> dict:
    """Run the engine and build the OpenAI `list` of `embedding` objects with usage."""
    vectors = await engine.embed([list(tokens) for tokens in prepared.inputs])
    if prepared.dimensions is not None:
        vectors = [truncate_and_normalize(v, prepared.dimensions) for v in vectors]
    tokens = sum(len(t) for t in prepared.inputs)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, prepared.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
