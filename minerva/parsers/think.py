"""Reasoning between ``<think>`` and ``</think>`` (Qwen3, DeepSeek-R1…); no tool calls."""

from __future__ import annotations

from minerva.parsers.markup import MarkupParser, ReasoningMarkers

THINK = ReasoningMarkers(open="<think>", close="</think>")


class ThinkParser(MarkupParser):
    """Splits ``<think>…</think>`` into reasoning; everything else is content."""

    default_reasoning = THINK


PARSER = ThinkParser
