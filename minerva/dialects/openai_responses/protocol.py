"""Responses API request bodies as pydantic models: validated at the HTTP edge, unknown fields accepted."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ContentPart(_Lenient):
    """One part of a message's content (input_text, output_text, input_image, refusal…)."""

    type: str = "input_text"
    text: str | None = None
    refusal: str | None = None


class ReasoningPart(_Lenient):
    """A reasoning item's content or summary part."""

    type: str = "reasoning_text"
    text: str = ""


class InputItem(_Lenient):
    """One entry of `input`: a message, a call, a call's output or a reasoning item (by `type`)."""

    type: str = "message"
    id: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | dict[str, Any] | None = None
    input: str | None = None
    output: str | list[ContentPart] | None = None
    summary: list[ReasoningPart] | None = None
    encrypted_content: str | None = None


class Tool(_Lenient):
    """One entry of `tools`: function (flat shape), custom, namespace (its own tools), or a hosted type."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    format: dict[str, Any] | None = None  # custom tools: {"type": "text"} or {"type": "grammar", ...}
    tools: list[Tool] | None = None  # namespace tools


class ToolChoiceObject(_Lenient):
    """`tool_choice` as an object: {"type": "function" | "custom", "name": ...}, or a hosted tool type."""

    type: str
    name: str | None = None
    namespace: str | None = None
    mode: str | None = None


class TextFormat(_Lenient):
    """`text.format`: text, json_object, or json_schema with its schema inline."""

    type: str = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Lenient):
    """`text`: the output format (and verbosity, accepted)."""

    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(_Lenient):
    """`reasoning`: effort and summary, accepted (the model reasons as its template says)."""

    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Lenient):
    """`POST /v1/responses`."""

    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = None
    seed: int | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = None
    stream: bool = False
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None

    def stores(self) -> bool:
        """Whether this response is kept for GET and previous_response_id (OpenAI's default: yes)."""
        return self.store is not False

    def wants_encrypted_reasoning(self) -> bool:
        """Whether reasoning items carry `encrypted_content` (Codex asks, to send them back statelessly)."""
        return "reasoning.encrypted_content" in (self.include or ())
