"""Mistral tool calls: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (v3, Nemo) and
``[TOOL_CALLS]name[ARGS]{...}`` (v11+, optionally ``name[CALL_ID]id[ARGS]{...}``).

Magistral reasons between ``[THINK]`` and ``[/THINK]``.
"""

from __future__ import annotations

import json
import re

from minerva.parsers.json_scan import CallHead, FoundCall, calls_from_json, decode_arguments, json_call_head
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


_NAMED_HEAD = re.compile(r"[ \t\r\n]*(?P<name>[^\s\[\]{}\"]+)[ \t\r\n]*(?:\[CALL_ID\][^\[]*)?\[ARGS\][ \t\r\n]*(?=\{)")


def mistral_call_head(text: str, at: int) -> CallHead | None:
    """A call's head in a ``[TOOL_CALLS]`` region: ``name[ARGS]{`` (v11+), else a JSON call object's."""
    match = _NAMED_HEAD.match(text) if at == 0 else None
    if match is not None:
        return CallHead(match.group("name"), match.end())
    return json_call_head(text, at)


MISTRAL_SYNTAX = ToolSyntax(
    markers=(TOOL_CALLS,),
    parse_region=parse_mistral_region,
    lead_markers=(ARGS_MARKER, CALL_ID_MARKER),
    call_head=mistral_call_head,
)


class MistralParser(MarkupParser):
    """Mistral ``[TOOL_CALLS]`` calls, with ``[THINK]`` reasoning."""

    tool_syntax = MISTRAL_SYNTAX
    default_reasoning = MISTRAL_THINK


PARSER = MistralParser
