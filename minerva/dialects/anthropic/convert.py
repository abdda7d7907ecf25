"""Anthropic Messages bodies → the core chat request (nothing here knows an engine)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from minerva.core import requests as core
from minerva.dialects.anthropic.protocol import CountTokensRequest, InputMessage, MessagesRequest, Tool
from minerva.prompting.messages import PART_SEPARATOR, InvalidMessagesError, UnsupportedContentError, content_text

logger = logging.getLogger(__name__)

BILLING_HEADER = "x-anthropic-billing-header"
"""Claude Code's first system block starts with this; its value changes per version, entry point and request."""

USER_ROLES = frozenset({"user", "ctx", "msg"})
"""Roles read as a user turn (Claude Code ≥ 2.1.154 may send ctx/msg turns, as vLLM found)."""

SYSTEM_SEPARATOR = "\n\n"


def _block_type(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    return kind if isinstance(kind, str) else "text"


def _text_of(blocks: str | list[dict[str, Any]], index: int) -> str:
    """Text blocks joined (images and anything but text refused with a 400 naming the message)."""
    if isinstance(blocks, str):
        return blocks
    for block in blocks:
        if not isinstance(block, Mapping):
            raise InvalidMessagesError(f"messages[{index}] content blocks must be objects.")
        kind = _block_type(block)
        if kind == "document":
            raise UnsupportedContentError(
                f"messages[{index}] contains a document block: documents are not supported on this server yet. "
                "Send text only.")
        if kind not in ("text", "image"):
            raise InvalidMessagesError(f"messages[{index}] has a content block of type {kind!r} where text is expected.")
    return content_text(blocks, index)  # its refusal of images is the one every dialect gives


def system_prompt(system: str | list | None, messages: list[InputMessage]) -> str:
    """`system` and the system turns inside `messages`, merged into one system prompt.

    Claude Code's `x-anthropic-billing-header: cc_version=…; cc_entrypoint=…; cch=…;` block is dropped:
    it changes from request to request, and at the head of the prompt it would defeat the prefix
    cache for everything after it (vLLM drops it too; llama-server blanks its hash).
    """
    parts: list[str] = []
    if isinstance(system, str):
        parts.append(system)
    elif system:
        parts += [block.text for block in system if not block.text.lstrip().startswith(BILLING_HEADER)]
    for index, message in enumerate(messages):
        if message.role == "system":
            parts.append(_text_of(message.content, index))
    return SYSTEM_SEPARATOR.join(part for part in parts if part)


def _tool_result(block: Mapping[str, Any], index: int, names: Mapping[str, str]) -> core.Message:
    """A tool_result block as a tool message (is_error marks the text, and reaches templates as is_error)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidMessagesError(f"messages[{index}] has a tool_result block without a tool_use_id.")
    content = block.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidMessagesError(f"messages[{index}] has a tool_result whose content is neither text nor blocks.")
    if isinstance(content, list):  # a tool search's result names the tools it loaded
        content = [{"type": "text", "text": f"Tool loaded: {part.get('tool_name')}"}
                   if isinstance(part, Mapping) and _block_type(part) == "tool_reference" else part for part in content]
    text = _text_of(content, index) if content is not None else ""
    is_error = block.get("is_error") is True
    return core.Message("tool", f"Error: {text}" if is_error else text, tool_call_id=call_id, name=names.get(call_id),
                        extra=(("is_error", True),) if is_error else ())


def _user_turns(content: str | list[dict[str, Any]], index: int, names: Mapping[str, str]) -> list[core.Message]:
    """A user turn: runs of text become user messages, tool_result blocks tool messages, in their order."""
    if isinstance(content, str):
        return [core.Message("user", content)]
    turns: list[core.Message] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if run:
            turns.append(core.Message("user", _text_of(list(run), index)))
            run.clear()

    for block in content:
        kind = _block_type(block)
        if kind == "tool_result":
            flush()
            turns.append(_tool_result(block, index, names))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # only assistant turns think; nothing to show the model
        elif kind == "tool_use":
            raise InvalidMessagesError(f"messages[{index}]: tool_use blocks belong in assistant turns.")
        else:
            run.append(block)
    flush()
    return turns


def _assistant_turn(content: str | list[dict[str, Any]], index: int) -> core.Message:
    """An assistant turn: text, thinking as reasoning, tool_use blocks as tool calls."""
    if isinstance(content, str):
        return core.Message("assistant", content)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[core.ToolCall] = []
    for block in content:
        kind = _block_type(block)
        if kind == "text":
            texts.append(_text_of([block], index))
        elif kind == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str) and thinking:
                thoughts.append(thinking)
        elif kind == "redacted_thinking":
            continue  # opaque to any model but the one that wrote it
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not name:
                raise InvalidMessagesError(f"messages[{index}] has a tool_use block without a name.")
            calls.append(core.ToolCall(name, block.get("input") or {}, call_id if isinstance(call_id, str) else None))
        else:
            _text_of([block], index)  # raises the typed 400 for this block type
    return core.Message("assistant", PART_SEPARATOR.join(texts), tool_calls=tuple(calls),
                        reasoning=PART_SEPARATOR.join(thoughts) if thoughts else None)


def chat_messages(body: CountTokensRequest) -> tuple[core.Message, ...]:
    """The conversation: one system message (merged), then the user and assistant turns in order."""
    names: dict[str, str] = {}
    turns: list[core.Message] = []
    system = system_prompt(body.system, body.messages)
    if system:
        turns.append(core.Message("system", system))
    for index, message in enumerate(body.messages):
        if message.role == "system":
            continue
        if message.role == "assistant":
            turn = _assistant_turn(message.content, index)
            names.update((call.id, call.name) for call in turn.tool_calls if call.id)
            turns.append(turn)
        elif message.role in USER_ROLES:
            turns += _user_turns(message.content, index, names)
        else:
            raise InvalidMessagesError(
                f"messages[{index}].role {message.role!r} is not one of 'user', 'assistant', 'system'.")
    if not any(turn.role != "system" for turn in turns):
        raise InvalidMessagesError("messages must hold at least one user or assistant turn.")
    return tuple(turns)


def chat_tools(tools: list[Tool] | None) -> tuple[core.ToolSpec, ...]:
    """Client tools with their schemas; deferred tools and Anthropic's server tools are left out (logged)."""
    specs = []
    for tool in tools or ():
        if tool.defer_loading:
            continue  # not in the model's context until a tool search loads it, as on Anthropic's API
        if tool.input_schema is None and tool.type not in (None, "custom"):
            logger.info("anthropic: tool %r of type %r runs on Anthropic's servers; left out", tool.name, tool.type)
            continue
        specs.append(core.ToolSpec(tool.name, tool.description, tool.input_schema or {"type": "object"}))
    return tuple(specs)


def _tool_choice(body: CountTokensRequest) -> tuple[core.ToolChoice, bool]:
    choice = body.tool_choice
    if choice is None:
        return "auto", True
    parallel = choice.disable_parallel_tool_use is not True
    if choice.type == "any":
        return "required", parallel
    if choice.type == "tool":
        if not choice.name:
            raise InvalidMessagesError("tool_choice of type 'tool' needs the tool's name.")
        return core.ForcedTool(choice.name), parallel
    return choice.type, parallel  # auto or none


def _template_kwargs(body: CountTokensRequest) -> dict[str, Any] | None:
    """thinking enabled/disabled reaches templates that switch reasoning (Qwen3's enable_thinking)."""
    kind = body.thinking.type if body.thinking is not None else None
    return {"enable_thinking": kind == "enabled"} if kind in ("enabled", "disabled") else None


def session_key(body: CountTokensRequest, header: str | None) -> str | None:
    """The prefix-cache session: Claude Code's X-Claude-Code-Session-Id, else metadata.user_id."""
    return header or (body.metadata.user_id if body.metadata is not None else None) or None


def chat_request_from(body: CountTokensRequest, session: str | None) -> core.ChatRequest:
    """A Messages (or count_tokens) body as the core chat request."""
    tool_choice, parallel = _tool_choice(body)
    request = core.ChatRequest(
        messages=chat_messages(body),
        tools=chat_tools(body.tools),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        template_kwargs=_template_kwargs(body),
        session_key=session,
    )
    if not isinstance(body, MessagesRequest):
        return request
    stops = tuple(stop for stop in body.stop_sequences or () if stop)
    sampling = core.Sampling(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    return dataclasses.replace(request, sampling=sampling, limits=core.Limits(body.max_tokens, stops))
