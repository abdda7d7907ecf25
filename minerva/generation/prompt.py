"""Chat request → prompt text, grammar and output parser, chosen from the model's own template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from minerva.core.requests import ChatRequest, ForcedTool, JsonObjectOutput, JsonSchemaOutput, ToolSpec
from minerva.prompting.messages import add_tools_to_system, template_messages
from minerva.prompting.tool_prompt import HERMES_CALL_FORMAT
from minerva.prompting.template import detect_reasoning_format, detect_tool_format, render_chat_prompt, template_supports_tools
from minerva.engine.base import Engine
from minerva.core.errors import InvalidRequestError
from minerva.parsers.base import IncrementalParser, PassthroughParser


@dataclass(frozen=True)
class ChatPrompt:
    """What a chat request becomes before tokenization."""

    text: str
    grammar: str | None = None
    parser: str | None = None  # a parser registry name; None passes text through as content
    parser_options: dict[str, Any] = field(default_factory=dict)
    lead: str = ""  # the answer's start, written at the end of `text` (the parser reads it first)
    closing: str = ""  # the answer's end once its grammar is complete (the parser reads it last)


def make_parser(name: str | None, options: dict[str, Any]) -> IncrementalParser:
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
                HERMES_CALL_FORMAT.example(c["function"]["name"], json.dumps(c["function"]["arguments"], ensure_ascii=False))
                for c in message["tool_calls"]
            )
            text = (message.get("content") or "") + calls
            result.append({"role": "assistant", "content": text})
        elif message["role"] == "tool":
            result.append({"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            result.append(message)
    return result


def tool_dict(tool: ToolSpec) -> dict:
    """A tool in the shape chat templates and the tool prompt read."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _forced_tool(request: ChatRequest) -> str | None:
    choice = request.tool_choice
    if not isinstance(choice, ForcedTool):
        return None
    if choice.name not in {tool.name for tool in request.tools}:
        raise InvalidRequestError(f"tool_choice names '{choice.name}', which is not in tools", param="tool_choice")
    return choice.name


def build_chat_prompt(request: ChatRequest, engine: Engine) -> ChatPrompt:
    """Render messages (and tools) with the model's template; pick the grammar and parser to use."""
    from minerva.prompting import structured
    from minerva.prompting.tool_prompt import render_tools_for_prompt

    template = engine.info.chat_template
    messages = template_messages(request.messages)
    tools = [tool_dict(tool) for tool in request.tools] if request.tool_choice != "none" else []
    reasoning_format = detect_reasoning_format(template)  # "think", "harmony" or None
    native_format = detect_tool_format(template) if template_supports_tools(template) else None
    if native_format is None and reasoning_format == "harmony":
        native_format = "harmony"
    parser: str | None = reasoning_format
    grammar: str | None = None
    template_tools = None
    lead = closing = envelope_grammar = ""
    if tools:
        forced = _forced_tool(request)
        required = request.tool_choice == "required" or forced is not None
        parallel = request.parallel_tool_calls
        freeform = {tool.name: tool.freeform for tool in request.tools if tool.freeform is not None}
        if native_format:
            template_tools = tools
            parser = native_format
            if required and native_format == "hermes":
                mode = structured.ForcedFunction(forced) if forced else "required"
                grammar = structured.tool_call_grammar(tools, mode, parallel=parallel, freeform=freeform)
        else:
            messages = add_tools_to_system(inline_tool_history(messages), render_tools_for_prompt(tools))
            parser = "hermes"
            mode = structured.ForcedFunction(forced) if forced else ("required" if required else "auto_optional")
            grammar = structured.tool_call_grammar(tools, mode, parallel=parallel, freeform=freeform)
        if forced is not None and parser == "hermes":
            # one call to a named tool: its envelope is known, so the model writes only the arguments
            # the prompt stops before the space and the grammar ends with the call's brace, so the model
            # writes the tokens it would unprompted (" {", "}}") rather than split ones; the suffix after
            # that brace is always the same and is given to the parser, not generated
            whole = HERMES_CALL_FORMAT.lead(forced)
            lead, closing = whole.rstrip(), HERMES_CALL_FORMAT.suffix
            envelope_grammar = structured.forced_arguments_grammar(
                tools, forced, before=whole[len(lead):], after="}", freeform=freeform)
    elif not native_format:
        messages = inline_tool_history(messages)  # earlier calls and results, as text the model can read
    if grammar is None and isinstance(request.output, JsonObjectOutput):
        grammar = structured.json_object_grammar()
    elif grammar is None and isinstance(request.output, JsonSchemaOutput):
        grammar = structured.json_schema_to_gbnf(dict(request.output.schema))
    text = render_chat_prompt(
        template,
        messages,
        tools=template_tools,
        add_generation_prompt=True,
        bos_token=engine.bos_token,
        eos_token=engine.eos_token,
        template_kwargs=dict(request.template_kwargs) if request.template_kwargs is not None else None,
    )
    options: dict[str, Any] = {}
    if parser is not None and parser != "harmony" and text.rstrip().endswith("<think>"):
        options["starts_in_reasoning"] = True  # the template opened the thinking block itself
    elif lead:
        return ChatPrompt(text + lead, envelope_grammar, parser, options, lead=lead, closing=closing)
    return ChatPrompt(text, grammar, parser, options)
