"""The one registry of output parsers, keyed by module name under ``minerva.parsers``."""

from __future__ import annotations

import importlib

from minerva.parsers.base import IncrementalParser

PARSER_NAMES = ("hermes", "llama3", "mistral", "harmony", "think", "json")


class UnknownParserError(KeyError):
    """No parser module of that name."""


def get_parser(name: str) -> type[IncrementalParser]:
    """The parser class of module ``minerva.parsers.<name>`` (one of PARSER_NAMES)."""
    if name not in PARSER_NAMES:
        known = ", ".join(PARSER_NAMES)
        raise UnknownParserError(f"unknown output parser {name!r}; known: {known}")
    module = importlib.import_module(f"{__package__}.{name}")
    return module.PARSER
