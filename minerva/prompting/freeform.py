"""The arguments rule of a free-form tool: ``{"input": "…"}`` whose string matches the tool's grammar."""

from __future__ import annotations

import logging

from minerva.core.requests import FREEFORM_INPUT, TextGrammar
from minerva.prompting.gbnf import gbnf_literal
from minerva.prompting.lark_gbnf import UnsupportedGrammarError, lark_to_escaped_gbnf
from minerva.prompting.regex_gbnf import UnsupportedRegexError, regex_to_escaped_gbnf

logger = logging.getLogger(__name__)


def free_text_rules(grammar: TextGrammar, prefix: str) -> tuple[str, dict[str, str]]:
    """(root rule, rules) for the JSON-escaped text ``grammar`` accepts; raises ValueError if unsupported."""
    if grammar.syntax == "lark":
        return lark_to_escaped_gbnf(grammar.definition, prefix)
    if grammar.syntax == "regex":
        return prefix, {prefix: regex_to_escaped_gbnf(grammar.definition)}
    raise UnsupportedGrammarError(f"grammars of syntax {grammar.syntax!r}")


def freeform_arguments_rules(tool: str, grammar: TextGrammar, prefix: str) -> tuple[str, dict[str, str]] | None:
    """(arguments rule, rules) for a free-form call's ``{"input": …}``; None (logged) when unsupported."""
    try:
        root, rules = free_text_rules(grammar, prefix)
    except (UnsupportedGrammarError, UnsupportedRegexError) as exc:
        logger.info("tool %r: its %s grammar is not enforced (%s); its input is free text", tool, grammar.syntax, exc)
        return None
    key = gbnf_literal(f'"{FREEFORM_INPUT}"')
    arguments = f'"{{" ws {key} ws ":" ws "\\"" {root} "\\"" ws "}}"'
    return arguments, rules
