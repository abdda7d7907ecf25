"""Chat messages in the plain shape Hugging Face chat templates expect, and content-part flattening.

Pure functions: every result is a fresh structure and the caller's messages are never mutated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from minerva.core.errors import InvalidRequestError
from minerva.core.requests import Message, ToolCall

TEMPLATE_ROLES = frozenset({"system", "user", "assistant", "tool"})
"""Roles chat templates know; every normalized message carries one of these."""

ROLE_ALIASES = {"developer": "system"}
"""OpenAI roles that templates know under another name."""

TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal"})
"""Content part types whose text we keep (refusal parts carry their text under ``refusal``)."""

IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
AUDIO_PART_TYPES = frozenset({"input_audio", "audio"})
FILE_PART_TYPES = frozenset({"file", "input_file"})

PART_SEPARATOR = "\n"
"""Text parts of one message are joined with this, as vLLM joins them for string templates."""


class InvalidMessagesError(InvalidRequestError):
    """The request's messages are not a chat we can render (400, param "messages")."""

    code = "invalid_messages"

    def __init__(self, message: str):
        super().__init__(message, param="messages")


class UnsupportedContentError(InvalidRequestError):
    """A message carries content this server cannot feed the model yet, e.g. images (400)."""

    code = "unsupported_content"

    def __init__(self, message: str):
        super().__init__(message, param="messages")


def _part_text(part: Any, index: int) -> str:
    """The text of one content part, or a typed 400 for a part we cannot use."""
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        raise InvalidMessagesError(
            f"messages[{index}].content parts must be objects, got {type(part).__name__}."
        )
    part_type = part.get("type", "text")
    if part_type in TEXT_PART_TYPES:
        text = part.get("refusal") if part_type == "refusal" else part.get("text")
        if text is None:
            return ""
        if not isinstance(text, str):
            raise InvalidMessagesError(
                f"messages[{index}] has a {part_type!r} part whose text is not a string."
            )
        return text
    if part_type in IMAGE_PART_TYPES:
        raise UnsupportedContentError(
            f"messages[{index}] contains an image ({part_type!r} part): images are not supported "
            "by this model on this server yet. Send text only."
        )
    if part_type in AUDIO_PART_TYPES:
        raise UnsupportedContentError(
            f"messages[{index}] contains audio ({part_type!r} part): audio input is not supported "
            "by this model on this server yet. Send text only."
        )
    if part_type in FILE_PART_TYPES:
        raise UnsupportedContentError(
            f"messages[{index}] contains a file ({part_type!r} part): file input is not supported "
            "on this server yet. Send text only."
        )
    raise InvalidMessagesError(
        f"messages[{index}] has a content part of unknown type {part_type!r}."
    )


def content_text(content: Any, index: int = 0) -> str:
    """A message's content as one string: None → "", a list of parts → their texts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return PART_SEPARATOR.join(_part_text(part, index) for part in content)
    if isinstance(content, Mapping):
        return _part_text(content, index)
    raise InvalidMessagesError(
        f"messages[{index}].content must be a string or a list of content parts, "
        f"got {type(content).__name__}."
    )


def parse_tool_arguments(arguments: Any) -> Any:
    """Tool-call arguments as templates want them: a JSON object string → dict, else unchanged."""
    if not isinstance(arguments, str):
        return _copy(arguments)
    if not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts and lists rebuilt, scalars shared)."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


def _template_call(call: ToolCall) -> dict:
    function = {"name": call.name, "arguments": parse_tool_arguments(call.arguments if call.arguments is not None else {})}
    return {"id": call.id, "type": "function", "function": function} if call.id is not None else \
        {"type": "function", "function": function}


def template_message(message: Message) -> dict:
    """One core message in the shape Hugging Face chat templates read (a fresh dict)."""
    result: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        result["tool_calls"] = [_template_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        result["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        result["name"] = message.name
    if message.reasoning is not None:
        result["reasoning_content"] = message.reasoning
    for key, value in message.extra:
        result.setdefault(key, _copy(value))
    return result


def template_messages(messages: Sequence[Message]) -> list[dict]:
    """Core messages → the plain dicts chat templates expect; refuses an empty conversation."""
    if not messages:
        raise InvalidMessagesError("messages must be a non-empty list of chat messages.")
    return [template_message(message) for message in messages]


def add_tools_to_system(messages: list[dict], tools_text: str) -> list[dict]:
    """Messages with tools_text appended to the first system message, or a new one prepended."""
    if not tools_text:
        return [_copy(message) for message in messages]
    if (
        messages
        and isinstance(messages[0], Mapping)
        and messages[0].get("role") in ("system", "developer")
    ):
        first = _copy(messages[0])
        existing = content_text(first.get("content"))
        first["content"] = f"{existing}\n\n{tools_text}" if existing else tools_text
        return [first, *(_copy(message) for message in messages[1:])]
    return [{"role": "system", "content": tools_text}, *(_copy(message) for message in messages)]
