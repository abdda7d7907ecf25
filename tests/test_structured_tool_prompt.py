"""The text tool block for templates without tools: compact, complete, parseable by hermes."""

from __future__ import annotations

import json
from pathlib import Path

from minerva.prompting.tool_prompt import (
    HERMES_CALL_FORMAT,
    first_sentence,
    render_tools_for_prompt,
    type_signature,
)
from minerva.parsers.registry import get_parser

AGENT_REQUEST = json.loads((Path(__file__).parent / "data" / "opencode" / "agent_request.json").read_text())
TOOLS = AGENT_REQUEST["tools"]

# SmolLM2 has 8,192 tokens; OpenCode's system prompt is ~9.6k characters (~2.4k tokens), so the
# tool block must stay small to leave room for the conversation and the answer.
MAX_TOOL_BLOCK_CHARS = 4000


def test_opencode_tools_render_well_under_budget():
    block = render_tools_for_prompt(TOOLS)
    assert len(block) < MAX_TOOL_BLOCK_CHARS
    assert len(block) < len(json.dumps(TOOLS)) / 10
    for tool in TOOLS:
        assert f"- {tool['function']['name']}(" in block
    assert "$schema" not in block and "9007199254740991" not in block


def test_signatures_are_typescript_like():
    block = render_tools_for_prompt(TOOLS)
    assert "- bash(command: string, timeout?: integer, workdir?: string):" in block
    assert 'format?: "text"|"markdown"|"html"' in block
    assert "todos: {content: string, status: string, priority: string}[]" in block
    assert type_signature({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "string|null"
    assert type_signature({"type": "array", "items": {"enum": ["a", "b"]}}) == '("a"|"b")[]'


def test_descriptions_keep_their_first_sentence():
    assert first_sentence("Reads a file. Then more.\nDetails") == "Reads a file."
    assert first_sentence("- Fast file pattern matching tool\n- Supports globs") == "Fast file pattern matching tool"
    long = first_sentence("word " * 100)
    assert len(long) <= 160 and long.endswith("…")


def test_the_example_call_is_what_the_hermes_parser_reads():
    block = render_tools_for_prompt(TOOLS)
    example = HERMES_CALL_FORMAT.example("read", '{"filePath": "a.py"}')
    assert HERMES_CALL_FORMAT.example() in block
    message = get_parser("hermes")().parse_complete(example)
    assert message.tool_calls[0].name == "read"
    assert json.loads(message.tool_calls[0].arguments) == {"filePath": "a.py"}
