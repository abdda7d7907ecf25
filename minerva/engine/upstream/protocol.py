"""The llama-server completion protocol, pure: a GenerationRequest as a /completion body, its chunks as events.

llama-server speaks it natively; minerva serves the same shape under /minerva/engine/{model}/ so one
minerva can be another's upstream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from minerva.core.errors import InvalidRequestError, UpstreamError
from minerva.engine.base import GenerationEnd, GenerationEvent, GenerationRequest, TokenEvent, TokenLogprob


@dataclass(frozen=True)
class UnresolvedToken:
    """A streamed token whose text the upstream did not render (a special token): its piece is to be looked up."""

    token_id: int


DecodedItem = GenerationEvent | UnresolvedToken


def completion_body(request: GenerationRequest) -> dict:
    """The /completion request for one sequence: token ids in, every sampling setting explicit."""
    sampling = request.sampling
    body: dict = {
        "prompt": list(request.prompt_tokens),
        "n_predict": request.max_tokens,
        "stream": True,
        "return_tokens": True,
        "cache_prompt": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "typical_p": 1.0,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repeat_penalty": sampling.repeat_penalty,
        "repeat_last_n": sampling.penalty_last_n,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "mirostat": 0,
        "seed": sampling.seed if sampling.seed is not None else -1,
    }
    if sampling.logit_bias:
        body["logit_bias"] = [[token, bias] for token, bias in sampling.logit_bias]
    if sampling.grammar:
        body["grammar"] = sampling.grammar
    if sampling.logprobs:
        body["n_probs"] = max(1, sampling.top_logprobs)
    if request.session_key:
        body["session_key"] = request.session_key  # minerva upstreams keep the session's slot; llama-server ignores it
    return body


def parse_sse_data(line: str) -> dict | None:
    """One SSE line's JSON object; None for blank, comment and non-data lines (UpstreamError when malformed)."""
    if not line.startswith("data:"):
        if line.strip() and not line.startswith((":", "event:", "id:", "retry:")):
            raise UpstreamError(f"upstream sent a line that is not server-sent events: {line[:80]!r}")
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise UpstreamError(f"upstream sent malformed JSON: {payload[:80]!r}") from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream sent a non-object event: {payload[:80]!r}")
    return data


def error_of(body: object, status: int) -> Exception:
    """The typed error for an upstream's error answer: its 4xx as the client's fault, anything else as ours."""
    error = body.get("error") if isinstance(body, dict) else None
    message = (error.get("message") if isinstance(error, dict) else error) or f"upstream answered HTTP {status}"
    if 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
        return InvalidRequestError(f"upstream: {message}")
    return UpstreamError(f"upstream answered HTTP {status}: {message}")


def _piece(entry: dict) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list):
        return bytes(raw)
    return str(entry.get("token", "")).encode("utf-8")


class ChunkDecoder:
    """Turns one stream's /completion chunks into token events and the end.

    A chunk carries text and the ids it came from; text is credited to the chunk's first token. A token
    with no text (a special token the server did not render) is held: if the stream then ends on end of
    generation it was that token and is dropped, as local engines never emit it; else its piece is looked up.
    """

    def __init__(self, eog_ids: frozenset[int], want_logprobs: bool, prompt_tokens: int):
        self._eog = eog_ids
        self._logprobs = want_logprobs
        self._prompt_tokens = prompt_tokens
        self._held: UnresolvedToken | TokenEvent | None = None
        self.tokens_seen = 0

    def _release(self) -> list[DecodedItem]:
        held, self._held = self._held, None
        return [held] if held is not None else []

    def _token(self, item: UnresolvedToken | TokenEvent, token_id: int, silent: bool) -> list[DecodedItem]:
        self.tokens_seen += 1
        out = self._release()
        if silent or token_id in self._eog:
            self._held = item
        else:
            out.append(item)
        return out

    def feed(self, chunk: dict) -> list[DecodedItem]:
        """The events of one chunk (UpstreamError for an error chunk or a malformed one)."""
        if "error" in chunk:
            raise error_of(chunk, 500)
        try:
            if chunk.get("stop"):
                return self._finish(chunk)
            out: list[DecodedItem] = []
            probs = chunk.get("completion_probabilities")
            if probs:
                for entry in probs:
                    token_id = int(entry["id"])
                    top = tuple(TokenLogprob(int(t["id"]), _piece(t), float(t["logprob"]))
                                for t in entry.get("top_logprobs", ())) if self._logprobs else ()
                    event = TokenEvent(token_id, _piece(entry),
                                       float(entry["logprob"]) if self._logprobs else None, top)
                    out += self._token(event, token_id, False)
                return out
            tokens = [int(t) for t in chunk.get("tokens", ())]
            content = str(chunk.get("content", "")).encode("utf-8")
            for position, token_id in enumerate(tokens):
                piece = content if position == 0 else b""
                if piece or position:
                    out += self._token(TokenEvent(token_id, piece), token_id, False)
                else:
                    out += self._token(UnresolvedToken(token_id), token_id, True)
            return out
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"upstream sent a malformed completion chunk: {exc}") from exc

    def _finish(self, chunk: dict) -> list[DecodedItem]:
        stop_type = chunk.get("stop_type", "")
        out = [] if stop_type == "eos" else self._release()
        timings = chunk.get("timings") or {}
        completion = int(chunk.get("tokens_predicted", self.tokens_seen))
        if stop_type == "eos":
            completion = max(0, completion - 1)  # the end-of-generation token is not output
        out.append(GenerationEnd("stop" if stop_type in ("eos", "word", "stop") else "length",
                                 int(chunk.get("tokens_evaluated", self._prompt_tokens)), completion,
                                 int(timings.get("cache_n", 0) or 0)))
        return out
