"""Free-form tool grammars (Lark, regex) become GBNF over the JSON-escaped input, checked by llama.cpp itself."""

from __future__ import annotations

import json
import logging
import random
import re

import pytest

from minerva.core.requests import TextGrammar
from minerva.prompting.freeform import free_text_rules, freeform_arguments_rules
from minerva.prompting.lark_gbnf import UnsupportedGrammarError, lark_to_escaped_gbnf
from minerva.prompting.regex_gbnf import UnsupportedRegexError, regex_to_escaped_gbnf
from minerva.prompting.structured import ForcedFunction, render_grammar, tool_call_grammar
from tests.grammar_checker import checker  # noqa: F401  (a fixture)

APPLY_PATCH_LARK = """start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?

filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /(.+)/) LF
change_line: ("+" | "-" | " ") /(.*)/ LF
eof_line: "*** End of File" LF

%import common.LF
"""
"""Codex 0.169's apply_patch grammar, exactly as it sends it."""

APPLY_PATCH_REGEX = re.compile(
    r"\*\*\* Begin Patch\n(?:\*\*\* Add File: .+\n(?:\+.*\n)+|\*\*\* Delete File: .+\n"
    r"|\*\*\* Update File: .+\n(?:\*\*\* Move to: .+\n)?(?:(?:(?:@@|@@ .+)\n|[-+ ].*\n)+(?:\*\*\* End of File\n)?)?)+"
    r"\*\*\* End Patch\n?")
"""The same language as a Python regex (the grammar is regular): an independent check."""

GOOD_PATCHES = [
    "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n+She said \"hi\" \\o/\n*** End Patch\n",
    "*** Begin Patch\n*** Delete File: old.txt\n*** End Patch",
    "*** Begin Patch\n*** Update File: src/app.py\n*** Move to: src/main.py\n@@ def greet():\n-    print('Hi')\n"
    "+    print(\"Hello\")\n \n*** End of File\n*** Add File: b.txt\n+\t tab\n*** End Patch\n",
    "*** Begin Patch\n*** Update File: a.md\n*** End Patch\n",
    "*** Begin Patch\n*** Add File: é/ünïcode 名.txt\n+日本語\n*** End Patch\n",
]
BAD_PATCHES = [
    "*** Begin Patch\n*** End Patch\n",  # no hunk
    "*** Add File: a\n+x\n*** End Patch\n",  # no begin
    "*** Begin Patch\n*** Add File: a\nx\n*** End Patch\n",  # an added line without "+"
    "*** Begin Patch\n*** Add File: a\n*** End Patch\n",  # an added file without lines
    "*** Begin Patch\n*** Update File: a\n~x\n*** End Patch\n",  # not a change line
    "*** Begin Patch\n*** Delete File: \n*** End Patch\n",  # an empty file name
    "*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\nmore",
]


def escaped(text: str) -> str:
    """Text as it sits inside a JSON string (what the model writes)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def grammar_of(definition: str, syntax: str = "lark") -> str:
    root, rules = free_text_rules(TextGrammar(syntax, definition), "g")
    return render_grammar({**rules, "root": root})


def test_the_independent_regex_agrees_with_the_examples():
    assert all(APPLY_PATCH_REGEX.fullmatch(p) for p in GOOD_PATCHES)
    assert not any(APPLY_PATCH_REGEX.fullmatch(p) for p in BAD_PATCHES)


@pytest.mark.parametrize("patch", GOOD_PATCHES + BAD_PATCHES)
def test_apply_patch_grammar_accepts_exactly_the_escaped_patches(checker, patch):
    grammar = grammar_of(APPLY_PATCH_LARK)
    assert checker.accepts(grammar, escaped(patch)) is bool(APPLY_PATCH_REGEX.fullmatch(patch))


def test_raw_newlines_and_quotes_are_refused_inside_the_json_string(checker):
    grammar = grammar_of(APPLY_PATCH_LARK)
    patch = GOOD_PATCHES[0]
    assert checker.accepts(grammar, escaped(patch))
    assert not checker.accepts(grammar, patch)  # raw newlines would end the JSON string's validity
    assert not checker.accepts(grammar, escaped(patch).replace('\\"', '"'))


def test_random_patches_agree_with_the_regex(checker):
    grammar = grammar_of(APPLY_PATCH_LARK)
    rng = random.Random(7)
    pieces = ["*** Begin Patch\n", "*** Add File: a.txt\n", "+line\n", "*** Update File: b\n", "@@\n", "@@ ctx\n",
              "-old\n", " same\n", "*** Delete File: c\n", "*** End of File\n", "*** End Patch\n", "*** End Patch",
              "junk\n", '+quote " and \\ slash\n']
    for _ in range(40):
        patch = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.6:
            patch = "*** Begin Patch\n" + patch
        assert checker.accepts(grammar, escaped(patch)) is bool(APPLY_PATCH_REGEX.fullmatch(patch)), patch


@pytest.mark.parametrize(("pattern", "text"), [
    (r"\d{3}-\d{4}", "555-1234"), (r"[A-Z][a-z]+( [A-Z][a-z]+)*", "Ada Lovelace"), (r"(?:yes|no)\.?", "no."),
    (r"[^\n\"]{1,5}", "ab cd"), (r"\w+@\w+\.com", "me@host.com"), (r"a{2,}b?", "aaaa"),
    (r"line one\nline two", "line one\nline two"), (r'say "(?P<w>\w+)"', 'say "hi"'), (r"^\s*\S+$", "  x"),
])
def test_regex_grammars_accept_what_python_fully_matches(checker, pattern, text):
    assert re.fullmatch(pattern, text)
    grammar = grammar_of(pattern, "regex")
    assert checker.accepts(grammar, escaped(text))
    assert not re.fullmatch(pattern, text + " ~") and not checker.accepts(grammar, escaped(text + " ~"))


@pytest.mark.parametrize(("pattern", "text"), [(r"\d{3}", "12"), (r"[a-c]+", "abd"), (r"x|y", "xy"), (r".", "\n")])
def test_regex_grammars_refuse_what_python_does_not_match(checker, pattern, text):
    assert not re.fullmatch(pattern, text)
    assert not checker.accepts(grammar_of(pattern, "regex"), escaped(text))


def test_lark_common_imports_ignore_ranges_and_case(checker):
    definition = """
    start: pair ("," pair)*
    pair: KEY "=" value
    ?value: SIGNED_NUMBER | ESCAPED_STRING | "true"i | LETTER ~ 2..3
    KEY: ("a".."z")+
    %import common (SIGNED_NUMBER, ESCAPED_STRING, LETTER, WS)
    %ignore WS
    """
    grammar = grammar_of(definition)
    for text in ['a=1', 'ab = -2.5 , c="x y"', 'k=TRUE', ' z = Qx ', 'q=abc']:
        assert checker.accepts(grammar, escaped(text)), text
    for text in ['a=', 'A=1', 'a=1,', 'k=t1', 'q=abcd', 'a=1 b=2']:
        assert not checker.accepts(grammar, escaped(text)), text


@pytest.mark.parametrize("definition", [
    "start: _sep{x, \",\"}\n_sep{a, s}: a (s a)*\nx: \"x\"",  # a template
    "start: \"a\"\n%declare B",
    "start: /(?=a)a/",  # look-ahead
    "start: /(a)\\1/",  # a back-reference
    "start: missing",
    "begin: \"a\"",  # no start rule
    "%import other.X\nstart: X",
])
def test_what_cannot_be_enforced_is_refused_by_the_converter(definition):
    with pytest.raises((UnsupportedGrammarError, UnsupportedRegexError)):
        lark_to_escaped_gbnf(definition, "g")


def test_an_unsupported_grammar_leaves_the_input_free_and_says_so(caplog, checker):
    tools = [{"type": "function", "function": {"name": "edit", "parameters": {
        "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}}]
    with caplog.at_level(logging.INFO, logger="minerva.prompting.freeform"):
        assert freeform_arguments_rules("edit", TextGrammar("lark", "start: /(?=a)a/"), "g") is None
        grammar = tool_call_grammar(tools, "required", freeform={"edit": TextGrammar("lark", "start: /(?=a)a/")})
    assert "not enforced" in caplog.text
    assert checker.accepts(grammar, '<tool_call>{"name": "edit", "arguments": {"input": "anything"}}</tool_call>')
    with pytest.raises(ValueError):
        regex_to_escaped_gbnf("(?i)a")


def test_a_forced_free_form_call_must_carry_a_valid_patch(checker):
    tools = [{"type": "function", "function": {"name": "apply_patch", "parameters": {
        "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}},
             {"type": "function", "function": {"name": "shell", "parameters": {
                 "type": "object", "properties": {"cmd": {"type": "string"}}}}}]
    freeform = {"apply_patch": TextGrammar("lark", APPLY_PATCH_LARK)}

    def call(name: str, arguments: dict) -> str:
        return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"

    forced = tool_call_grammar(tools, ForcedFunction("apply_patch"), freeform=freeform)
    assert checker.accepts(forced, call("apply_patch", {"input": GOOD_PATCHES[2]}))
    assert not checker.accepts(forced, call("apply_patch", {"input": BAD_PATCHES[2]}))
    assert not checker.accepts(forced, call("apply_patch", {"input": "please edit the file"}))
    optional = tool_call_grammar(tools, "auto_optional", freeform=freeform)
    assert checker.accepts(optional, "Editing.\n" + call("apply_patch", {"input": GOOD_PATCHES[1]}))
    assert checker.accepts(optional, call("shell", {"cmd": "ls"}))
    assert not checker.accepts(optional, call("apply_patch", {"input": "*** Begin Patch\n"}))
