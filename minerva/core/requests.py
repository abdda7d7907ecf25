"""The dialect-neutral requests every client API is converted into before generation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A tool call earlier in the conversation: id, function name and arguments as the client sent them."""

    name: str
    arguments: Any = None  # JSON text or an object
    id: str | None = None


@dataclass(frozen=True)
class Message:
    """One conversation turn with its text already flattened from the client's content parts."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # other fields the client sent; chat templates may read them


@dataclass(frozen=True)
class TextGrammar:
    """A grammar over free text: ``lark`` or ``regex`` syntax, and its definition."""

    syntax: str
    definition: str


FREEFORM_INPUT = "input"
"""A free-form tool's input travels as the one string argument of this name."""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: name, description and JSON Schema parameters.

    ``freeform``: the tool takes free text (``{"input": "…"}``) that must match this grammar.
    """

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None
    freeform: TextGrammar | None = None


@dataclass(frozen=True)
class ForcedTool:
    """tool_choice naming one function the model must call."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | ForcedTool


@dataclass(frozen=True)
class JsonObjectOutput:
    """The answer must be a JSON object."""


@dataclass(frozen=True)
class JsonSchemaOutput:
    """The answer must be JSON matching this schema."""

    schema: Mapping[str, Any]


OutputConstraint = JsonObjectOutput | JsonSchemaOutput


@dataclass(frozen=True)
class Sampling:
    """Sampling as the client asked; None leaves a field at the server's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    penalty_last_n: int | None = None  # tokens the penalties look back over (0: none, -1: the whole context)
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Limits:
    """How much to generate and when to stop, for each choice."""

    max_tokens: int | None = None  # None: what the context has left
    stop: tuple[str, ...] = ()
    n: int = 1


@dataclass(frozen=True)
class ChatRequest:
    """A chat to continue: messages, tools, an output constraint, sampling and limits."""

    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    limits: Limits = field(default_factory=Limits)
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    output: OutputConstraint | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    template_kwargs: Mapping[str, Any] | None = None
    session_key: str | None = None  # the client's session id, to keep its KV cache warm
    adapter: str | None = None  # a LoRA adapter applied on the model, by catalogue id


@dataclass(frozen=True)
class CompletionRequest:
    """Raw prompts to continue (text or token ids), each answered by `limits.n` choices."""

    prompts: tuple[str | tuple[int, ...], ...]
    sampling: Sampling = field(default_factory=Sampling)
    limits: Limits = field(default_factory=Limits)
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and k alternatives
    echo: bool = False
    suffix: str | None = None  # text after the insertion point (fill-in-the-middle)
    session_key: str | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    """Inputs to embed (text or token ids), optionally truncated to `dimensions`."""

    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None
    truncate: bool = False  # cut text inputs longer than the context to fit (their special tokens kept)
