"""vLLM's OpenAI server protocol, pure: a GenerationRequest as a /v1/completions body, its chunks as events.

Read from vLLM's source (0.33.0 wheel; fields dated by the release that introduced them):
vllm/entrypoints/openai/completion/protocol.py (CompletionRequest, CompletionStreamResponse),
vllm/entrypoints/openai/completion/serving.py (completion_stream_generator),
vllm/entrypoints/serve/tokenize/protocol.py (/tokenize, /detokenize, /tokenizer_info),
vllm/v1/engine/detokenizer.py (what a chunk's text holds), vllm/v1/metrics/loggers.py (queue gauges).
The oldest release with every field used here is 0.11.0 (`structured_outputs`; `return_token_ids` is 0.10.2).
"""

from __future__ import annotations

from minerva.core.errors import UpstreamError
from minerva.engine.base import GenerationEnd, GenerationRequest, TokenEvent, TokenLogprob
from minerva.engine.upstream.protocol import DecodedItem, error_of

MINIMUM_VERSION = "0.11.0"
COMPLETIONS_PATH = "/v1/completions"
QUEUE_GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running")
TOKEN_ID_PREFIX = "token_id:"  # how return_tokens_as_token_ids names a token (format_token_id_placeholder)


def completion_body(request: GenerationRequest, stop_token_ids: frozenset[int] = frozenset()) -> dict:
    """The /v1/completions request for one sequence: token ids in, every sampling setting explicit.

    Special tokens are rendered verbatim with no spaces added between them, as a local engine's pieces are;
    the token that ends the sequence (end of generation or one of `stop_token_ids`) is not rendered.
    """
    sampling = request.sampling
    body: dict = {
        "prompt": list(request.prompt_tokens),
        "max_tokens": request.max_tokens,
        "n": 1,
        "echo": False,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repeat_penalty,  # vLLM's spans prompt and output; penalty_last_n has no match
        "stop": [],
        "stop_token_ids": sorted(stop_token_ids),
        "ignore_eos": False,
        "min_tokens": 0,
        "include_stop_str_in_output": False,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    if sampling.grammar:
        body["structured_outputs"] = {"grammar": sampling.grammar}
    if sampling.logprobs:
        body["logprobs"] = sampling.top_logprobs
        body["return_tokens_as_token_ids"] = True  # alternatives keyed by id: decoded strings collide
    return body


def tokenize_body(text: str, add_special: bool) -> dict:
    """A /tokenize request for plain text (vLLM always parses special-token text as special tokens)."""
    return {"prompt": text, "add_special_tokens": add_special}


def tokens_of(answer: object) -> tuple[int, ...]:
    """The token ids of a /tokenize answer ({tokens, count, max_model_len})."""
    try:
        return tuple(int(t) for t in answer["tokens"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError("vLLM /tokenize answered without token ids") from exc


def detokenized_text(answer: object) -> str:
    """The text of a /detokenize answer ({prompt})."""
    if not isinstance(answer, dict) or not isinstance(answer.get("prompt"), str):
        raise UpstreamError("vLLM /detokenize answered without text")
    return answer["prompt"]


def queue_length(metrics_text: str) -> int | None:
    """Requests running plus waiting on a vLLM server, from its Prometheus /metrics (None when not exposed).

    Each engine of a data-parallel server reports its own labelled line; they add up.
    """
    total, seen = 0.0, False
    for line in metrics_text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in QUEUE_GAUGES:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen = True
    return int(total) if seen else None


def token_id_of(name: str) -> int:
    """The id in a `token_id:N` logprobs key."""
    if not name.startswith(TOKEN_ID_PREFIX):
        raise ValueError(f"logprobs token {name[:40]!r} is not named by id")
    return int(name[len(TOKEN_ID_PREFIX):])


class ChunkDecoder:
    """Turns one stream's CompletionStreamResponse chunks into token events and the end.

    A chunk carries the text of its new tokens and their ids (`token_ids`); the text is credited to the
    chunk's first token. A token without text is held until the next chunk: vLLM holds back a character's
    first bytes until it is complete, and never renders the token that ends the sequence. If the stream then
    finishes on a stop token (finish_reason "stop" and a stop_reason that is not a stop string) that last
    token is dropped, as local engines never emit it. The end comes with the usage chunk (choices empty).
    """

    def __init__(self, want_logprobs: bool, top_logprobs: int, prompt_tokens: int):
        self._logprobs = want_logprobs
        self._top = top_logprobs
        self._prompt_tokens = prompt_tokens
        self._held: TokenEvent | None = None
        self._finish: str | None = None
        self._dropped = 0
        self.tokens_seen = 0

    def _release(self) -> list[DecodedItem]:
        held, self._held = self._held, None
        return [held] if held is not None else []

    def feed(self, chunk: dict) -> list[DecodedItem]:
        """The events of one chunk (typed errors for an error chunk or a malformed one)."""
        if "error" in chunk:
            error = chunk["error"]
            status = error.get("code") if isinstance(error, dict) else None
            raise error_of(chunk, status if isinstance(status, int) and 400 <= status < 600 else 500)
        try:
            choices = chunk.get("choices") or []
            if not choices:
                return self._usage(chunk.get("usage"))
            choice = choices[0]
            if self._finish is not None:
                raise ValueError("a token chunk after the finish")
            ids = choice.get("token_ids")
            if ids is None:
                raise ValueError("no token_ids (the server is older than vLLM 0.10.2?)")
            events = self._events([int(t) for t in ids], str(choice.get("text") or "").encode("utf-8"),
                                  choice.get("logprobs"))
            out: list[DecodedItem] = []
            for event in events:
                self.tokens_seen += 1
                out += self._release()
                if event.piece:
                    out.append(event)
                else:
                    self._held = event
            if choice.get("finish_reason") is not None:
                out += self._finished(str(choice["finish_reason"]), choice.get("stop_reason"))
            return out
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UpstreamError(f"vLLM sent a malformed completion chunk: {exc}") from exc

    def _events(self, ids: list[int], text: bytes, logprobs: object) -> list[TokenEvent]:
        pieces = [text if i == 0 else b"" for i in range(len(ids))]
        if not (self._logprobs and isinstance(logprobs, dict)):
            return [TokenEvent(token_id, piece) for token_id, piece in zip(ids, pieces)]
        chosen, tops = logprobs["token_logprobs"], logprobs["top_logprobs"]
        if len(chosen) != len(ids):
            raise ValueError("logprobs do not match the chunk's tokens")
        events = []
        for token_id, piece, logprob, top in zip(ids, pieces, chosen, tops):
            ranked = sorted(((token_id_of(k), float(v)) for k, v in (top or {}).items()), key=lambda kv: -kv[1])
            alternatives = tuple(TokenLogprob(t, b"", lp) for t, lp in ranked[:self._top])
            events.append(TokenEvent(token_id, piece, float(logprob) if logprob is not None else None, alternatives))
        return events

    def _finished(self, reason: str, stop_reason: object) -> list[DecodedItem]:
        if reason not in ("stop", "length", "repetition"):
            raise UpstreamError(f"vLLM ended the sequence with finish_reason {reason!r}")
        by_token = reason == "stop" and not isinstance(stop_reason, str)
        if by_token and self._held is not None:
            self._held = None
            self._dropped = 1
        self._finish = "length" if reason == "length" else "stop"
        return self._release()

    def _usage(self, usage: object) -> list[DecodedItem]:
        if not isinstance(usage, dict):
            return []  # a chunk with no choice and no usage carries nothing
        if self._finish is None:
            raise ValueError("usage before the finish")
        details = usage.get("prompt_tokens_details") or {}
        completion = int(usage.get("completion_tokens", self.tokens_seen)) - self._dropped
        return [GenerationEnd(self._finish, int(usage.get("prompt_tokens", self._prompt_tokens)),  # type: ignore[arg-type]
                              max(0, completion), int(details.get("cached_tokens") or 0))]

    def close(self) -> list[DecodedItem]:
        """At `data: [DONE]` or the end of the body: the end, if the usage chunk did not bring it."""
        if self._finish is None:
            raise UpstreamError("vLLM ended the stream before the sequence finished")
        return [GenerationEnd(self._finish, self._prompt_tokens, max(0, self.tokens_seen - self._dropped))]  # type: ignore[arg-type]

