"""A loaded model's engine over HTTP in llama-server's completion protocol, so one minerva can be another's upstream.

POST /minerva/engine/tokenize, /detokenize, /completion and GET /props take llama-server's bodies plus a
`model` field; /completion streams one chunk per token with its id and exact bytes.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from minerva.api.responding import admit
from minerva.api.state import server_state
from minerva.api.streaming import sse_response
from minerva.core.errors import ContextLengthExceededError, MinervaError
from minerva.engine.base import Engine, GenerationEnd, GenerationRequest, SamplingParams, TokenEvent

router = APIRouter(prefix="/minerva/engine", include_in_schema=False)


class TokenizeBody(BaseModel):
    """llama-server's /tokenize body, with the model."""

    model_config = ConfigDict(extra="ignore")
    model: str
    content: str
    add_special: bool = False
    parse_special: bool = True


class DetokenizeBody(BaseModel):
    """llama-server's /detokenize body, with the model."""

    model_config = ConfigDict(extra="ignore")
    model: str
    tokens: list[int]


class CompletionBody(BaseModel):
    """The part of llama-server's /completion body an upstream client sends: token ids and sampling."""

    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: list[int] = Field(min_length=1)
    n_predict: int = Field(default=256, ge=0)
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1
    logit_bias: list[tuple[int, float]] = Field(default_factory=list)
    grammar: str | None = None
    n_probs: int = Field(default=0, ge=0, le=20)
    session_key: str | None = None


@contextlib.asynccontextmanager
async def _engine(request: Request, model_id: str) -> AsyncIterator[Engine]:
    state = server_state(request)
    async with state.pool.use(state.registry.get(model_id)) as engine:
        yield engine


@router.get("/props")
async def props(request: Request, model: str) -> dict:
    """What a client needs to render and tokenize prompts itself: template, special tokens, context, slots."""
    async with _engine(request, model) as engine:
        stats = engine.stats()
        return {"chat_template": engine.info.chat_template or "", "bos_token": engine.bos_token,
                "eos_token": engine.eos_token, "total_slots": stats.total_slots, "vocab_size": engine.info.vocab_size,
                "default_generation_settings": {"n_ctx": engine.n_ctx}}


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request) -> dict:
    """Text to token ids by the model's tokenizer."""
    async with _engine(request, body.model) as engine:
        return {"tokens": engine.tokenize(body.content, add_special=body.add_special, parse_special=body.parse_special)}


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request) -> dict:
    """Token ids to text (special tokens rendered)."""
    async with _engine(request, body.model) as engine:
        return {"content": b"".join(engine.token_piece(t) for t in body.tokens).decode("utf-8", errors="replace")}


def _token_chunk(event: TokenEvent, content: str, n_probs: int) -> dict:
    entry = {"id": event.token_id, "token": event.piece.decode("utf-8", errors="replace"), "bytes": list(event.piece),
             "logprob": event.logprob if event.logprob is not None else 0.0}
    if n_probs:
        entry["top_logprobs"] = [{"id": t.token_id, "token": t.piece.decode("utf-8", errors="replace"),
                                  "bytes": list(t.piece), "logprob": t.logprob} for t in event.top_logprobs]
    return {"content": content, "tokens": [event.token_id], "stop": False, "completion_probabilities": [entry]}


def _end_chunk(end: GenerationEnd) -> dict:
    return {"content": "", "tokens": [], "stop": True, "stop_type": "stop" if end.finish_reason == "stop" else "limit",
            "tokens_predicted": end.completion_tokens, "tokens_evaluated": end.prompt_tokens,
            "timings": {"cache_n": end.cached_tokens}}


def _sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@router.post("/completion")
async def completion(body: CompletionBody, request: Request):
    """Generate from token ids, streamed as llama-server does; a client that leaves cancels the sequence."""
    state = server_state(request)
    stack = contextlib.AsyncExitStack()
    engine = await stack.enter_async_context(_engine(request, body.model))
    try:
        admit(state, engine)
        if len(body.prompt) >= engine.n_ctx:
            raise ContextLengthExceededError(engine.n_ctx, len(body.prompt), param="prompt")
        sampling = SamplingParams(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            repeat_penalty=body.repeat_penalty, penalty_last_n=body.repeat_last_n,
            seed=None if body.seed < 0 else body.seed, logit_bias=tuple(body.logit_bias), grammar=body.grammar,
            logprobs=bool(body.n_probs), top_logprobs=body.n_probs)
        generation = GenerationRequest(tuple(body.prompt), min(body.n_predict, engine.n_ctx - len(body.prompt)),
                                       sampling, body.session_key)
    except BaseException:
        await stack.aclose()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async with stack, contextlib.aclosing(engine.generate(generation)) as events:
            try:
                async for event in events:
                    if isinstance(event, TokenEvent):
                        yield _sse(_token_chunk(event, text.decode(event.piece), body.n_probs))
                    elif isinstance(event, GenerationEnd):
                        yield _sse(_end_chunk(event))
            except MinervaError as exc:
                yield _sse({"error": {"message": exc.message, "code": exc.code or "error"}})

    return sse_response(chunks())
