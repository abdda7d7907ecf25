"""Ollama request bodies as pydantic models: validated at the HTTP edge, unknown fields accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from minerva.core.errors import InvalidRequestError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


KeepAlive = float | str | None
"""A duration: seconds as a number, or Go's "5m", "30s", "1h30m"; negative is forever, 0 unloads after."""

ThinkLevel = Literal["high", "medium", "low", "max"]


class Options(_Lenient):
    """`options`: the sampling and limit fields minerva maps; any other option is accepted and ignored (logged)."""

    num_predict: int | None = None  # -1: the server's default bound, -2: up to the end of the context
    num_ctx: int | None = Field(default=None, ge=0)  # load time in Ollama; minerva keeps the loaded context
    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None  # negative: a fresh random seed, as Ollama's -1
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(default=None, ge=0.0)
    repeat_last_n: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ToolCallFunction(_Lenient):
    """A tool call's function: its name and arguments as a JSON object (a JSON string is accepted too)."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str | None = None
    index: int | None = None


class ToolCall(_Lenient):
    """One entry of an assistant message's `tool_calls`."""

    id: str | None = None
    function: ToolCallFunction


class Message(_Lenient):
    """One chat turn: content is text; a tool turn names its tool in `tool_name`."""

    role: str = Field(min_length=1)
    content: str | None = ""
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ToolFunction(_Lenient):
    """A tool's function: name, description and JSON Schema parameters."""

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    """One entry of `tools`."""

    type: Literal["function"] = "function"
    function: ToolFunction


class _Generation(_Lenient):
    """What /api/chat and /api/generate share."""

    model: str = Field(min_length=1)
    stream: bool | None = None  # None streams, as on Ollama
    format: str | dict[str, Any] | None = None  # "json", or a JSON schema
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: bool | ThinkLevel | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    truncate: bool | None = None  # minerva never truncates a prompt: one that does not fit is a 400
    shift: bool | None = None


class ChatRequest(_Generation):
    """POST /api/chat. No messages at all only loads (or with keep_alive 0 unloads) the model."""

    messages: list[Message] | None = None
    tools: list[Tool] | None = None


class GenerateRequest(_Generation):
    """POST /api/generate. No prompt at all only loads (or with keep_alive 0 unloads) the model."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[Any] | None = None


class EmbedRequest(_Lenient):
    """POST /api/embed: one text or a list of texts; `truncate` (default true) cuts inputs to the context."""

    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Lenient):
    """POST /api/embeddings (the older endpoint): one prompt, one vector, not normalised."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class _Named(_Lenient):
    """Bodies that name a model as `model` or, as older clients do, `name`."""

    model: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_name(self) -> _Named:
        if not (self.model or self.name):
            raise InvalidRequestError("model is required", param="model")
        return self

    @property
    def model_name(self) -> str:
        """The model the body names."""
        return self.model or self.name or ""


class ShowRequest(_Named):
    """POST /api/show; `verbose` adds the tensors and the long metadata arrays."""

    verbose: bool = False


class DeleteRequest(_Named):
    """DELETE /api/delete."""


class CopyRequest(_Lenient):
    """POST /api/copy."""

    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class ErrorEnvelope(BaseModel):
    """`{"error": "..."}`: every error under /api/."""

    error: str


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` entries documenting Ollama's error envelope for these statuses."""
    return {status: {"model": ErrorEnvelope, "description": "Error in Ollama's envelope"} for status in statuses}


GENERATION_RESPONSES = {
    200: {"description": "One JSON object, or unless `stream` is false one JSON object per line (NDJSON)",
          "content": {"application/json": {}, "application/x-ndjson": {}}},
    **error_responses(400, 401, 404, 413, 429, 500, 503),
}
