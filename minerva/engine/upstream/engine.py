"""UpstreamEngine: the Engine protocol over a remote server's token-level API, replicas balanced and failed over.

minerva renders the template, builds tool prompts and grammars, parses reasoning and tool calls as for a
local model; the upstream receives token ids (and a grammar) and streams tokens back. llama-server and minerva
speak llama-server's /completion protocol (protocol.py), vLLM its OpenAI /v1/completions (vllm_protocol.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from functools import lru_cache

from minerva.core.errors import InvalidRequestError, MinervaError, UpstreamError, UpstreamTimeoutError
from minerva.engine.base import EngineStats, GenerationEnd, GenerationEvent, GenerationRequest, TokenEvent
from minerva.engine.upstream import vllm_protocol as vllm
from minerva.engine.upstream.protocol import ChunkDecoder, UnresolvedToken, completion_body, parse_sse_data
from minerva.engine.upstream.replicas import Replica, ReplicaSet
from minerva.engine.upstream.transport import UpstreamClient
from minerva.formats.model_info import ModelInfo

logger = logging.getLogger(__name__)

PREFIX_BY_KIND = {"llama-server": "", "minerva": "/minerva/engine", "vllm": ""}
"""Where each kind serves its token-level protocol (/completion, /tokenize, /detokenize), under its server root."""

TOKENIZE_CACHE = 256  # recent texts whose token ids are kept (count_tokens, then the same request's generation)


@dataclass(frozen=True)
class UpstreamModel:
    """Where a registered model runs: its upstream, its id there, the protocol, and what the upstream reports."""

    upstream: str
    remote_id: str
    kind: str  # "llama-server", "minerva" or "vllm"
    n_ctx: int
    meta: tuple[tuple[str, object], ...] = ()
    client: UpstreamClient | None = field(default=None, compare=False, repr=False)

    @property
    def prefix(self) -> str:
        """The path of the completion protocol under each replica's root."""
        return PREFIX_BY_KIND[self.kind]


class UpstreamEngine:
    """A model served by an upstream's replicas; tokenize and token_piece block (the API runs them off the loop)."""

    blocking_tokenizer = True  # tokenize is a network call: prepare requests in a worker thread

    def __init__(self, info: ModelInfo, model: UpstreamModel):
        assert model.client is not None
        self.info = info
        self.n_ctx = model.n_ctx
        self.bos_token = info.bos_token or ""
        self.eos_token = info.eos_token or ""
        self._model = model
        self._client = model.client
        self._replicas: ReplicaSet = model.client.replicas
        self._pieces: dict[int, bytes] = {}
        self._tokenize = lru_cache(maxsize=TOKENIZE_CACHE)(self._tokenize_remote)
        self._requests = self._prompt_total = self._completion_total = self._cached_total = 0
        self._eog = frozenset(self._tokenize(self.eos_token, False, True)) if self.eos_token else frozenset()
        if len(self._eog) != 1:
            self._eog = frozenset()

    @classmethod
    def connect(cls, info: ModelInfo, model: UpstreamModel) -> UpstreamEngine:
        """The engine for a registered upstream model (asks the upstream for the end-of-generation token)."""
        return cls(info, model)

    def _body(self, extra: dict) -> dict:
        return {"model": self._model.remote_id, **extra}

    @property
    def _vllm(self) -> bool:
        return self._model.kind == "vllm"

    def _tokenize_remote(self, text: str, add_special: bool, parse_special: bool) -> tuple[int, ...]:
        if self._vllm:
            return vllm.tokens_of(self._client.post_sync("/tokenize", self._body(vllm.tokenize_body(text, add_special))))
        answer = self._client.post_sync("/tokenize", self._body(
            {"content": text, "add_special": add_special, "parse_special": parse_special}), self._model.prefix)
        try:
            return tuple(int(t) for t in answer["tokens"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("upstream /tokenize answered without token ids") from exc

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids, by the upstream's tokenizer."""
        return list(self._tokenize(text, add_special, parse_special))

    def token_piece(self, token_id: int) -> bytes:
        """One token's text, by the upstream's detokenizer (bytes of a partial character arrive replaced)."""
        piece = self._pieces.get(token_id)
        if piece is None and self._vllm:
            answer = self._client.post_sync("/detokenize", self._body({"tokens": [token_id]}))
            piece = self._pieces[token_id] = vllm.detokenized_text(answer).encode("utf-8")
        if piece is None:
            answer = self._client.post_sync("/detokenize", self._body({"tokens": [token_id]}), self._model.prefix)
            piece = str(answer.get("content", "") if isinstance(answer, dict) else "").encode("utf-8")
            self._pieces[token_id] = piece
        return piece

    async def _resolve(self, item: TokenEvent | UnresolvedToken) -> TokenEvent:
        if isinstance(item, TokenEvent):
            return item
        if item.token_id not in self._pieces:
            self._pieces[item.token_id] = await asyncio.to_thread(self.token_piece, item.token_id)
        return TokenEvent(item.token_id, self._pieces[item.token_id])

    async def _with_alternatives(self, event: TokenEvent) -> TokenEvent:
        """vLLM names logprob alternatives by id: give them their pieces (looked up once per token id)."""
        if all(t.piece for t in event.top_logprobs):
            return event
        for top in event.top_logprobs:
            if top.token_id not in self._pieces:
                self._pieces[top.token_id] = await asyncio.to_thread(self.token_piece, top.token_id)
        return replace(event, top_logprobs=tuple(replace(t, piece=self._pieces[t.token_id]) for t in event.top_logprobs))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the sequence from one replica; one that fails before its first token is replaced by another."""
        if request.adapter:
            raise InvalidRequestError("adapters are not served on upstream models", param="model")
        tried: list[Replica] = []
        failure: type[UpstreamError] = UpstreamError  # the last replica's: a timeout stays a timeout
        while True:
            replica = self._replicas.pick(request.session_key, exclude=tuple(tried))
            if replica is None:
                raise failure(f"upstream {self._replicas.name}: every replica failed "
                              f"({'; '.join(r.last_error for r in tried) or 'none configured'})")
            tried.append(replica)
            started = False
            replica.in_flight += 1
            try:
                async for event in self._stream(replica, request):
                    started = True
                    if isinstance(event, GenerationEnd):  # the reader may stop at the end: note it first
                        self._replicas.served(replica, request.session_key)
                    yield event
                return
            except InvalidRequestError:
                raise
            except MinervaError as exc:
                self._replicas.mark_down(replica, exc.message)
                if started:
                    raise UpstreamError(f"upstream replica failed mid-stream: {exc.message}") from exc
                failure = type(exc) if isinstance(exc, UpstreamError) else UpstreamError
                logger.warning("upstream %s: %s; retrying on another replica", self._replicas.name, exc.message)
            finally:
                replica.in_flight -= 1

    async def _stream(self, replica: Replica, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        timeouts = self._client.config.timeouts
        sampling = request.sampling
        if self._vllm:
            url = f"{replica.url}{vllm.COMPLETIONS_PATH}"
            body = vllm.completion_body(request, self._eog)
            decoder: ChunkDecoder | vllm.ChunkDecoder = vllm.ChunkDecoder(
                sampling.logprobs, sampling.top_logprobs, len(request.prompt_tokens))
        else:
            url = f"{replica.url}{self._model.prefix}/completion"
            body = completion_body(request)
            decoder = ChunkDecoder(self._eog, sampling.logprobs, len(request.prompt_tokens))
        wait_s = timeouts.first_token_s
        self._requests += 1
        async with contextlib.AsyncExitStack() as stack:
            try:
                lines = await asyncio.wait_for(stack.enter_async_context(
                    self._client.stream(url, self._body(body))), wait_s)
            except TimeoutError as exc:
                raise UpstreamTimeoutError(f"upstream {url} sent nothing in {wait_s:g} s") from exc
            while True:
                try:
                    line = await asyncio.wait_for(anext(lines), wait_s)
                except StopAsyncIteration:
                    if not isinstance(decoder, vllm.ChunkDecoder):
                        raise UpstreamError(f"upstream {url} ended the stream before its end") from None
                    line = None
                except TimeoutError as exc:
                    raise UpstreamTimeoutError(f"upstream {url} sent no token in {wait_s:g} s") from exc
                if line is None:
                    items = decoder.close()  # type: ignore[union-attr]
                elif (chunk := parse_sse_data(line)) is not None:
                    items = decoder.feed(chunk)
                else:
                    continue
                for item in items:
                    if isinstance(item, GenerationEnd):
                        self._prompt_total += item.prompt_tokens
                        self._completion_total += item.completion_tokens
                        self._cached_total += item.cached_tokens
                        yield item
                        return
                    if isinstance(item, (TokenEvent, UnresolvedToken)):
                        wait_s = timeouts.between_tokens_s
                        event = await self._resolve(item)
                        yield await self._with_alternatives(event) if event.top_logprobs else event
                    else:
                        yield item

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Embeddings are not served through upstreams."""
        raise InvalidRequestError("embeddings are not served for upstream models", param="model")

    def stats(self) -> EngineStats:
        """Open requests against the replicas' slots (what the upstreams report, one per replica when unknown)."""
        replicas = self._replicas.replicas
        active = sum(r.in_flight for r in replicas)
        total = sum(max(1, r.total_slots) for r in replicas if r.healthy) or 1
        return EngineStats(active_slots=min(active, total), total_slots=total, queued=max(0, active - total),
                           n_ctx=self.n_ctx, cached_tokens_total=self._cached_total, requests_total=self._requests,
                           prompt_tokens_total=self._prompt_total, completion_tokens_total=self._completion_total)

    def close(self) -> None:
        """Nothing to free here: the upstream's clients belong to the catalogue; open streams close with their readers."""
        self._pieces.clear()


ENGINE = UpstreamEngine
