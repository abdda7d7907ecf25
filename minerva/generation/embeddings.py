"""Embeddings: inputs → token lists → the engine's pooled vectors (truncated to `dimensions` on request)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from minerva.engine.base import Engine
from minerva.core.errors import InvalidRequestError
from minerva.formats.model_info import ModelInfo
from minerva.core.requests import EmbeddingRequest
from minerva.generation.checks import check_token_ids

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


@dataclass(frozen=True)
class PreparedEmbedding:
    """The inputs of one embeddings request as token lists, checked before the engine runs."""

    inputs: tuple[tuple[int, ...], ...]
    dimensions: int | None


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, and the tokens they cost."""

    vectors: list[list[float]]
    prompt_tokens: int


def require_embedding_model(info: ModelInfo, model_id: str) -> None:
    """Refuse a chat or completion model before anything is loaded for it."""
    if info.kind != "embedding":
        raise InvalidRequestError(f"The model '{model_id}' is a {info.kind} model, not an embedding model; "
                                  "choose a model whose capabilities include embeddings.", param="model")


def truncated_tokens(engine: Engine, text: str, tokens: list[int]) -> list[int]:
    """A text's tokens cut to the context: the text's own tokens are cut, the special tokens around them kept."""
    plain = engine.tokenize(text, add_special=False, parse_special=False)
    extra = len(tokens) - len(plain)
    lead = next((i for i in range(max(0, extra) + 1) if tokens[i:i + len(plain)] == plain), None)
    if lead is None or engine.n_ctx <= extra:
        return tokens[:engine.n_ctx]
    return [*tokens[:lead], *plain[:engine.n_ctx - extra], *tokens[lead + len(plain):]]


def prepare_embedding(request: EmbeddingRequest, engine: Engine, model_id: str) -> PreparedEmbedding:
    """Tokenize strings (token-id inputs pass as given) and check the request against the model."""
    require_embedding_model(engine.info, model_id)
    raw = request.inputs
    if not raw:
        raise InvalidRequestError("input must not be empty", param="input")
    if len(raw) > MAX_INPUTS:
        raise InvalidRequestError(f"at most {MAX_INPUTS} inputs per request", param="input")
    inputs = []
    for item in raw:
        if isinstance(item, str):
            if not item:
                raise InvalidRequestError("input must not contain empty strings", param="input")
            tokens = engine.tokenize(item, add_special=True, parse_special=False)
            if request.truncate and len(tokens) > engine.n_ctx:
                tokens = truncated_tokens(engine, item, tokens)
        else:
            if not item:
                raise InvalidRequestError("input must not contain empty token lists", param="input")
            check_token_ids(item, engine.info.vocab_size, "input")
            tokens = list(item)
        inputs.append(tuple(tokens))
    native = engine.info.embedding_length
    if request.dimensions is not None and native is not None and request.dimensions > native:
        raise InvalidRequestError(f"dimensions must be at most {native} for this model", param="dimensions")
    return PreparedEmbedding(tuple(inputs), request.dimensions)


def truncate_and_normalize(vector: list[float], dimensions: int) -> list[float]:
    """The first `dimensions` components, rescaled to unit length (Matryoshka-style truncation)."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head] if norm > 0 else head


async def create_embeddings(prepared: PreparedEmbedding, engine: Engine) -> Embeddings:
    """Run the engine: one (truncated, renormalised) vector per input."""
    vectors = await engine.embed([list(tokens) for tokens in prepared.inputs])
    if prepared.dimensions is not None:
        vectors = [truncate_and_normalize(v, prepared.dimensions) for v in vectors]
    return Embeddings(vectors, sum(len(t) for t in prepared.inputs))
