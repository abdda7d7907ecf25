"""Chat request → prompt text, grammar and output parser, chosen from the model's own template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from minerva.chat.messages import add_tools_to_system, normalize_messages
from minerva.chat.template import detect_reasoning_format, detect_tool_format, render_chat_prompt, template_supports_tools
from minerva.engine.base import Engine
from minerva.errors import InvalidRequestError
from minerva.parsers.base import ContentDelta, ParsedDelta
from minerva.protocol.requests import ChatCompletionRequest


@dataclass(frozen=True)
class ChatPrompt:
    """What a chat request becomes before tokenization."""

    text: str
    grammar: str | None = None
    parser: str | None = None  # a parser registry name; None passes text through as content
    parser_options: dict[str, Any] = field(default_factory=dict)


class PassthroughParser:
    """All generated text is content (no tools, no reasoning markers)."""

    def feed(self, text: str) -> list[ParsedDelta]:
        """Content as it comes."""
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[ParsedDelta]:
        """Nothing is ever held back."""
        return []


def make_parser(name: str | None, options: dict[str, Any]):
    """A fresh streaming parser for one response."""
    if name is None:
        return PassthroughParser()
    from minerva.parsers.registry import get_parser

    return get_parser(name)(**options)


def inline_tool_history(messages: list[dict]) -> list[dict]:
    """For templates that know no tools: earlier calls and results become text the model can read."""
    result = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = "".join(
                "<tool_call>" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                           ensure_ascii=False) + "</tool_call>"
                for c in message["tool_calls"]
            )
            text = (message.get("content") or "") + calls
            result.append({"role": "assistant", "content": text})
        elif message["role"] == "tool":
            result.append({"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            result.append(message)
    return result


def _tool_dicts(request: ChatCompletionRequest) -> list[dict] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in request.tools]


def _forced_tool(request: ChatCompletionRequest, tools: list[dict]) -> str | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return None
    names = {t["function"]["name"] for t in tools}
    if choice.function.name not in names:
        raise InvalidRequestError(f"tool_choice names '{choice.function.name}', which is not in tools",
                                  param="tool_choice")
    return choice.function.name


def build_chat_prompt(request: ChatCompletionRequest, engine: Engine) -> ChatPrompt:
    """Render messages (and tools) with the model's template; pick the grammar and parser to use."""
    from minerva.chat import structured
    from minerva.chat.tool_prompt import render_tools_for_prompt

    template = engine.info.chat_template
    messages = normalize_messages(request.message_dicts())
    tools = _tool_dicts(request)
    reasoning_format = detect_reasoning_format(template)  # "think", "harmony" or None
    native_format = detect_tool_format(template) if template_supports_tools(template) else None
    if native_format is None and reasoning_format == "harmony":
        native_format = "harmony"
    parser: str | None = reasoning_format
    grammar: str | None = None
    template_tools = None
    if tools:
        forced = _forced_tool(request, tools)
        required = request.tool_choice == "required" or forced is not None
        parallel = request.parallel_tool_calls is not False
        if native_format:
            template_tools = tools
            parser = native_format
            if required and native_format == "hermes":
                mode = structured.ForcedFunction(forced) if forced else "required"
                grammar = structured.tool_call_grammar(tools, mode, parallel=parallel)
        else:
            messages = add_tools_to_system(inline_tool_history(messages), render_tools_for_prompt(tools))
            parser = "hermes"
            mode = structured.ForcedFunction(forced) if forced else ("required" if required else "auto_optional")
            grammar = structured.tool_call_grammar(tools, mode, parallel=parallel)
    elif request.tools is not None or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        if not native_format:
            messages = inline_tool_history(messages)
    if grammar is None and request.response_format is not None and request.response_format.type != "text":
        if request.response_format.type == "json_object":
            grammar = structured.json_object_grammar()
        else:
            grammar = structured.json_schema_to_gbnf(request.response_format.json_schema.schema_)  # type: ignore[union-attr]
    text = render_chat_prompt(
        template,
        messages,
        tools=template_tools,
        add_generation_prompt=True,
        bos_token=engine.bos_token,
        eos_token=engine.eos_token,
        template_kwargs=request.chat_template_kwargs,
    )
    options: dict[str, Any] = {}
    if parser is not None and parser != "harmony" and text.rstrip().endswith("<think>"):
        options["starts_in_reasoning"] = True  # the template opened the thinking block itself
    return ChatPrompt(text, grammar, parser, options)
