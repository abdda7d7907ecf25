"""Generic fallback: a bare JSON call object (or array of them) where an answer starts.

For models with no native tool format that answer ``{"name": ..., "arguments": {...}}`` directly.
An object is a call only if its keys are those of a call (name, arguments/parameters, id, type).
"""

from __future__ import annotations

from minerva.parsers.json_scan import FoundCall, calls_from_json, json_call_head
from minerva.parsers.markup import MarkupParser, ToolMarker, ToolSyntax


def parse_json_region(body: str, marker: ToolMarker | None) -> list[FoundCall] | None:
    """The calls in one JSON value, or None."""
    return calls_from_json(body.strip())


JSON_SYNTAX = ToolSyntax(markers=(), parse_region=parse_json_region, bare_json=True, call_head=json_call_head)


class JsonCallParser(MarkupParser):
    """Bare JSON tool calls; no reasoning tags."""

    tool_syntax = JSON_SYNTAX
    default_reasoning = None


PARSER = JsonCallParser
