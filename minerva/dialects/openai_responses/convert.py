"""A Responses request (plus a stored conversation) → the core ChatRequest (nothing here knows an engine)."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field

from minerva.core import requests as core
from minerva.core.errors import InvalidRequestError
from minerva.dialects.openai_responses.protocol import ContentPart, InputItem, ResponsesRequest, ToolChoiceObject
from minerva.dialects.openai_responses.tools import CUSTOM_INPUT, ToolSet, flat_name, tool_set

logger = logging.getLogger(__name__)

ENCRYPTED_PREFIX = "minerva:"
"""Our reasoning items' `encrypted_content`: this prefix and the reasoning text in base64 (not secret)."""

TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


@dataclass(frozen=True)
class Converted:
    """The core request, the tools by core name, and the conversation to store (without instructions)."""

    request: core.ChatRequest
    tools: ToolSet
    conversation: tuple[core.Message, ...]


def encrypt_reasoning(text: str) -> str:
    """The `encrypted_content` of a reasoning item we produce."""
    return ENCRYPTED_PREFIX + base64.b64encode(text.encode()).decode("ascii")


def decrypt_reasoning(value: str | None) -> str:
    """The reasoning text of an `encrypted_content` we produced; "" for anyone else's."""
    if not value or not value.startswith(ENCRYPTED_PREFIX):
        return ""
    try:
        return base64.b64decode(value[len(ENCRYPTED_PREFIX):], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _part_text(part: ContentPart, param: str) -> str:
    if part.type in TEXT_PARTS:
        return part.text or ""
    if part.type == "refusal":
        return part.refusal or ""
    if part.type == "input_image":
        raise InvalidRequestError(f"{param} is an input_image: images are not supported by this server. "
                                  "Send text only.", param=param, code="unsupported_content")
    if part.type == "input_file":
        raise InvalidRequestError(f"{param} is an input_file: file input is not supported by this server. "
                                  "Send text only.", param=param, code="unsupported_content")
    raise InvalidRequestError(f"{param} has a content part of unknown type {part.type!r}.", param=param,
                              code="invalid_value")


def _text(content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(_part_text(part, f"{param}[{j}]") for j, part in enumerate(content))


def _reasoning_text(item: InputItem) -> str:
    parts = item.content if isinstance(item.content, list) else []
    text = "".join(p.text or "" for p in parts)
    return text or decrypt_reasoning(item.encrypted_content) or "".join(p.text for p in item.summary or ())


@dataclass
class _Turn:
    """An assistant turn being assembled from consecutive reasoning, message and call items."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[core.ToolCall] = field(default_factory=list)

    def message(self) -> core.Message | None:
        if not (self.content or self.reasoning or self.calls):
            return None
        return core.Message("assistant", "".join(self.content), tuple(self.calls),
                            reasoning="".join(self.reasoning) or None)


class _Conversation:
    """Input items → core messages: an assistant's reasoning, text and calls become one message."""

    def __init__(self) -> None:
        self.messages: list[core.Message] = []
        self.turn = _Turn()
        self.call_names: dict[str, str] = {}

    def flush(self) -> None:
        message = self.turn.message()
        if message is not None:
            self.messages.append(message)
        self.turn = _Turn()

    def add(self, item: InputItem, param: str) -> None:
        kind = item.type
        if kind == "message":
            role = ROLES.get(item.role or "")
            if role is None:
                raise InvalidRequestError(f"{param}.role {item.role!r} is not one of 'user', 'assistant', "
                                          "'system', 'developer'.", param=f"{param}.role", code="invalid_value")
            text = _text(item.content, f"{param}.content")
            if role == "assistant":
                if self.turn.calls:
                    self.flush()
                self.turn.content.append(text)
                return
            self.flush()
            self.messages.append(core.Message(role, text))  # type: ignore[arg-type]
        elif kind == "reasoning":
            if self.turn.content or self.turn.calls:
                self.flush()
            self.turn.reasoning.append(_reasoning_text(item))
        elif kind in ("function_call", "custom_tool_call"):
            name = flat_name(item.name or "", item.namespace)
            arguments = item.arguments if kind == "function_call" else {CUSTOM_INPUT: item.input or ""}
            self.turn.calls.append(core.ToolCall(name, arguments if arguments is not None else "{}", item.call_id))
            if item.call_id:
                self.call_names[item.call_id] = name
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self.flush()
            output = item.output if item.output is not None else ""
            self.messages.append(core.Message("tool", _text(output, f"{param}.output"), tool_call_id=item.call_id,
                                              name=self.call_names.get(item.call_id or "")))
        else:
            logger.info("skipping a Responses input item of type %r", kind)

    def finish(self) -> tuple[core.Message, ...]:
        self.flush()
        return tuple(self.messages)


def conversation_from(body: ResponsesRequest) -> tuple[core.Message, ...]:
    """The request's `input` as core messages (instructions not included)."""
    if isinstance(body.input, str):
        return (core.Message("user", body.input),)
    conversation = _Conversation()
    for index, item in enumerate(body.input):
        conversation.add(item, f"input[{index}]")
    return conversation.finish()


def _with_instructions(instructions: str | None, messages: tuple[core.Message, ...]) -> tuple[core.Message, ...]:
    """Instructions and the leading system messages merged into one system message, first."""
    leading = [instructions] if instructions else []
    rest = list(messages)
    while rest and rest[0].role == "system":
        leading.append(rest.pop(0).content)
    system = (core.Message("system", "\n\n".join(leading)),) if leading else ()
    return system + tuple(rest)


def _tool_choice(choice: str | ToolChoiceObject | None, tools: ToolSet) -> core.ToolChoice:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice in ("auto", "none", "required"):
            return choice  # type: ignore[return-value]
        raise InvalidRequestError(f"tool_choice {choice!r} is not one of 'auto', 'none', 'required'.",
                                  param="tool_choice", code="invalid_value")
    if choice.type in ("function", "custom") and choice.name:
        return core.ForcedTool(flat_name(choice.name, choice.namespace))
    if choice.type == "allowed_tools":
        return "required" if choice.mode == "required" else "auto"
    logger.info("tool_choice of type %r names a tool minerva cannot run: treated as auto", choice.type)
    return "auto"


def _output(body: ResponsesRequest) -> core.OutputConstraint | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return core.JsonObjectOutput()
    if fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise InvalidRequestError("text.format json_schema needs a schema", param="text.format.schema",
                                      code="invalid_value")
        return core.JsonSchemaOutput(fmt.schema_)
    raise InvalidRequestError(f"text.format type {fmt.type!r} is not one of 'text', 'json_object', "
                              "'json_schema'.", param="text.format.type", code="invalid_value")


def chat_request_from(body: ResponsesRequest, history: tuple[core.Message, ...],
                      session_key: str | None) -> Converted:
    """A Responses body, continuing `history` (a stored response's conversation), as the core chat request."""
    conversation = history + conversation_from(body)
    if not conversation:
        raise InvalidRequestError("input must not be empty", param="input", code="invalid_value")
    tools = tool_set(body.tools)
    request = core.ChatRequest(
        messages=_with_instructions(body.instructions, conversation),
        sampling=core.Sampling(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=body.seed),
        limits=core.Limits(max_tokens=body.max_output_tokens),
        tools=tools.specs,
        tool_choice=_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output=_output(body),
        session_key=session_key,
    )
    return Converted(request, tools, conversation)
