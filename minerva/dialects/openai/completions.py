"""OpenAI text completions: core events → text_completion chunks, and the fold into text_completion."""

from __future__ import annotations

from collections.abc import Iterable

from minerva.core.events import ChoiceEnd, Event, Logprobs, StreamFailed, TextDelta, Usage
from minerva.dialects.openai.shapes import FINISH_REASONS, ResponseHeader, token_text, usage_dict


def completion_logprobs(tokens: Logprobs, offset: int) -> dict:
    """The legacy completions logprobs object of these tokens, all at text offset `offset`."""
    texts = [token_text(t.piece) for t in tokens]
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{token_text(a.piece): a.logprob for a in t.top_logprobs} for t in tokens],
        "text_offset": [offset] * len(texts),
    }


class CompletionChunkEncoder:
    """Writes one response's events as text_completion chunks, tracking each choice's text offset."""

    def __init__(self, header: ResponseHeader, n: int, include_usage: bool):
        self.header = header
        self.include_usage = include_usage
        self._offsets = [0] * n

    def opening(self) -> list[dict]:
        """Completions send nothing before the first event."""
        return []

    def encode(self, event: Event) -> dict | None:
        """The chunk for one event; None for an event this stream does not show (usage unless asked)."""
        if isinstance(event, TextDelta):
            index = event.choice
            logprobs = completion_logprobs(event.logprobs, self._offsets[index]) if event.logprobs else None
            self._offsets[index] += len(event.text)
            return self.header.chunk([{"index": index, "text": event.text, "logprobs": logprobs,
                                       "finish_reason": None}])
        if isinstance(event, ChoiceEnd):
            return self.header.chunk([{"index": event.choice, "text": "", "logprobs": None,
                                       "finish_reason": FINISH_REASONS[event.reason]}])
        if isinstance(event, Usage):
            return self.header.chunk([], usage=usage_dict(event)) if self.include_usage else None
        raise TypeError(f"no completion chunk for {event!r}")


def fold_completion(header: ResponseHeader, n: int, events: Iterable[Event]) -> dict:
    """The non-streamed text_completion object of a whole event stream; a failure raises its error."""
    texts: list[list[str]] = [[] for _ in range(n)]
    offsets = [0] * n
    logprobs: dict[int, dict] = {}
    finish: dict[int, str] = {}
    usage = None
    for event in events:
        if isinstance(event, StreamFailed):
            raise event.error
        if isinstance(event, Usage):
            usage = usage_dict(event)
        elif isinstance(event, TextDelta):
            index = event.choice
            if event.logprobs:
                merged = logprobs.setdefault(index, {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                     "text_offset": []})
                for key, values in completion_logprobs(event.logprobs, offsets[index]).items():
                    merged[key].extend(values)
            texts[index].append(event.text)
            offsets[index] += len(event.text)
        elif isinstance(event, ChoiceEnd):
            finish[event.choice] = FINISH_REASONS[event.reason]
    return {
        "id": header.id, "object": "text_completion", "created": header.created, "model": header.model,
        "system_fingerprint": None,
        "choices": [
            {"index": i, "text": "".join(texts[i]), "logprobs": logprobs.get(i), "finish_reason": finish.get(i)}
            for i in range(n)
        ],
        "usage": usage,
    }
