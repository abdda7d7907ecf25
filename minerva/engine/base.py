"""The engine contract: what the generation layer needs from any inference backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from minerva.core.events import TokenEvent, TokenLogprob
from minerva.formats.model_info import ModelInfo

__all__ = [
    "Engine", "EngineStats", "GenerationEnd", "GenerationEvent", "GenerationRequest", "PromptProcessed",
    "SamplingParams", "TokenEvent", "TokenLogprob",
]


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings; each sequence gets its own sampler built from these."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    seed: int | None = None  # None: a fresh random seed per request
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # GBNF text, root rule "root"
    logprobs: bool = False
    top_logprobs: int = 0  # how many alternatives to report per token (0..20)


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: prompt token ids, a budget and its sampling."""

    prompt_tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    session_key: str | None = None  # the client's session id, to prefer a warm slot
    adapter: str | None = None  # a LoRA adapter (by catalogue id) applied on the base model


@dataclass(frozen=True)
class GenerationEnd:
    """The last event of a sequence."""

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class PromptProcessed:
    """Optional first event: the prompt is in the KV cache (cached_tokens of it were reused)."""

    prompt_tokens: int
    cached_tokens: int


GenerationEvent = PromptProcessed | TokenEvent | GenerationEnd


@dataclass(frozen=True)
class EngineStats:
    """Live counters of one loaded engine (values may be one decode step old)."""

    active_slots: int
    total_slots: int
    queued: int
    n_ctx: int
    cached_tokens_total: int = 0  # prompt tokens served from the prefix cache since load
    kv_tokens_held: int = 0  # tokens held in the KV cache now (reusable prefixes included)
    requests_total: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    saved_prompts: int = 0  # prompts saved to host memory
    saved_prompt_bytes: int = 0
    disk_prompts: int = 0  # prompts whose KV cells are in the disk cache
    disk_prompt_bytes: int = 0
    decode_steps_total: int = 0
    draft_tokens_total: int = 0  # speculative draft tokens verified
    draft_accepted_total: int = 0  # ... of which the sampler kept

    @property
    def free_slots(self) -> int:
        """Slots not generating now."""
        return max(0, self.total_slots - self.active_slots)

    @classmethod
    def idle(cls, n_ctx: int) -> EngineStats:
        """The stats of an engine with no generation worker (an embedding-only model)."""
        return cls(active_slots=0, total_slots=0, queued=0, n_ctx=n_ctx)


@runtime_checkable
class Engine(Protocol):
    """A loaded model that can tokenize, generate token streams and embed."""

    info: ModelInfo
    n_ctx: int  # tokens one sequence may hold (prompt + completion)
    bos_token: str
    eos_token: str

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids (add_special: prepend BOS when the model wants one)."""
        ...

    def token_piece(self, token_id: int) -> bytes:
        """The raw bytes of one token."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream TokenEvents then one GenerationEnd. Closing the iterator cancels the sequence."""
        ...

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One pooled embedding per input token list."""
        ...

    def stats(self) -> EngineStats:
        """Live counters: active/total slots, queued requests, cached tokens reused."""
        ...

    def close(self) -> None:
        """Free the model and its memory; pending sequences end with an error."""
        ...
