"""JSON Schema / tools → GBNF: OpenCode's real schemas, typed refusals, and llama.cpp's own verdict."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.grammar_checker import checker  # noqa: F401  (a fixture)
from minerva.prompting.number_ranges import integer_range, natural_range
from minerva.prompting.structured import (
    ForcedFunction,
    UnsupportedSchemaError,
    json_object_grammar,
    json_schema_to_gbnf,
    tool_call_grammar,
)
from minerva.core.errors import InvalidRequestError
from minerva.parsers.registry import get_parser

OPENCODE = Path(__file__).parent / "data" / "opencode"
AGENT_REQUEST = json.loads((OPENCODE / "agent_request.json").read_text())
TOOLS = AGENT_REQUEST["tools"]
TOOL_SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}

FEATURE_SCHEMAS = {
    "refs, recursion, anyOf, const": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"node": {"type": "object", "properties": {
            "label": {"type": "string", "maxLength": 8},
            "kind": {"const": "node"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["label", "kind"], "additionalProperties": False}},
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"},
                       "size": {"anyOf": [{"type": "integer", "minimum": -3, "maximum": 250}, {"type": "null"}]},
                       "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        "required": ["root", "size"],
    },
    "maps, type lists, allOf, tuples": {
        "type": "object",
        "properties": {
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "when": {"type": ["string", "null"], "format": "date-time"},
            "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "items": False},
            "named": {"allOf": [{"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                                 {"properties": {"b": {"enum": [1, "two", None]}}}]},
            "anything": {},
        },
        "required": ["headers", "point"],
    },
}


def compact(value) -> str:
    """JSON as the grammar lets a model write it."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


# -- conversion, no llama.cpp needed -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOOL_SCHEMAS))
def test_every_opencode_tool_schema_converts_compactly(name):
    grammar = json_schema_to_gbnf(TOOL_SCHEMAS[name])
    assert grammar.startswith("root ::= ")
    assert len(grammar) < 1500


def test_opencode_integer_bounds_become_digit_ranges():
    bash = json_schema_to_gbnf(TOOL_SCHEMAS["bash"])  # timeout: exclusiveMinimum 0, ±2**53-1
    assert "[1-9] [0-9]{0,14}" in bash and '"-"' not in bash.split("root-timeout ::=")[1].split("\n")[0]


def test_natural_and_integer_ranges():
    assert natural_range(0, 9) == '"0" | [1-9]'
    assert natural_range(5, 5) == '"5"'
    assert natural_range(1, 9007199254740991) == "[1-9] [0-9]{0,14}"
    assert integer_range(-5, -5) == '"-" ( "5" )'


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"not": {"type": "string"}}, "not"),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if"),
        ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "number", "multipleOf": 3}, "multipleOf"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "$ref"),
        ({"type": "number", "maximum": 0.5}, "number"),
        ({"type": "object", "minProperties": 1}, "minProperties"),
    ],
)
def test_what_a_grammar_cannot_enforce_is_a_typed_400(schema, keyword):
    with pytest.raises(UnsupportedSchemaError) as raised:
        json_schema_to_gbnf(schema)
    error = raised.value
    assert isinstance(error, InvalidRequestError) and error.status_code == 400
    assert error.param == "response_format"
    assert keyword in error.message


def test_tool_schema_errors_name_the_tool_and_param():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "not": {"const": "a"}}}}}}]
    with pytest.raises(UnsupportedSchemaError) as raised:
        tool_call_grammar(tools, "required")
    assert raised.value.param == "tools" and "tools[0].function.parameters" in raised.value.message


def test_a_tool_string_pattern_is_left_to_the_client_but_a_response_format_pattern_is_refused():
    def tool(properties):
        return [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": properties, "required": ["x"]}}}]

    with_pattern = tool_call_grammar(tool({"x": {"type": "string", "pattern": "^wf_[a-z0-9-]{6,}$"}}), "required")
    assert with_pattern == tool_call_grammar(tool({"x": {"type": "string"}}), "required")
    with pytest.raises(UnsupportedSchemaError):
        json_schema_to_gbnf({"type": "object", "properties": {"x": {"type": "string", "pattern": "a"}}})


def test_forced_function_must_exist():
    with pytest.raises(InvalidRequestError):
        tool_call_grammar(TOOLS, ForcedFunction("nope"))


def test_unknown_keywords_and_annotations_are_ignored_like_validators_do():
    schema = {"type": "string", "description": "d", "default": "x", "examples": ["y"], "x-vendor": 1}
    assert json_schema_to_gbnf(schema) == json_schema_to_gbnf({"type": "string"})


# -- llama.cpp's grammar engine decides ----------------------------------------------------------


def test_llama_cpp_rejects_a_broken_grammar(checker):
    assert not checker.compiles('root ::= "a" | (')


@pytest.mark.parametrize("name", sorted(TOOL_SCHEMAS))
def test_llama_cpp_compiles_every_opencode_tool_grammar(checker, name):
    assert checker.compiles(json_schema_to_gbnf(TOOL_SCHEMAS[name]))


@pytest.mark.parametrize("mode", ["required", "auto_optional", ForcedFunction("read")])
def test_llama_cpp_compiles_the_tool_call_grammars(checker, mode):
    assert checker.compiles(tool_call_grammar(TOOLS, mode))
    assert checker.compiles(tool_call_grammar(TOOLS, mode, parallel=False))


def test_llama_cpp_compiles_feature_schemas_and_json_object(checker):
    for schema in FEATURE_SCHEMAS.values():
        assert checker.compiles(json_schema_to_gbnf(schema))
    assert checker.compiles(json_object_grammar())


OPENCODE_SAMPLES = [
    ("bash", {"command": "ls -la", "timeout": 120000, "workdir": "/repo"}, True),
    ("bash", {"command": "echo \"hi\"\n", "description": "d"}, False),  # undeclared property
    ("bash", {"command": "ls", "timeout": 0}, False),  # exclusiveMinimum 0
    ("bash", {"timeout": 5}, False),  # command is required
    ("read", {"filePath": "/a/b.py", "offset": 0, "limit": 2000}, True),
    ("read", {"filePath": "/a/b.py", "offset": -1}, False),
    ("edit", {"filePath": "f", "oldString": "a\tb", "newString": "é ✓", "replaceAll": True}, True),
    ("todowrite", {"todos": [{"content": "x", "status": "pending", "priority": "high"}]}, True),
    ("todowrite", {"todos": [{"content": "x", "status": "pending"}]}, False),
    ("webfetch", {"url": "https://example.com", "format": "markdown", "timeout": 2.5}, True),
    ("webfetch", {"url": "https://example.com", "format": "pdf"}, False),
    ("task", {"description": "d", "prompt": "p", "subagent_type": "general"}, True),
]


@pytest.mark.parametrize(("name", "instance", "valid"), OPENCODE_SAMPLES)
def test_grammar_accepts_exactly_what_validates(checker, name, instance, valid):
    schema = TOOL_SCHEMAS[name]
    assert checker.accepts(json_schema_to_gbnf(schema), compact(instance)) is valid
    if valid:
        jsonschema.validate(instance, schema)


@pytest.mark.parametrize(
    ("name", "instance", "accepted"),
    [
        ("refs, recursion, anyOf, const",
         {"root": {"label": "a", "kind": "node", "children": [{"label": "b", "kind": "node"}]}, "size": None, "ratio": 0.25},
         True),
        ("refs, recursion, anyOf, const", {"root": {"label": "a", "kind": "node"}, "size": -3, "ratio": 1}, True),
        ("refs, recursion, anyOf, const", {"root": {"label": "a", "kind": "node"}, "size": 251}, False),
        ("refs, recursion, anyOf, const", {"root": {"label": "a", "kind": "node"}, "size": 1, "ratio": 0}, False),
        ("refs, recursion, anyOf, const", {"root": {"label": "a", "kind": "node"}, "size": 1, "ratio": 1.5}, False),
        ("refs, recursion, anyOf, const", {"root": {"label": "toolonglabel", "kind": "node"}, "size": 1}, False),
        ("maps, type lists, allOf, tuples",
         {"headers": {"a": "1", "b": "2"}, "when": None, "point": [1.5, -2], "named": {"a": True, "b": "two"},
          "anything": [1, {"x": None}]},
         True),
        ("maps, type lists, allOf, tuples", {"headers": {}, "point": [1, 2, 3]}, False),
        ("maps, type lists, allOf, tuples", {"headers": {}, "point": [1, 2], "named": {"b": 1}}, False),
    ],
)
def test_feature_schemas_accept_and_reject(checker, name, instance, accepted):
    schema = FEATURE_SCHEMAS[name]
    assert checker.accepts(json_schema_to_gbnf(schema), compact(instance)) is accepted
    if accepted:
        jsonschema.validate(instance, schema)


def test_tool_call_grammar_accepts_our_call_format(checker):
    call = '<tool_call>{"name": "read", "arguments": {"filePath": "a.py"}}</tool_call>'
    bash = '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
    required = tool_call_grammar(TOOLS, "required")
    assert checker.accepts(required, call)
    assert checker.accepts(required, call + "\n" + bash)
    assert not checker.accepts(tool_call_grammar(TOOLS, "required", parallel=False), call + "\n" + bash)
    assert not checker.accepts(required, "Sure! " + call)
    assert not checker.accepts(required, call.replace("read", "delete_everything"))
    forced = tool_call_grammar(TOOLS, ForcedFunction("bash"))
    assert checker.accepts(forced, bash) and not checker.accepts(forced, call)
    optional = tool_call_grammar(TOOLS, "auto_optional")
    assert checker.accepts(optional, "Hello! a < b, <b>bold</b>, <tool_ca")
    assert checker.accepts(optional, "Let me look.\n" + call)
    assert not checker.accepts(optional, "Let me look.\n<tool_call>{oops}</tool_call>")
    message = get_parser("hermes")().parse_complete("Let me look.\n" + call + "\n" + bash)
    assert [c.name for c in message.tool_calls] == ["read", "bash"]


# -- the real test: a constrained greedy generation on SmolLM2 -----------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(smollm2_path), n_ctx=1024, n_threads=2, verbose=False)
    yield llama_cpp, model
    model.close()


def chatml(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt", "schema"),
    [
        ("Give the JSON arguments to fetch https://example.com as text.", TOOL_SCHEMAS["webfetch"]),
        ("Weather request for Paris as JSON.", {
            "type": "object", "additionalProperties": False, "required": ["city", "unit", "days"],
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "unit": {"enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7},
                           "alerts": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}}),
    ],
)
def test_smollm2_constrained_output_validates(smollm2, prompt, schema):
    llama_cpp, model = smollm2
    grammar = llama_cpp.LlamaGrammar.from_string(json_schema_to_gbnf(schema), verbose=False)
    out = model.create_completion(chatml(prompt), max_tokens=96, temperature=0, grammar=grammar)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice["text"]
    jsonschema.validate(json.loads(choice["text"]), schema)


@pytest.mark.slow
def test_smollm2_forced_tool_call_parses(smollm2):
    llama_cpp, model = smollm2
    tools = [tool for tool in TOOLS if tool["function"]["name"] in ("read", "glob")]
    grammar = tool_call_grammar(tools, ForcedFunction("read"), parallel=False)
    out = model.create_completion(
        chatml("Read the file README.md"), max_tokens=96, temperature=0,
        grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False),
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice["text"]
    message = get_parser("hermes")().parse_complete(choice["text"])
    assert [call.name for call in message.tool_calls] == ["read"]
    jsonschema.validate(json.loads(message.tool_calls[0].arguments), TOOL_SCHEMAS["read"])
