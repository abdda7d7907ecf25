"""OpenAI response pieces every OpenAI encoder shares: ids, the chunk header, usage, finish reasons, logprobs."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from minerva.core.events import FinishReason, TokenEvent, TokenLogprob, Usage


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


def usage_dict(usage: Usage) -> dict:
    """The OpenAI usage object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


FINISH_REASONS: dict[FinishReason, str] = {"end": "stop", "stop_sequence": "stop", "length": "length",
                                            "tool_calls": "tool_calls"}
"""OpenAI's finish_reason for each way a choice ends."""


def token_text(piece: bytes) -> str:
    """A token's bytes as display text for logprobs (invalid UTF-8 shown with replacement chars)."""
    return piece.decode("utf-8", errors="replace")


def logprob_entry(token: TokenEvent | TokenLogprob) -> dict:
    """The OpenAI chat logprobs entry of one token (without top_logprobs)."""
    return {
        "token": token_text(token.piece),
        "logprob": token.logprob if token.logprob is not None else 0.0,
        "bytes": list(token.piece),
    }
