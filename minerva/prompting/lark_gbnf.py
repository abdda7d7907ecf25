"""A Lark grammar (the subset tool grammars use) → GBNF rules over JSON-escaped text.

Codex's ``apply_patch`` and other free-form (``custom``) Responses tools describe their input with a
Lark grammar; the model writes that input as a JSON string, so the rules produced here match the
JSON-escaped form of the grammar's language (see ``escaped_text``). Supported: rules and terminals,
``|`` alternatives, ``-> alias`` (ignored), ``"literal"`` and ``"literal"i``, ``"a".."z"`` ranges,
``/regex/flags``, groups, ``[optional]``, ``? * +``, ``~ n`` and ``~ n..m``, ``%import common.X``
for the usual terminals and ``%ignore``. Templates, ``%declare`` and unknown imports raise
``UnsupportedGrammarError``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from minerva.prompting.escaped_text import CharSet, escaped_charset, escaped_literal
from minerva.prompting.regex_gbnf import UnsupportedRegexError, regex_to_escaped_gbnf


class UnsupportedGrammarError(ValueError):
    """The grammar uses something this converter cannot enforce."""


COMMON_TERMINALS = {
    "LF": r'"\n"',
    "CR": r'"\r"',
    "NEWLINE": r"(/\r/? /\n/)+",
    "WS": r"/[ \t\f\r\n]/+",
    "WS_INLINE": r'(" "|/\t/)+',
    "DIGIT": '"0".."9"',
    "HEXDIGIT": '"a".."f" | "A".."F" | DIGIT',
    "INT": "DIGIT+",
    "SIGNED_INT": '["+"|"-"] INT',
    "DECIMAL": 'INT "." INT? | "." INT',
    "FLOAT": r'INT /[eE][+-]?\d+/ | DECIMAL /[eE][+-]?\d+/?',
    "NUMBER": "FLOAT | INT",
    "SIGNED_NUMBER": '["+"|"-"] NUMBER',
    "LCASE_LETTER": '"a".."z"',
    "UCASE_LETTER": '"A".."Z"',
    "LETTER": "UCASE_LETTER | LCASE_LETTER",
    "WORD": "LETTER+",
    "CNAME": r'("_"|LETTER) ("_"|LETTER|DIGIT)*',
    "ESCAPED_STRING": r'/"([^"\\\n]|\\.)*"/',
    "SH_COMMENT": r"/#[^\n]*/",
    "CPP_COMMENT": r"/\/\/[^\n]*/",
}
"""The terminals of Lark's ``common.lark`` that grammars import, written in the subset read here."""

_TOKEN = re.compile(r"""
    (?P<space>[ \t]+|\\\n)
  | (?P<comment>//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regex>/(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<arrow>->)
  | (?P<range>\.\.)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<number>\d+)
  | (?P<op>[|()\[\]?*+~:,{}])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokens(line: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        if match is None:
            raise UnsupportedGrammarError(f"cannot read {line[pos:pos + 20]!r}")
        pos = match.end()
        if match.lastgroup not in ("space", "comment"):
            out.append(_Token(match.lastgroup, match.group()))
    return out


def _definitions(definition: str) -> tuple[dict[str, list[_Token]], list[str], list[str]]:
    """Rule bodies by name, the ``%import``ed names, and the ``%ignore``d expressions' sources."""
    bodies: dict[str, list[_Token]] = {}
    imports: list[str] = []
    ignores: list[str] = []
    current: str | None = None
    for raw in definition.splitlines():
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        if line.startswith("%"):
            current = None
            directive, _, rest = line.partition(" ")
            if directive == "%import":
                imports += _imported_names(rest.strip())
            elif directive == "%ignore":
                ignores.append(rest.strip())
            else:
                raise UnsupportedGrammarError(f"the directive {directive}")
            continue
        if line.startswith("|") and current is not None:
            bodies[current] += [_Token("op", "|")] + _tokens(line[1:])
            continue
        head, colon, body = line.partition(":")
        name = head.strip().lstrip("?!").split(".")[0]
        if not colon or not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
            raise UnsupportedGrammarError(f"cannot read the line {line!r} (templates are not supported)")
        if name in bodies:
            raise UnsupportedGrammarError(f"{name} is defined twice")
        bodies[name] = _tokens(body)
        current = name
    return bodies, imports, ignores


def _imported_names(spec: str) -> list[str]:
    """``common.LF``, ``common.LF -> NAME`` (unsupported) or ``common (LF, WS)``."""
    if "->" in spec:
        raise UnsupportedGrammarError("renamed imports")
    module, _, names = spec.partition(" ")
    if names:
        listed = [name.strip() for name in names.strip().strip("()").split(",") if name.strip()]
    else:
        module, _, name = spec.rpartition(".")
        listed = [name]
    if module.strip() != "common":
        raise UnsupportedGrammarError(f"imports from {module.strip()!r}")
    unknown = [name for name in listed if name not in COMMON_TERMINALS]
    if unknown:
        raise UnsupportedGrammarError(f"the common terminals {unknown}")
    return listed


def rule_name(prefix: str, name: str) -> str:
    """The GBNF name of a Lark rule or terminal (GBNF names allow letters, digits and '-')."""
    kind = "t-" if name.isupper() else ""
    return f"{prefix}-{kind}{name.replace('_', '-').lower()}"


class _ExpansionReader:
    """Recursive descent over one rule body's tokens, writing GBNF."""

    def __init__(self, tokens: list[_Token], prefix: str, names: set[str], ignore: str | None, terminal: bool):
        self.tokens = tokens
        self.pos = 0
        self.prefix = prefix
        self.names = names
        self.used: set[str] = set()
        self.gap = f" {ignore} " if ignore and not terminal else " "

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def is_op(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == text

    def expect(self, text: str) -> None:
        if not self.is_op(text):
            raise UnsupportedGrammarError(f"expected {text!r}")
        self.pos += 1

    def alternatives(self) -> str:
        options = [self.sequence()]
        while self.is_op("|"):
            self.pos += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"

    def sequence(self) -> str:
        items = []
        while (token := self.peek()) is not None and not (token.kind == "op" and token.text in "|)]") \
                and token.kind != "arrow":
            items.append(self.repeated())
        if self.peek() is not None and self.peek().kind == "arrow":
            self.pos += 2  # "-> alias": a name for the parse tree, the same language
        return self.gap.join(items) if items else '""'

    def repeated(self) -> str:
        atom = self.atom()
        token = self.peek()
        if token is not None and token.kind == "op" and token.text in "?*+":
            self.pos += 1
            if token.text == "?":
                return f"( {atom} )?"
            if self.gap == " ":
                return f"( {atom} ){token.text}"
            more = f"( {self.gap.strip()} {atom} )*"
            return f"( {atom} {more} )" + ("?" if token.text == "*" else "")
        if self.is_op("~"):
            self.pos += 1
            low = self._number()
            high = low
            if self.peek() is not None and self.peek().kind == "range":
                self.pos += 1
                high = self._number()
            if high < low:
                raise UnsupportedGrammarError("a reversed ~ range")
            if self.gap == " ":
                return f"( {atom} ){{{low}}}" if high == low else f"( {atom} ){{{low},{high}}}"
            if high == 0:
                return '""'
            first = max(low, 1) - 1
            more = f"( {self.gap.strip()} {atom} ){{{first},{high - 1}}}"
            return f"( {atom} {more} )" + ("?" if low == 0 else "")
        return atom

    def _number(self) -> int:
        token = self.peek()
        if token is None or token.kind != "number":
            raise UnsupportedGrammarError("expected a number after ~")
        self.pos += 1
        return int(token.text)

    def atom(self) -> str:
        token = self.peek()
        if token is None:
            raise UnsupportedGrammarError("an expansion ends too early")
        self.pos += 1
        if token.kind == "op" and token.text == "(":
            inner = self.alternatives()
            self.expect(")")
            return f"( {inner} )"
        if token.kind == "op" and token.text == "[":
            inner = self.alternatives()
            self.expect("]")
            return f"( {inner} )?"
        if token.kind == "string":
            return self._string(token.text)
        if token.kind == "regex":
            return self._regex(token.text)
        if token.kind == "name":
            name = token.text.lstrip("?!")
            if self.is_op("{"):
                raise UnsupportedGrammarError("rule templates")
            if name not in self.names:
                raise UnsupportedGrammarError(f"{name} is used but never defined")
            self.used.add(name)
            return rule_name(self.prefix, name)
        raise UnsupportedGrammarError(f"unexpected {token.text!r}")

    def _string(self, text: str) -> str:
        insensitive = text.endswith("i")
        literal = ast.literal_eval(text[:-1] if insensitive else text)
        if self.peek() is not None and self.peek().kind == "range":
            self.pos += 1
            end = self.peek()
            if end is None or end.kind != "string":
                raise UnsupportedGrammarError('a ".." range needs two strings')
            self.pos += 1
            high = ast.literal_eval(end.text)
            if len(literal) != 1 or len(high) != 1 or high < literal:
                raise UnsupportedGrammarError('a ".." range of single characters')
            return escaped_charset(CharSet.of([(ord(literal), ord(high))]))
        if not literal:
            return '""'
        if insensitive:
            return " ".join(escaped_charset(CharSet.chars(char).case_folded()) for char in literal)
        return escaped_literal(literal)

    def _regex(self, text: str) -> str:
        body, _, flags = text[1:].rpartition("/")
        if set(flags) - set("is"):
            raise UnsupportedGrammarError(f"the regex flags {flags!r}")
        try:
            return regex_to_escaped_gbnf(body.replace("\\/", "/"), ignore_case="i" in flags, dot_all="s" in flags)
        except UnsupportedRegexError as exc:
            raise UnsupportedGrammarError(str(exc)) from exc


def lark_to_escaped_gbnf(definition: str, prefix: str) -> tuple[str, dict[str, str]]:
    """(root rule name, GBNF rules) matching the JSON-escaped form of the Lark grammar's language."""
    bodies, imports, ignores = _definitions(definition)
    for name in imports:
        bodies.setdefault(name, _tokens(COMMON_TERMINALS[name]))
    pending = [name for name in imports for name in _dependencies(name)]
    while pending:
        name = pending.pop()
        if name not in bodies:
            bodies[name] = _tokens(COMMON_TERMINALS[name])
            pending += _dependencies(name)
    if "start" not in bodies:
        raise UnsupportedGrammarError("the grammar has no start rule")
    names = set(bodies)
    rules: dict[str, str] = {}
    ignore = None
    if ignores:
        ignore_reader = _ExpansionReader(_tokens(" | ".join(ignores)), prefix, names, None, terminal=True)
        ignore = f"{prefix}-ignored"
        rules[ignore] = ignore_reader.alternatives()
        ignore += "*"
    reachable, queue = set(), ["start"] + ([] if ignore is None else list(ignore_reader.used))
    while queue:
        name = queue.pop()
        if name in reachable:
            continue
        reachable.add(name)
        reader = _ExpansionReader(bodies[name], prefix, names, ignore, terminal=name.isupper())
        body = reader.alternatives()
        if reader.pos != len(bodies[name]):
            raise UnsupportedGrammarError(f"cannot read the rest of {name}")
        rules[rule_name(prefix, name)] = body
        queue += sorted(reader.used)
    start = rule_name(prefix, "start")
    if ignore is None:
        return start, rules
    root = f"{prefix}-root"
    rules[root] = f"{ignore} {start} {ignore}"
    return root, rules


def _dependencies(name: str) -> list[str]:
    return [token.text for token in _tokens(COMMON_TERMINALS[name])
            if token.kind == "name" and token.text in COMMON_TERMINALS]
