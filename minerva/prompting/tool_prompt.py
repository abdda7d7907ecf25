"""Tools described in plain text, for chat templates that know no tools (SmolLM2's).

The block lists each tool as a compact TypeScript-like signature with the first sentence of its
description, and tells the model to call with ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>``, which the hermes parser reads and ``structured.tool_call_grammar`` can enforce.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from minerva.prompting.gbnf import gbnf_literal

MAX_DESCRIPTION_CHARS = 160
MAX_TYPE_DEPTH = 3


@dataclass(frozen=True)
class ToolCallFormat:
    """How a prompted model writes one call: ``prefix{"name": "N", "arguments": {...}}suffix``."""

    prefix: str = "<tool_call>"
    suffix: str = "</tool_call>"
    separator: str = "\n"

    def example(self, name: str = "TOOL_NAME", arguments: str = '{"ARG": "VALUE"}') -> str:
        """One call written in this format."""
        return f'{self.prefix}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}{self.suffix}'

    def lead(self, name: str) -> str:
        """A call to ``name`` up to its arguments object: what a forced call starts with."""
        return f'{self.prefix}{{"name": {json.dumps(name)}, "arguments": '

    def closing(self) -> str:
        """What follows a call's arguments object."""
        return "}" + self.suffix

    def grammar_call(self, alternatives: Sequence[tuple[str, str]]) -> str:
        """GBNF for one call to any of ``(name, arguments_rule)``; the shared head is factored."""
        head = gbnf_literal(self.prefix + '{"name": ')
        options = " | ".join(
            gbnf_literal(self.lead(name)[len(self.prefix + '{"name": '):]) + f" {rule}"
            for name, rule in alternatives
        )
        return f"{head} ( {options} ) {gbnf_literal(self.closing())}"


HERMES_CALL_FORMAT = ToolCallFormat()


def first_sentence(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """The first sentence (or line) of a description, cut at ``limit`` characters."""
    text = " ".join(text.strip().lstrip("-*• ").split("\n", 1)[0].split())
    match = re.search(r"(?<=[.!?])\s", text)
    sentence = text[: match.start()] if match else text
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def type_signature(schema: object, depth: int = 0) -> str:
    """A TypeScript-like type for a JSON Schema: ``string``, ``"a"|"b"``, ``{x?: number}[]``."""
    if not isinstance(schema, Mapping):
        return "any"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "|".join(json.dumps(value) for value in schema["enum"])
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            return "|".join(type_signature(branch, depth) for branch in schema[keyword])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(type_signature({**schema, "type": k}, depth) for k in kind)
    if kind == "array" or "items" in schema:
        item = type_signature(schema.get("items", {}), depth + 1)
        return f"({item})[]" if "|" in item else f"{item}[]"
    if kind == "object" or "properties" in schema:
        if depth >= MAX_TYPE_DEPTH or not schema.get("properties"):
            return "object"
        return "{" + object_fields(schema, depth + 1) + "}"
    if kind == "integer":
        return "integer"
    return kind if isinstance(kind, str) else "any"


def object_fields(schema: Mapping, depth: int = 0) -> str:
    """``name: type, other?: type`` for an object schema's properties (``?`` marks optional)."""
    required = set(schema.get("required") or ())
    fields = []
    for name, subschema in (schema.get("properties") or {}).items():
        mark = "" if name in required else "?"
        fields.append(f"{name}{mark}: {type_signature(subschema, depth)}")
    return ", ".join(fields)


def render_tool(tool: Mapping) -> str:
    """One line: ``- name(arg: type, opt?: type): first sentence of the description``."""
    function = tool.get("function", tool)
    parameters = function.get("parameters") or {}
    description = first_sentence(function.get("description") or "")
    line = f"- {function['name']}({object_fields(parameters)})"
    return f"{line}: {description}" if description else line


def render_tools_for_prompt(
    tools: Sequence[Mapping], call_format: ToolCallFormat = HERMES_CALL_FORMAT
) -> str:
    """A compact text block listing ``tools`` and how to call them, for the system prompt."""
    lines = ["# Tools", "You can call these tools (? marks an optional argument):"]
    lines += [render_tool(tool) for tool in tools]
    lines += [
        "To call a tool, reply with exactly this and nothing after it:",
        call_format.example(),
        "Use one line per call. If no tool is needed, answer in plain text.",
    ]
    return "\n".join(lines)
