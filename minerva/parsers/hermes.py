"""Hermes / Qwen tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Qwen2.5, Qwen3, Hermes 2/3 and our own tool prompt (minerva.prompting.tool_prompt) write calls this
way; Qwen3 also thinks in ``<think>`` tags, so reasoning is on by default.
"""

from __future__ import annotations

from minerva.parsers.json_scan import FoundCall, calls_from_json, json_call_head
from minerva.parsers.markup import MarkupParser, ToolMarker, ToolSyntax
from minerva.parsers.think import THINK

TOOL_CALL = ToolMarker(open="<tool_call>", close="</tool_call>")


def parse_hermes_region(body: str, marker: ToolMarker | None) -> list[FoundCall] | None:
    """The calls in the text between ``<tool_call>`` and ``</tool_call>``, or None."""
    return calls_from_json(body.strip())


HERMES_SYNTAX = ToolSyntax(markers=(TOOL_CALL,), parse_region=parse_hermes_region, call_head=json_call_head)


class HermesParser(MarkupParser):
    """Hermes-style tool calls, with ``<think>`` reasoning."""

    tool_syntax = HERMES_SYNTAX
    default_reasoning = THINK


PARSER = HermesParser
