"""Llama 3.1+ tool calls: a bare ``{"name": ..., "parameters": {...}}`` or after ``<|python_tag|>``.

With JSON tool calling in its template, Llama 3.1/3.2/3.3 answers a call with the JSON object
alone (several separated by ``;``); the ``<|python_tag|>`` form is used with built-in tools.
"""

from __future__ import annotations

from minerva.parsers.json_scan import FoundCall, calls_from_json, json_call_head
from minerva.parsers.markup import MarkupParser, ToolMarker, ToolSyntax

PYTHON_TAG = ToolMarker(open="<|python_tag|>", close=None)


def parse_llama3_region(body: str, marker: ToolMarker | None) -> list[FoundCall] | None:
    """The call in one JSON value (``parameters`` or ``arguments``), or None."""
    return calls_from_json(body.strip())


LLAMA3_SYNTAX = ToolSyntax(
    markers=(PYTHON_TAG,), parse_region=parse_llama3_region, bare_json=True, separators=";",
    call_head=json_call_head,
)


class Llama3Parser(MarkupParser):
    """Llama 3 JSON tool calls; no reasoning tags."""

    tool_syntax = LLAMA3_SYNTAX
    default_reasoning = None


PARSER = Llama3Parser
