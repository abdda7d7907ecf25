"""Responses tools → core ToolSpecs, and the map that turns a core call back into its Responses tool."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from minerva.core.requests import FREEFORM_INPUT, TextGrammar, ToolSpec
from minerva.dialects.openai_responses.protocol import Tool

logger = logging.getLogger(__name__)

CUSTOM_INPUT = FREEFORM_INPUT
CUSTOM_PARAMETERS = {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}}, "required": [CUSTOM_INPUT]}
"""A custom (free-form) tool is offered to the model as a function taking its input as one string."""


@dataclass(frozen=True)
class ToolName:
    """A tool as the client named it: its name, the namespace it sits in, and whether it is custom."""

    name: str
    namespace: str | None = None
    custom: bool = False


def flat_name(name: str, namespace: str | None) -> str:
    """The one name the model sees for a (namespace, name) pair."""
    return f"{namespace}.{name}" if namespace else name


@dataclass(frozen=True)
class ToolSet:
    """The core tools of a request and, by core name, the Responses tool each one is."""

    specs: tuple[ToolSpec, ...] = ()
    names: Mapping[str, ToolName] = field(default_factory=dict)

    def lookup(self, core_name: str) -> ToolName:
        """The Responses tool a core call names (a name the client never sent is kept as it is)."""
        return self.names.get(core_name) or ToolName(core_name)


def _custom_spec(tool: Tool, core_name: str) -> ToolSpec:
    """A custom tool; its Lark or regex grammar, where it has one, constrains the input when calls are."""
    fmt = tool.format or {}
    grammar = None
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        grammar = TextGrammar(str(fmt.get("syntax") or "lark"), fmt["definition"])
    return ToolSpec(core_name, tool.description, CUSTOM_PARAMETERS, freeform=grammar)


def _add(specs: list[ToolSpec], names: dict[str, ToolName], tool: Tool, namespace: str | None) -> None:
    if tool.type == "function" and tool.name:
        core_name = flat_name(tool.name, namespace)
        specs.append(ToolSpec(core_name, tool.description, tool.parameters, tool.strict))
        names.setdefault(core_name, ToolName(tool.name, namespace))
    elif tool.type == "custom" and tool.name:
        core_name = flat_name(tool.name, namespace)
        specs.append(_custom_spec(tool, core_name))
        names.setdefault(core_name, ToolName(tool.name, namespace, custom=True))
    elif tool.type == "namespace" and tool.name:
        for inner in tool.tools or ():
            _add(specs, names, inner, tool.name)
    else:
        logger.info("skipping a Responses tool of type %r: minerva cannot run it", tool.type)


def tool_set(tools: list[Tool] | None) -> ToolSet:
    """Function and custom tools (namespaces flattened); hosted tools such as web_search are skipped."""
    specs: list[ToolSpec] = []
    names: dict[str, ToolName] = {}
    for tool in tools or ():
        _add(specs, names, tool, None)
    return ToolSet(tuple(specs), names)
