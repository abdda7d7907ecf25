"""GBNF for text as it appears inside a JSON string: each character written the way JSON writes it.

A free-form tool's input travels as a JSON string (``{"input": "…"}``), so a grammar over the
input itself (Lark, a regex) is enforced on its JSON-escaped form: ``"`` is ``\\"``, a newline is
``\\n``, other control characters their short or ``\\u00XX`` escape, everything else itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from minerva.prompting.gbnf import gbnf_literal

MAX_CODEPOINT = 0x10FFFF
ESCAPED_CHARS = frozenset(chr(code) for code in range(0x20)) | {'"', "\\"}
"""Characters JSON never writes as themselves inside a string."""


def escaped_form(char: str) -> str:
    """How JSON writes one character inside a string (``json.dumps`` without ASCII escaping)."""
    return json.dumps(char, ensure_ascii=False)[1:-1]


def escaped_literal(text: str) -> str:
    """A GBNF literal for ``text`` as it appears inside a JSON string."""
    return gbnf_literal("".join(escaped_form(char) for char in text))


@dataclass(frozen=True)
class CharSet:
    """A set of characters as sorted, disjoint, inclusive code point ranges."""

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(ranges: Iterable[tuple[int, int]]) -> CharSet:
        """The union of ``ranges`` (in any order, overlapping or not)."""
        merged: list[list[int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        return CharSet(tuple((low, high) for low, high in merged))

    @staticmethod
    def chars(text: str) -> CharSet:
        """The set of the characters of ``text``."""
        return CharSet.of((ord(char), ord(char)) for char in text)

    def union(self, other: CharSet) -> CharSet:
        """Characters in either set."""
        return CharSet.of(self.ranges + other.ranges)

    def complement(self) -> CharSet:
        """Every character not in this set."""
        out, start = [], 0
        for low, high in self.ranges:
            if low > start:
                out.append((start, low - 1))
            start = high + 1
        if start <= MAX_CODEPOINT:
            out.append((start, MAX_CODEPOINT))
        return CharSet(tuple(out))

    def contains(self, char: str) -> bool:
        """Whether ``char`` is in the set."""
        code = ord(char)
        return any(low <= code <= high for low, high in self.ranges)

    def case_folded(self) -> CharSet:
        """The set with the other case of every ASCII letter in it added."""
        extra = []
        for low, high in self.ranges:
            for code in range(max(low, 0x41), min(high, 0x7A) + 1):
                char = chr(code)
                if char.isalpha():
                    extra.append((ord(char.swapcase()),) * 2)
        return CharSet.of(self.ranges + tuple(extra))


def _class_char(code: int) -> str:
    char = chr(code)
    if char in "]^-\\[":
        return "\\" + char
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02X}"
    if code > 0xFFFF:
        return f"\\U{code:08X}"
    if code > 0x7E and not char.isprintable():
        return f"\\u{code:04X}"
    return char


def escaped_charset(chars: CharSet) -> str:
    """A GBNF expression for one character of ``chars``, written the way JSON writes it in a string."""
    raw = CharSet.of(chars.ranges).complement().union(CharSet.chars("".join(ESCAPED_CHARS))).complement()
    options = []
    if raw.ranges:
        everything_but = raw.complement()
        if len(everything_but.ranges) < len(raw.ranges):
            body = "".join(_range(low, high) for low, high in everything_but.ranges)
            options.append(f"[^{body}]")
        else:
            options.append("[" + "".join(_range(low, high) for low, high in raw.ranges) + "]")
    escaped = [char for char in sorted(ESCAPED_CHARS) if chars.contains(char)]
    long_form = [char for char in ESCAPED_CHARS if escaped_form(char).startswith("\\u")]
    if all(char in escaped for char in long_form):  # the control characters without a short escape, at once
        options.append('"\\\\u00" ( "0" [0-7bef] | "1" [0-9a-f] )')
        escaped = [char for char in escaped if char not in long_form]
    options += [gbnf_literal(escaped_form(char)) for char in escaped]
    if not options:
        raise ValueError("an empty character set matches nothing")
    return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"


def _range(low: int, high: int) -> str:
    if low == high:
        return _class_char(low)
    return f"{_class_char(low)}-{_class_char(high)}"
