"""A regular expression (the common subset of Python's ``re``) → a GBNF expression over JSON-escaped text.

Supported: literals and escapes, ``.``, classes (ranges, negation, ``\\d \\w \\s`` and their
negations), groups (plain, ``(?:…)``, named), alternation, ``* + ? {n} {n,} {n,m}`` (lazy forms
read as greedy), ``^``/``$`` at the ends. Anything else (look-around, back-references, inline
flags) raises ``UnsupportedRegexError``: a constraint is enforced exactly or not at all.
"""

from __future__ import annotations

from minerva.prompting.escaped_text import CharSet, escaped_charset, escaped_literal

DIGITS = CharSet.of([(0x30, 0x39)])
WORD = CharSet.of([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = CharSet.chars(" \t\n\r\f\v")
SHORTHANDS = {"d": DIGITS, "w": WORD, "s": SPACE}
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
MAX_REPEAT = 10_000


class UnsupportedRegexError(ValueError):
    """The pattern uses something this converter cannot turn into a grammar."""


class _RegexReader:
    """One pass of recursive descent over a pattern, writing GBNF as it goes."""

    def __init__(self, pattern: str, *, ignore_case: bool = False, dot_all: bool = False):
        self.text = pattern
        self.pos = 0
        self.ignore_case = ignore_case
        self.dot_all = dot_all

    def fail(self, what: str) -> UnsupportedRegexError:
        return UnsupportedRegexError(f"regex /{self.text}/ at {self.pos}: {what}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise self.fail("unexpected end")
        self.pos += 1
        return char

    def alternation(self) -> str:
        options = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"

    def sequence(self) -> str:
        items = []
        while self.peek() and self.peek() not in "|)":
            items.append(self.quantified())
        items = [item for item in items if item]
        return " ".join(items) if items else '""'

    def quantified(self) -> str:
        atom = self.atom()
        while self.peek() and self.peek() in "*+?{":
            if not atom:
                raise self.fail("a quantifier with nothing to repeat")
            char = self.peek()
            if char == "{":
                bounds = self._braces()
                if bounds is None:
                    break
                atom = f"( {atom} ){bounds}"
            else:
                self.pos += 1
                atom = f"( {atom} ){char}"
            if self.peek() == "?":
                self.pos += 1  # lazy: the same language
            elif self.peek() == "+":
                raise self.fail("possessive quantifiers")
        return atom

    def _braces(self) -> str | None:
        end = self.text.find("}", self.pos)
        body = self.text[self.pos + 1:end] if end > 0 else ""
        parts = body.split(",")
        if end < 0 or len(parts) > 2 or not parts[0].isdigit() or (len(parts) == 2 and parts[1] and not parts[1].isdigit()):
            return None  # a literal "{", as in Python
        low = int(parts[0])
        high = None if len(parts) == 2 and not parts[1] else int(parts[-1])
        if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
            raise self.fail("a repetition count out of range")
        self.pos = end + 1
        if high is None:
            return f"{{{low},}}"
        return f"{{{low}}}" if high == low else f"{{{low},{high}}}"

    def atom(self) -> str:
        char = self.take()
        if char == "(":
            return self._group()
        if char == "[":
            return escaped_charset(self._class())
        if char == ".":
            return escaped_charset(CharSet.of([(0, 0x10FFFF)]) if self.dot_all else CharSet.chars("\n").complement())
        if char in "^$":
            if (char == "^" and self.pos != 1) or (char == "$" and self.pos != len(self.text)):
                raise self.fail("an anchor inside the pattern")
            return ""
        if char == "\\":
            return self._escape_atom()
        if char in "*+?":
            raise self.fail("a quantifier with nothing to repeat")
        return self._literal(char)

    def _literal(self, char: str) -> str:
        if self.ignore_case and char.isalpha() and char.isascii():
            return escaped_charset(CharSet.chars(char).case_folded())
        return escaped_literal(char)

    def _group(self) -> str:
        if self.peek() == "?":
            self.pos += 1
            kind = self.take()
            if kind == "P" and self.peek() == "<":
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise self.fail("an unclosed group name")
                self.pos = end + 1
            elif kind != ":":
                raise self.fail(f"the group kind (?{kind}")
        inner = self.alternation()
        if self.take() != ")":
            raise self.fail("an unclosed group")
        return f"( {inner} )"

    def _escape_atom(self) -> str:
        char = self.take()
        if char.lower() in SHORTHANDS:
            chars = SHORTHANDS[char.lower()]
            return escaped_charset(chars.complement() if char.isupper() else chars)
        return self._literal(self._escaped_char(char))

    def _escaped_char(self, char: str) -> str:
        if char in SIMPLE_ESCAPES:
            return SIMPLE_ESCAPES[char]
        if char in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[char]
            digits = self.text[self.pos:self.pos + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"a bad \\{char} escape")
            self.pos += width
            return chr(int(digits, 16))
        if char.isalnum():
            raise self.fail(f"the escape \\{char}")
        return char

    def _class(self) -> CharSet:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            char = self.take()
            if char == "]" and not first:
                break
            first = False
            if char == "\\":
                escaped = self.take()
                if escaped.lower() in SHORTHANDS:
                    shorthand = SHORTHANDS[escaped.lower()]
                    ranges += (shorthand.complement() if escaped.isupper() else shorthand).ranges
                    continue
                char = "\b" if escaped == "b" else self._escaped_char(escaped)
            if self.peek() == "-" and self.text[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self.take()
                if high == "\\":
                    high = self._escaped_char(self.take())
                if ord(high) < ord(char):
                    raise self.fail("a reversed class range")
                ranges.append((ord(char), ord(high)))
            else:
                ranges.append((ord(char), ord(char)))
        chars = CharSet.of(ranges)
        if self.ignore_case:
            chars = chars.case_folded()
        return chars.complement() if negated else chars


def regex_to_escaped_gbnf(pattern: str, *, ignore_case: bool = False, dot_all: bool = False) -> str:
    """A GBNF expression matching the JSON-escaped form of every string ``pattern`` fully matches."""
    reader = _RegexReader(pattern, ignore_case=ignore_case, dot_all=dot_all)
    expression = reader.alternation()
    if reader.pos != len(pattern):
        raise reader.fail("an unbalanced ')'")
    return expression
