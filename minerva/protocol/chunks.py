"""OpenAI response shapes: chunk builders and the pure fold from chunks to a full response."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. chatcmpl-…, cmpl-…."""
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ResponseHeader:
    """What every chunk of one response repeats."""

    id: str
    created: int
    model: str
    object: str

    @classmethod
    def new(cls, prefix: str, model: str, obj: str) -> "ResponseHeader":
        """A fresh header stamped now."""
        return cls(new_id(prefix), int(time.time()), model, obj)

    def chunk(self, choices: list[dict], **extra) -> dict:
        """One chunk with these choices."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices, **extra}


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """The OpenAI usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class _ChatChoice:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict] = field(default_factory=dict)
    logprobs: list[dict] | None = None
    finish_reason: str | None = None


def collect_chat_completion(chunks: Iterable[dict]) -> dict:
    """Fold streamed chat chunks into the non-streaming chat.completion object."""
    header: dict | None = None
    choices: dict[int, _ChatChoice] = {}
    usage = None
    for chunk in chunks:
        header = header or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            state = choices.setdefault(choice["index"], _ChatChoice())
            delta = choice.get("delta", {})
            if delta.get("content"):
                state.content.append(delta["content"])
            if delta.get("reasoning_content"):
                state.reasoning.append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                slot = state.tool_calls.setdefault(
                    call["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("logprobs"):
                state.logprobs = (state.logprobs or []) + choice["logprobs"].get("content", [])
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
    assert header is not None, "a response has at least one chunk"
    result_choices = []
    for index in sorted(choices):
        state = choices[index]
        message: dict = {"role": "assistant", "content": "".join(state.content) if state.content or not state.tool_calls else None}
        if state.reasoning:
            message["reasoning_content"] = "".join(state.reasoning)
        if state.tool_calls:
            message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
        result_choices.append({
            "index": index,
            "message": message,
            "logprobs": {"content": state.logprobs} if state.logprobs is not None else None,
            "finish_reason": state.finish_reason,
        })
    return {"id": header["id"], "object": "chat.completion", "created": header["created"],
            "model": header["model"], "system_fingerprint": None, "choices": result_choices, "usage": usage}


def collect_completion(chunks: Iterable[dict]) -> dict:
    """Fold streamed text_completion chunks into the non-streaming text_completion object."""
    header: dict | None = None
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, dict] = {}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in chunks:
        header = header or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            index = choice["index"]
            texts.setdefault(index, []).append(choice.get("text") or "")
            if choice.get("logprobs"):
                merged = logprobs.setdefault(index, {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})
                for key in merged:
                    merged[key].extend(choice["logprobs"].get(key) or [])
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    assert header is not None, "a response has at least one chunk"
    return {
        "id": header["id"], "object": "text_completion", "created": header["created"], "model": header["model"],
        "system_fingerprint": None,
        "choices": [
            {"index": i, "text": "".join(texts[i]), "logprobs": logprobs.get(i), "finish_reason": finish.get(i)}
            for i in sorted(texts)
        ],
        "usage": usage,
    }
