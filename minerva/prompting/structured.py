"""JSON Schema and tool lists → llama.cpp GBNF grammars (root rule ``root``).

Our own converter, not llama-cpp-python's: that one silently drops what it cannot constrain,
and we must refuse it instead (``UnsupportedSchemaError``, a 400). The grammar accepts a subset of
the schema's instances, never more: properties come in schema order, undeclared properties
are not generated, integer parts have at most 15 digits, and whitespace is limited to one
optional space so tiny models cannot ramble. ``format`` is an annotation in draft 2020-12 and
is not enforced; ``oneOf`` is treated as ``anyOf``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from minerva.core.requests import TextGrammar
from minerva.prompting.freeform import freeform_arguments_rules
from minerva.prompting.gbnf import gbnf_literal
from minerva.prompting.number_ranges import MAX_INT_DIGITS, decimal_options, integer_range
from minerva.prompting.tool_prompt import HERMES_CALL_FORMAT, ToolCallFormat
from minerva.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)


class UnsupportedSchemaError(InvalidRequestError):
    """A JSON Schema uses something the grammar cannot enforce (400)."""

    code = "unsupported_schema"


# keywords with no effect on which instances are valid
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$anchor", "title", "description", "default", "examples",
     "deprecated", "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding",
     "$defs", "definitions", "discriminator", "nullable"}
)
# keywords we cannot enforce (or only in trivial cases, checked where handled)
UNSUPPORTED = frozenset(
    {"not", "if", "then", "else", "pattern", "patternProperties", "propertyNames",
     "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties",
     "unevaluatedItems", "contains", "minContains", "maxContains", "multipleOf",
     "minProperties", "maxProperties", "$dynamicRef", "$recursiveRef"}
)

TOOL_UNENFORCED = frozenset({"pattern"})
"""Left unenforced in tool schemas: agents' tools carry string patterns (Claude Code's do) and
refusing the whole request would leave the agent with no tools at all; the client validates calls."""

PRIMITIVE_RULES = {
    "ws": '" "?',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}"',
    "array": '"[" ws ( value ( "," ws value )* )? "]"',
    "string": '"\\"" char* "\\""',
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "number": 'integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,14} )',
    "boolean": '"true" | "false"',
    "null": '"null"',
}
PRIMITIVE_DEPENDENCIES = {
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("ws", "string", "value"),
    "array": ("ws", "value"),
    "string": ("char",),
    "number": ("integer",),
}


def json_literal(value: object) -> str:
    """The GBNF literal of one JSON value, written compactly."""
    return gbnf_literal(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


# -- integer ranges ------------------------------------------------------------------------------


# -- the converter -------------------------------------------------------------------------------


class SchemaConverter:
    """Turns one JSON Schema (with local ``$ref``s) into GBNF rules."""

    def __init__(self, root_schema: object, *, param: str, location: str,
                 unenforced: frozenset[str] = frozenset()):
        self._root = root_schema
        self._param = param
        self._location = location
        self._unenforced = unenforced  # unsupported keywords to leave unenforced (logged) instead of refusing
        self._noted: set[str] = set()
        self._rules: dict[str, str] = {}
        self._bodies: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        self._primitives: set[str] = set()

    def visit_root(self, schema: object, *, location: str, hint: str) -> str:
        """Convert a schema whose local ``$ref``s resolve against itself; return its rule name."""
        self._root = schema
        self._refs = {}
        self._location = location
        return self.visit(schema, "", hint)

    def fail(self, path: str, what: str) -> UnsupportedSchemaError:
        """The error for an unsupported construct at ``path``."""
        where = f"{self._location}{path}" if path else self._location or "schema"
        message = f"{where}: {what} cannot be enforced by a grammar"
        return UnsupportedSchemaError(message, param=self._param)

    def rules(self) -> dict[str, str]:
        """All rules produced so far, the primitives they use included."""
        needed = set(self._primitives) | {"ws"}
        pending = list(needed)
        while pending:
            for dependency in PRIMITIVE_DEPENDENCIES.get(pending.pop(), ()):
                if dependency not in needed:
                    needed.add(dependency)
                    pending.append(dependency)
        primitives = {name: PRIMITIVE_RULES[name] for name in PRIMITIVE_RULES if name in needed}
        return {**self._rules, **primitives}

    def primitive(self, name: str) -> str:
        """Reference a shared primitive rule."""
        self._primitives.add(name)
        return name

    def add_rule(self, name_hint: str, body: str) -> str:
        """Add a rule (reusing an identical one); return its name."""
        if body in self._bodies:
            return self._bodies[body]
        name = self._fresh_name(name_hint)
        self._rules[name] = body
        self._bodies[body] = name
        return name

    def fresh_prefix(self, hint: str) -> str:
        """A name no rule has yet, to prefix a family of rules built elsewhere."""
        return self._fresh_name(hint)

    def add_named_rules(self, rules: Mapping[str, str], body: str, *, hint: str) -> str:
        """Add rules built elsewhere under their own names, then a rule ``body`` using them; return its name."""
        self._rules.update(rules)
        self.primitive("ws")
        return self.add_rule(hint, body)

    def _fresh_name(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "rule"
        if base in PRIMITIVE_RULES:
            base += "-x"
        name, counter = base, 1
        while name in self._rules or name in PRIMITIVE_RULES:
            counter += 1
            name = f"{base}{counter}"
        return name

    # -- schemas --

    def visit(self, schema: object, path: str, hint: str) -> str:
        """A GBNF expression (usually a rule name) for the instances of ``schema``."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise self.fail(path, "a false schema (nothing is allowed)")
        if not isinstance(schema, Mapping):
            raise self.fail(path, f"a schema of type {type(schema).__name__}")
        for keyword in schema:
            if keyword in UNSUPPORTED and keyword not in self._unenforced:
                raise self.fail(path, f"'{keyword}'")
            if keyword in UNSUPPORTED and keyword not in self._noted:
                self._noted.add(keyword)
                logger.info("%s%s: '%s' is not enforced by the grammar (left to the client's validation)",
                            self._location, path, keyword)
        if schema.get("uniqueItems") is True:
            raise self.fail(path, "'uniqueItems'")
        if "$ref" in schema:
            extra = set(schema) - ANNOTATIONS - {"$ref"}
            if extra:
                raise self.fail(path, f"'$ref' beside {sorted(extra)}")
            return self._ref(schema["$ref"], path)
        if "allOf" in schema:
            return self.visit(self._merge_all_of(schema, path), path, hint)
        if "const" in schema:
            return self.add_rule(hint, json_literal(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(path, "an empty 'enum'")
            return self.add_rule(hint, " | ".join(json_literal(value) for value in values))
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self._any_of(schema, keyword, path, hint)
        types = schema.get("type")
        if types is None:
            types = self._implied_type(schema)
        if isinstance(types, list):
            if not types:
                raise self.fail(path, "an empty 'type' list")
            options = [self._typed(schema, kind, path, f"{hint}-{kind}") for kind in types]
            return self.add_rule(hint, " | ".join(options))
        return self._typed(schema, types, path, hint)

    def _implied_type(self, schema: Mapping) -> str | None:
        if any(key in schema for key in ("properties", "additionalProperties", "required")):
            return "object"
        if any(key in schema for key in ("items", "prefixItems", "minItems", "maxItems")):
            return "array"
        if any(key in schema for key in ("minLength", "maxLength")):
            return "string"
        numeric = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        if any(key in schema for key in numeric):
            return "number"
        return None

    def _typed(self, schema: Mapping, kind: str | None, path: str, hint: str) -> str:
        if kind is None:
            return self.primitive("value")
        if kind == "object":
            return self._object(schema, path, hint)
        if kind == "array":
            return self._array(schema, path, hint)
        if kind == "string":
            return self._string(schema, path, hint)
        if kind in ("integer", "number"):
            try:
                return (self._integer if kind == "integer" else self._number)(schema, path, hint)
            except ValueError:  # natural_range: nothing with at most MAX_INT_DIGITS digits
                raise self.fail(path, f"an {kind} range beyond {MAX_INT_DIGITS} digits") from None
        if kind == "boolean":
            return self.primitive("boolean")
        if kind == "null":
            return self.primitive("null")
        raise self.fail(path, f"type {kind!r}")

    def _ref(self, ref: object, path: str) -> str:
        target = self._resolve(ref, path)
        if ref in self._refs:
            return self._refs[ref]
        name = self._fresh_name("ref-" + (str(ref).rsplit("/", 1)[-1] or "root"))
        self._refs[ref] = name
        self._rules[name] = ""  # reserve the name; recursion refers to it
        self._rules[name] = self.visit(target, str(ref), name + "-body")
        return name

    def _merge_all_of(self, schema: Mapping, path: str) -> dict:
        merged: dict = {key: value for key, value in schema.items() if key != "allOf"}
        for index, part in enumerate(schema["allOf"]):
            while isinstance(part, Mapping) and "$ref" in part and len(part) == 1:
                part = self._resolve(part["$ref"], path)
            if not isinstance(part, Mapping):
                raise self.fail(f"{path}.allOf[{index}]", "a non-object member")
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                elif key in ANNOTATIONS:
                    continue
                elif key in merged and merged[key] != value:
                    where = f"{path}.allOf[{index}]"
                    raise self.fail(where, f"'allOf' members that disagree on '{key}'")
                else:
                    merged[key] = value
        return merged

    def _resolve(self, ref: object, path: str) -> object:
        """The schema a local ``$ref`` (``#``, ``#/$defs/x``, ``#/definitions/x``…) points to."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(path, f"a non-local '$ref' {ref!r}")
        target: object = self._root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise self.fail(path, f"'$ref' {ref!r} pointing nowhere")
            target = target[part]
        return target

    def _any_of(self, schema: Mapping, keyword: str, path: str, hint: str) -> str:
        branches = schema[keyword]
        if not isinstance(branches, list) or not branches:
            raise self.fail(path, f"an empty '{keyword}'")
        siblings = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k != keyword}
        options = []
        for index, branch in enumerate(branches):
            if siblings and isinstance(branch, Mapping):
                branch = {**siblings, **branch}
            options.append(self.visit(branch, f"{path}.{keyword}[{index}]", f"{hint}-{index}"))
        return self.add_rule(hint, " | ".join(options))

    def _object(self, schema: Mapping, path: str, hint: str) -> str:
        properties = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        additional = schema.get("additionalProperties", True)
        for name in required:
            if name not in properties:
                if additional is False:
                    raise self.fail(path, f"required property {name!r} that is not allowed")
                extra = additional if isinstance(additional, Mapping) else True
                properties = {**properties, name: extra}
        if not properties:
            if additional is False:
                return self.add_rule(hint, '"{" ws "}"')
            if additional is True or additional == {}:
                return self.primitive("object")
            value = self.visit(additional, f"{path}.additionalProperties", f"{hint}-value")
            pair = f'{self.primitive("string")} ":" ws {value}'
            return self.add_rule(hint, f'"{{" ws ( {pair} ( "," ws {pair} )* )? "}}"')
        pairs: dict[str, str] = {}
        for name, subschema in properties.items():
            if subschema is False:
                continue
            value = self.visit(subschema, f"{path}.properties.{name}", f"{hint}-{name}")
            pairs[name] = f"{json_literal(name)} \":\" ws {value}"
        names = list(pairs)
        inner = self._property_sequence(names, set(required), pairs, hint)
        return self.add_rule(hint, f'"{{" ws {inner} "}}"' if inner else '"{" ws "}"')

    def _property_sequence(
        self, names: list[str], required: set[str], pairs: dict[str, str], hint: str
    ) -> str:
        """Properties in schema order, optional ones skippable, commas only between present ones."""
        memo: dict[tuple[int, bool], str] = {}

        def sequence(index: int, first: bool) -> str:
            if index == len(names):
                return ""
            if (index, first) in memo:
                return memo[(index, first)]
            name = names[index]
            follow = sequence(index + 1, False)
            present = ("" if first else '"," ws ') + pairs[name] + (f" {follow}" if follow else "")
            if name in required:
                body = present
            else:
                absent = sequence(index + 1, first)
                body = f"( {present} | {absent} )" if absent else f"( {present} )?"
            rule = self.add_rule(f"{hint}-{'first' if first else 'then'}-{name}", body)
            memo[(index, first)] = rule
            return rule

        return sequence(0, True)

    def _array(self, schema: Mapping, path: str, hint: str) -> str:
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        elements = [
            self.visit(sub, f"{path}.prefixItems[{i}]", f"{hint}-{i}")
            for i, sub in enumerate(prefix)
        ]
        if prefix:
            if items is not False:
                raise self.fail(path, "'prefixItems' followed by more items")
            if min_items > len(prefix) or (max_items is not None and max_items < len(prefix)):
                raise self.fail(path, "'prefixItems' with 'minItems'/'maxItems'")
            seq = ' "," ws '.join(elements)
            return self.add_rule(hint, f'"[" ws {seq} "]"')
        if items is False:
            return self.add_rule(hint, '"[" ws "]"')
        item = self.visit(items, f"{path}.items", f"{hint}-item")
        if max_items == 0:
            return self.add_rule(hint, '"[" ws "]"')
        more_min = max(min_items - 1, 0)
        more_max = "" if max_items is None else str(int(max_items) - 1)
        repeat = f'( "," ws {item} ){{{more_min},{more_max}}}'
        if (more_min, more_max) == (0, ""):
            repeat = f'( "," ws {item} )*'
        seq = f"{item} {repeat}"
        body = f'"[" ws {seq} "]"' if min_items > 0 else f'"[" ws ( {seq} )? "]"'
        return self.add_rule(hint, body)

    def _string(self, schema: Mapping, path: str, hint: str) -> str:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if low == 0 and high is None:
            return self.primitive("string")
        char = self.primitive("char")
        upper = "" if high is None else int(high)
        return self.add_rule(hint, f'"\\"" {char}{{{low},{upper}}} "\\""')

    def _bounds(self, schema: Mapping, path: str) -> tuple[float | None, bool, float | None, bool]:
        """(low, low inclusive, high, high inclusive), the tightest of the given bounds."""
        low, low_incl, high, high_incl = None, True, None, True
        for keyword, is_low, inclusive in (
            ("minimum", True, True), ("exclusiveMinimum", True, False),
            ("maximum", False, True), ("exclusiveMaximum", False, False),
        ):
            value = schema.get(keyword)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(path, f"a non-numeric '{keyword}'")
            if is_low and (low is None or value > low or (value == low and not inclusive)):
                low, low_incl = value, inclusive
            if not is_low and (high is None or value < high or (value == high and not inclusive)):
                high, high_incl = value, inclusive
        return low, low_incl, high, high_incl

    def _integer(self, schema: Mapping, path: str, hint: str) -> str:
        low, low_incl, high, high_incl = self._bounds(schema, path)
        if low is None and high is None:
            return self.primitive("integer")
        int_low = None if low is None else (math.ceil(low) if low_incl else math.floor(low) + 1)
        int_high = None
        if high is not None:
            int_high = math.floor(high) if high_incl else math.ceil(high) - 1
        if int_low is not None and int_high is not None and int_low > int_high:
            raise self.fail(path, "an empty integer range")
        return self.add_rule(hint, integer_range(int_low, int_high))

    def _number(self, schema: Mapping, path: str, hint: str) -> str:
        low, low_incl, high, high_incl = self._bounds(schema, path)
        if low is None and high is None:
            return self.primitive("number")
        for bound in (low, high):
            if bound is not None and bound != int(bound):
                raise self.fail(path, "a non-integer bound on a number")
        options = []
        if high is None or high >= 0:  # x >= 0: magnitude from max(low, 0) to high
            a, a_incl = (int(low), low_incl) if low is not None and low >= 0 else (0, True)
            b = None if high is None else int(high)
            options += decimal_options(a, a_incl, b, high_incl, "")
        if low is None or low < 0:  # x < 0: magnitude from max(-high, 0) to -low
            a, a_incl = (-int(high), high_incl) if high is not None and high < 0 else (0, False)
            b = None if low is None else -int(low)
            options += decimal_options(a, a_incl, b, low_incl, '"-" ')
        if not options:
            raise self.fail(path, "an empty number range")
        return self.add_rule(hint, " | ".join(options))


def render_grammar(rules: Mapping[str, str]) -> str:
    """GBNF text, one rule per line, ``root`` first."""
    ordered = sorted(rules, key=lambda name: name != "root")
    return "\n".join(f"{name} ::= {rules[name]}" for name in ordered) + "\n"


def json_schema_to_gbnf(schema: Mapping | bool, *, param: str = "response_format") -> str:
    """A GBNF grammar whose root accepts JSON instances of ``schema`` (whitespace-limited)."""
    converter = SchemaConverter(schema, param=param, location="json_schema")
    root = converter.visit(schema, "", "root")
    rules = converter.rules()
    if root != "root":
        rules["root"] = root
    return render_grammar(rules)


def json_object_grammar() -> str:
    """A GBNF grammar for any JSON object (``response_format: {"type": "json_object"}``)."""
    converter = SchemaConverter({}, param="response_format", location="json_object")
    converter.primitive("object")
    rules = converter.rules()
    rules["root"] = "object"
    return render_grammar(rules)


@dataclass(frozen=True)
class ForcedFunction:
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: exactly this function."""

    name: str


ToolGrammarMode = Literal["required", "auto_optional"] | ForcedFunction


def tool_call_grammar(
    tools: Sequence[Mapping],
    mode: ToolGrammarMode,
    wrapper: ToolCallFormat = HERMES_CALL_FORMAT,
    *,
    parallel: bool = True,
    freeform: Mapping[str, TextGrammar] | None = None,
) -> str:
    """A GBNF grammar for tool calls written in ``wrapper``'s format.

    ``required``: one call (several when ``parallel``); a ``ForcedFunction``: calls of that one
    function; ``auto_optional``: free text that never opens a call, optionally followed by calls.
    ``freeform``: by tool name, the grammar a free-form tool's ``input`` string must match.
    """
    converter, arguments = _argument_rules(tools, freeform)
    if isinstance(mode, ForcedFunction):
        if mode.name not in arguments:
            message = f"tool_choice names {mode.name!r}, which is not in tools"
            raise InvalidRequestError(message, param="tool_choice")
        arguments = {mode.name: arguments[mode.name]}
    elif not arguments:
        raise InvalidRequestError("tool_choice needs at least one tool", param="tools")
    one_call = converter.add_rule("tool-call", wrapper.grammar_call(list(arguments.items())))
    separator = gbnf_literal(wrapper.separator)
    calls = f"{one_call} ( {separator} {one_call} )*" if parallel else one_call
    rules = converter.rules()
    if mode == "auto_optional":
        rules.update(text_without_rules(wrapper.prefix, "free-text"))
        rules["root"] = f"free-text ( {calls} )?"
    else:
        rules["root"] = calls
    return render_grammar(rules)


def forced_arguments_grammar(
    tools: Sequence[Mapping], name: str, *, before: str = "", after: str = "",
    freeform: Mapping[str, TextGrammar] | None = None,
) -> str:
    """A GBNF grammar for ``before``, the arguments object of a call to ``name``, then ``after`` (the start of
    the call is in the prompt)."""
    converter, arguments = _argument_rules(tools, freeform)
    if name not in arguments:
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
    rules = converter.rules()
    rules["root"] = " ".join(part for part in (before and gbnf_literal(before), arguments[name],
                                               after and gbnf_literal(after)) if part)
    return render_grammar(rules)


def _argument_rules(
    tools: Sequence[Mapping], freeform: Mapping[str, TextGrammar] | None
) -> tuple[SchemaConverter, dict[str, str]]:
    """The converter holding every tool's argument rules, and each tool's rule name."""
    converter = SchemaConverter({}, param="tools", location="tools", unenforced=TOOL_UNENFORCED)
    arguments: dict[str, str] = {}
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            message = f"tools[{index}] is not a function tool with a name"
            raise InvalidRequestError(message, param="tools")
        name = function["name"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        location = f"tools[{index}].function.parameters"
        text_grammar = (freeform or {}).get(name)
        found = text_grammar and freeform_arguments_rules(name, text_grammar, converter.fresh_prefix(f"{name}-input"))
        if found:
            arguments[name] = converter.add_named_rules(found[1], found[0], hint=f"{name}-args")
        else:
            arguments[name] = converter.visit_root(parameters, location=location, hint=f"{name}-args")
    return converter, arguments


def text_without_rules(forbidden: str, name: str) -> dict[str, str]:
    """Rules for any text that never contains ``forbidden`` (a KMP automaton, one rule a state)."""
    size = len(forbidden)

    def next_state(state: int, char: str) -> int:
        """How much of ``forbidden`` is matched after reading ``char`` with ``state`` matched."""
        text = forbidden[:state] + char
        return next(k for k in range(min(len(text), size), -1, -1) if text.endswith(forbidden[:k]))

    def state_name(state: int) -> str:
        return name if state == 0 else f"{name}-{state}"

    rules = {}
    alphabet = sorted(set(forbidden))
    others = "".join(_class_char(char) for char in alphabet)
    for state in range(size):
        targets: dict[int, list[str]] = {}
        for char in alphabet:
            targets.setdefault(next_state(state, char), []).append(char)
        options = []
        for target, chars in sorted(targets.items()):
            if target == size:
                continue  # the forbidden text itself
            if target == 0:  # merged with every other character
                options.append(f"[^{''.join(_class_char(c) for c in alphabet if c not in chars)}] {name}")
            elif len(chars) == 1:
                options.append(f"{gbnf_literal(chars[0])} {state_name(target)}")
            else:
                options.append(f"[{''.join(_class_char(c) for c in chars)}] {state_name(target)}")
        if 0 not in targets:
            options.append(f"[^{others}] {name}")
        rules[state_name(state)] = '"" | ' + " | ".join(options)  # an empty alternative xgrammar (vLLM) parses too
    return rules


def _class_char(char: str) -> str:
    return "\\" + char if char in "]^-\\[" else char
