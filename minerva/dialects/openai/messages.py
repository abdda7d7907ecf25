"""OpenAI chat messages (as plain dicts) → core messages, with a typed 400 for what cannot be read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from minerva.core.requests import Message, ToolCall
from minerva.prompting.messages import ROLE_ALIASES, TEMPLATE_ROLES, InvalidMessagesError, content_text, template_messages

_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content"})


def _tool_call(call: Any, index: int) -> ToolCall:
    if not isinstance(call, Mapping):
        raise InvalidMessagesError(f"messages[{index}].tool_calls entries must be objects.")
    function = call.get("function")
    function = function if isinstance(function, Mapping) else {}
    call_id = call.get("id")
    return ToolCall(name=str(function.get("name") or ""), arguments=function.get("arguments", {}),
                    id=call_id if isinstance(call_id, str) else None)


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def message_from_openai(message: Any, index: int) -> Message:
    """One OpenAI message → a core message (developer becomes system, content parts become text)."""
    if not isinstance(message, Mapping):
        raise InvalidMessagesError(f"messages[{index}] must be an object, got {type(message).__name__}.")
    role = message.get("role")
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in TEMPLATE_ROLES:
        raise InvalidMessagesError(
            f"messages[{index}].role {message.get('role')!r} is not one of "
            "'system', 'developer', 'user', 'assistant', 'tool'."
        )
    calls: tuple[ToolCall, ...] = ()
    raw_calls = message.get("tool_calls")
    if role == "assistant" and raw_calls:
        if not isinstance(raw_calls, list | tuple):
            raise InvalidMessagesError(f"messages[{index}].tool_calls must be a list.")
        calls = tuple(_tool_call(call, index) for call in raw_calls)
    extra = tuple((key, value) for key, value in message.items() if key not in _FIELDS)
    if role != "assistant" and raw_calls is not None:
        extra += (("tool_calls", raw_calls),)  # not a call history: passed to the template as sent
    return Message(
        role=role,  # type: ignore[arg-type]
        content=content_text(message.get("content"), index),
        tool_calls=calls,
        tool_call_id=_optional_text(message.get("tool_call_id")),
        name=_optional_text(message.get("name")),
        reasoning=_optional_text(message.get("reasoning_content")),
        extra=extra,
    )


def messages_from_openai(messages: Any) -> tuple[Message, ...]:
    """OpenAI chat messages → core messages; a typed 400 (param "messages") for anything unreadable."""
    if not isinstance(messages, list | tuple) or not messages:
        raise InvalidMessagesError("messages must be a non-empty list of chat messages.")
    return tuple(message_from_openai(message, index) for index, message in enumerate(messages))


def normalize_messages(messages: Any) -> list[dict]:
    """OpenAI chat messages → the plain dicts chat templates read (string content, template roles, parsed args)."""
    return template_messages(messages_from_openai(messages))
