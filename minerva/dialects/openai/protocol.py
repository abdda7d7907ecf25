"""OpenAI request bodies as pydantic models: validated at the HTTP edge, unknown fields accepted."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StreamOptions(_Lenient):
    """`stream_options` of a streaming request."""

    include_usage: bool = False


class FunctionDefinition(_Lenient):
    """A tool's function: name, description and JSON Schema parameters."""

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Lenient):
    """One entry of `tools`."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoiceFunction(_Lenient):
    """The function a named tool_choice forces."""

    name: str


class NamedToolChoice(_Lenient):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"] = "function"
    function: NamedToolChoiceFunction


class JsonSchemaFormat(_Lenient):
    """The `json_schema` member of response_format."""

    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextFormat(_Lenient):
    """`response_format: {"type": "text"}`: no constraint."""

    type: Literal["text"]


class JsonObjectFormat(_Lenient):
    """`response_format: {"type": "json_object"}`: any JSON object."""

    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Lenient):
    """`response_format: {"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]


class SamplingFields(_Lenient):
    """Sampling fields shared by chat and completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = Field(default=None, json_schema_extra={"propertyNames": {"pattern": "^-?[0-9]+$"}, "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias values must be between -100 and 100")
        return value

    def stop_list(self) -> list[str]:
        """`stop` as a list without empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatMessage(_Lenient):
    """One chat message; role-specific fields (tool_calls, tool_call_id, name…) pass through."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, with only the fields the client sent."""
        return [message.model_dump(exclude_unset=True) for message in self.messages]

    def token_budget(self) -> int | None:
        """max_completion_tokens, else max_tokens."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt_nonempty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each a string or a token-id list."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


class EmbeddingRequest(_Lenient):
    """POST /v1/embeddings."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class ErrorBody(BaseModel):
    """The inside of the OpenAI error envelope."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """`{"error": {...}}`: every error minerva answers."""

    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` entries documenting the error envelope for these statuses."""
    return {status: {"model": ErrorEnvelope, "description": "Error in the OpenAI envelope"} for status in statuses}


STREAMING_RESPONSE = {
    200: {"description": "A completion object, or with `stream: true` server-sent events of chunks",
          "content": {"application/json": {}, "text/event-stream": {}}},
}
