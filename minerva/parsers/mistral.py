"""Mistral tool calls: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (v3, Nemo) and
``[TOOL_CALLS]name[ARGS]{...}`` (v11+, optionally ``name[CALL_ID]id[ARGS]{...}``).

Magistral reasons between ``[THINK]`` and ``[/THINK]``.
"""

from __future__ import annotations

import json

from minerva.parsers.json_scan import FoundCall, calls_from_json, decode_arguments
from minerva.parsers.markup import MarkupParser, ReasoningMarkers, ToolMarker, ToolSyntax

TOOL_CALLS = ToolMarker(open="[TOOL_CALLS]", close=None)
MISTRAL_THINK = ReasoningMarkers(open="[THINK]", close="[/THINK]")
ARGS_MARKER = "[ARGS]"
CALL_ID_MARKER = "[CALL_ID]"


def parse_mistral_region(body: str, marker: ToolMarker | None) -> list[FoundCall] | None:
    """The calls after one ``[TOOL_CALLS]``: a JSON array/object, or ``name[ARGS]{...}``."""
    text = body.strip()
    if text[:1] in ("[", "{"):
        return calls_from_json(text)
    head, found, arguments_text = text.partition(ARGS_MARKER)
    if not found:
        return None
    name = head.partition(CALL_ID_MARKER)[0].strip()
    if not name or any(char.isspace() for char in name):
        return None
    try:
        arguments = decode_arguments(json.loads(arguments_text))
    except ValueError:
        return None
    if arguments is None:
        return None
    return [FoundCall(name=name, arguments=arguments)]


MISTRAL_SYNTAX = ToolSyntax(
    markers=(TOOL_CALLS,),
    parse_region=parse_mistral_region,
    lead_markers=(ARGS_MARKER, CALL_ID_MARKER),
)


class MistralParser(MarkupParser):
    """Mistral ``[TOOL_CALLS]`` calls, with ``[THINK]`` reasoning."""

    tool_syntax = MISTRAL_SYNTAX
    default_reasoning = MISTRAL_THINK


PARSER = MistralParser
