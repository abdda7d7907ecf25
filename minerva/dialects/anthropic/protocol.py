"""Anthropic Messages request bodies as pydantic models: validated at the HTTP edge, unknown fields accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InputMessage(_Lenient):
    """One entry of `messages`: content is a string or a list of content blocks (read in convert)."""

    role: str = Field(min_length=1)  # user, assistant, or system (Claude Code sends system turns inside messages)
    content: str | list[dict[str, Any]]


class SystemBlock(_Lenient):
    """A block of `system`; only text blocks exist there (cache_control and other keys are ignored)."""

    type: Literal["text"] = "text"
    text: str


class Tool(_Lenient):
    """One entry of `tools`: a client tool with its JSON Schema (server tools carry a `type` and no schema)."""

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    defer_loading: bool | None = None


class ToolChoice(_Lenient):
    """`tool_choice`: auto, any, tool (with `name`) or none; `disable_parallel_tool_use` allows one call."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Lenient):
    """`thinking`: enabled (with budget_tokens), disabled, or adaptive; other keys such as display ignored."""

    type: str
    budget_tokens: int | None = None


class Metadata(_Lenient):
    """`metadata`: user_id (Claude Code sends a JSON string) is used as a session key."""

    user_id: str | None = None


class CountTokensRequest(_Lenient):
    """POST /v1/messages/count_tokens: the prompt fields of a Messages request."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[SystemBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: Metadata | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages. max_tokens past the context is clamped, never refused."""

    max_tokens: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)


class ErrorDetail(BaseModel):
    """The inside of Anthropic's error envelope."""

    type: str
    message: str


class ErrorEnvelope(BaseModel):
    """`{"type": "error", "error": {"type", "message"}}`: every error under /v1/messages."""

    type: Literal["error"] = "error"
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` entries documenting Anthropic's error envelope for these statuses."""
    return {status: {"model": ErrorEnvelope, "description": "Error in Anthropic's envelope"} for status in statuses}
