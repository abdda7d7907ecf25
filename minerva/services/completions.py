"""POST /v1/completions: prompts → choices of text chunks (non-streaming folds the same chunks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from minerva.engine.base import Engine, GenerationRequest
from minerva.errors import InvalidRequestError
from minerva.protocol.chunks import ResponseHeader, usage_dict
from minerva.protocol.requests import CompletionRequest
from minerva.services.generation import Finished, TextPiece, clamp_max_tokens, generate_choice, merge_choices, token_text
from minerva.services.sampling import sampling_from_request


@dataclass(frozen=True)
class PreparedCompletion:
    """Everything needed to run a completion request, checked before any output is sent."""

    header: ResponseHeader
    generations: tuple[GenerationRequest, ...]
    echoes: tuple[str, ...]  # the prompt text per choice when `echo` is set
    stops: tuple[str, ...]


def refuse_embedding_model(engine: Engine, model_id: str) -> None:
    """Generation asked of an embedding model is the client's mistake: a 400 before any stream."""
    if engine.info.kind == "embedding":
        raise InvalidRequestError(f"The model '{model_id}' is an embedding model; use /v1/embeddings.",
                                  param="model")


def check_token_ids(ids: list[int], vocab_size: int | None, param: str) -> None:
    """Refuse token ids outside the vocabulary."""
    for token in ids:
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequestError(f"token id {token} is outside the vocabulary", param=param)


def prepare_completion(request: CompletionRequest, engine: Engine, model_id: str,
                       session_key: str | None = None) -> PreparedCompletion:
    """Tokenize prompts, check the context and build one generation request per choice."""
    refuse_embedding_model(engine, model_id)
    if request.best_of is not None and request.best_of != request.n:
        raise InvalidRequestError("best_of other than n is not supported", param="best_of")
    if request.suffix:
        raise InvalidRequestError("suffix (fill-in-the-middle) is not supported for this model", param="suffix")
    vocab = engine.info.vocab_size
    check_token_ids([int(k) for k in (request.logit_bias or {})], vocab, "logit_bias")
    top = request.logprobs or 0
    generations, echoes = [], []
    for prompt in request.prompts():
        if isinstance(prompt, str):
            tokens = engine.tokenize(prompt, add_special=True, parse_special=False)
            text = prompt
        else:
            check_token_ids(prompt, vocab, "prompt")
            tokens = list(prompt)
            text = b"".join(engine.token_piece(t) for t in tokens).decode("utf-8", errors="replace")
        budget = clamp_max_tokens(request.max_tokens, len(tokens), engine.n_ctx, "prompt")
        for choice in range(request.n):
            sampling = sampling_from_request(
                request, choice_index=choice, logprobs=request.logprobs is not None, top_logprobs=top
            )
            generations.append(GenerationRequest(tuple(tokens), budget, sampling, session_key))
            echoes.append(text if request.echo else "")
    header = ResponseHeader.new("cmpl", model_id, "text_completion")
    return PreparedCompletion(header, tuple(generations), tuple(echoes), tuple(request.stop_list()))


def _completion_logprobs(piece: TextPiece, offset: int) -> dict:
    tokens = [token_text(t.piece) for t in piece.tokens]
    return {
        "tokens": tokens,
        "token_logprobs": [t.logprob for t in piece.tokens],
        "top_logprobs": [{token_text(a.piece): a.logprob for a in t.top_logprobs} for t in piece.tokens],
        "text_offset": [offset] * len(tokens),
    }


async def completion_chunks(prepared: PreparedCompletion, engine: Engine, want_logprobs: bool) -> AsyncIterator[dict]:
    """The text_completion chunks of every choice, then a usage chunk with `choices: []`."""
    header = prepared.header
    streams = [generate_choice(engine, g, prepared.stops) for g in prepared.generations]
    offsets = [0] * len(streams)
    prompt_total, completion_total, cached_total = 0, 0, 0
    for index, echo in enumerate(prepared.echoes):
        if echo:
            offsets[index] = len(echo)
            yield header.chunk([{"index": index, "text": echo, "logprobs": None, "finish_reason": None}])
    counted_prompts: set[tuple[int, ...]] = set()
    async for index, event in merge_choices(streams):
        if isinstance(event, TextPiece):
            if not event.text and not (want_logprobs and event.tokens):
                continue
            logprobs = _completion_logprobs(event, offsets[index]) if want_logprobs and event.tokens else None
            offsets[index] += len(event.text)
            yield header.chunk([{"index": index, "text": event.text, "logprobs": logprobs, "finish_reason": None}])
        elif isinstance(event, Finished):
            prompt = prepared.generations[index].prompt_tokens
            if prompt not in counted_prompts:  # n choices of one prompt pay for it once
                counted_prompts.add(prompt)
                prompt_total += event.prompt_tokens
                cached_total += event.cached_tokens
            completion_total += event.completion_tokens
            yield header.chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": event.finish_reason}])
    yield header.chunk([], usage=usage_dict(prompt_total, completion_total, cached_total))
