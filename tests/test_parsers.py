"""Output parsers on recorded model outputs: streamed in every split, and parsed whole."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from minerva.core.events import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallDropped, ToolCallStart
from minerva.parsers.base import (
    ParsedMessage,
    collect_deltas,
    new_call_id,
    partial_marker_length,
)
from minerva.parsers.registry import PARSER_NAMES, UnknownParserError, get_parser

OUTPUTS = Path(__file__).parent / "data" / "model_outputs"
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")


def load_cases() -> list:
    cases = []
    for name in PARSER_NAMES:
        for case in json.loads((OUTPUTS / f"{name}.json").read_text()):
            cases.append(pytest.param(name, case, id=f"{name}: {case['case']}"))
    return cases


CASES = load_cases()


def make_parser(name: str, case: dict, ids=None):
    parser_class = get_parser(name)
    options = {"starts_in_reasoning": case.get("starts_in_reasoning", False)}
    if ids is not None:
        options["id_factory"] = ids
    return parser_class(**options)


def stream(parser, pieces: list[str]) -> list:
    deltas = []
    for piece in pieces:
        deltas.extend(parser.feed(piece))
    deltas.extend(parser.finish())
    return deltas


def chunkings(text: str, seed: int) -> list[list[str]]:
    """Char by char, whole, and random cuts."""
    splits = [[text], list(text)]
    rng = random.Random(seed)
    for _ in range(12):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        splits.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    return splits


def check_invariants(deltas: list) -> None:
    """Ids and names once per call, indices 0, 1, … never backwards; a dropped call says so at once and last;
    every other call's arguments valid JSON."""
    started: dict[int, ToolCallStart] = {}
    last_index = -1
    arguments: dict[int, str] = {}
    dropped: set[int] = set()
    for delta in deltas:
        if isinstance(delta, ToolCallStart):
            assert delta.index == last_index + 1, "indices go 0, 1, … one start each"
            assert CALL_ID.match(delta.id)
            assert delta.name
            started[delta.index] = delta
            last_index = delta.index
        elif isinstance(delta, ToolCallArgs):
            assert delta.index == last_index, "arguments follow their own start, never go back"
            assert delta.index not in dropped and delta.fragment
            arguments[delta.index] = arguments.get(delta.index, "") + delta.fragment
        elif isinstance(delta, ToolCallDropped):
            assert delta.index == last_index and delta.index not in dropped
            dropped.add(delta.index)
        else:
            assert isinstance(delta, TextDelta | ReasoningDelta)
            assert delta.text
    assert len({start.id for start in started.values()}) == len(started)
    for index in started.keys() - dropped:
        assert isinstance(json.loads(arguments[index]), dict)


def check_expected(message: ParsedMessage, case: dict) -> None:
    assert message.content == case["content"]
    assert message.reasoning == case["reasoning"]
    assert [call.name for call in message.tool_calls] == [call["name"] for call in case["tool_calls"]]
    for call, expected in zip(message.tool_calls, case["tool_calls"]):
        assert json.loads(call.arguments) == expected["arguments"]


@pytest.mark.parametrize(("name", "case"), CASES)
def test_parse_complete_on_recorded_output(name, case):
    message = make_parser(name, case).parse_complete(case["text"])
    check_expected(message, case)


@pytest.mark.parametrize(("name", "case"), CASES)
def test_streaming_in_every_split_gives_the_same_message(name, case):
    text = case["text"]
    for seed, pieces in enumerate(chunkings(text, seed=len(text))):
        deltas = stream(make_parser(name, case), pieces)
        check_invariants(deltas)
        check_expected(collect_deltas(deltas), case)


def test_ids_come_from_the_injected_factory():
    counter = itertools.count()
    parser = get_parser("hermes")(id_factory=lambda: f"call_test{next(counter)}")
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    message = parser.parse_complete(text)
    assert [call.id for call in message.tool_calls] == ["call_test0", "call_test1"]


def test_default_call_ids_are_openai_shaped_and_fresh():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(CALL_ID.match(call_id) for call_id in ids)


def test_half_a_marker_is_held_back_and_no_longer_than_needed():
    parser = get_parser("hermes")()
    assert parser.feed("Hello <tool_") == [TextDelta("Hello")]
    assert parser.feed("ca") == []
    deltas = parser.feed('ll>{"name": "x", "arguments": {"a": 1}}</tool_call>')
    assert [type(d) for d in deltas] == [ToolCallStart, ToolCallArgs]
    parser = get_parser("hermes")()
    assert parser.feed("a <b") == [TextDelta("a <b")]
    assert parser.feed("> <thin") == [TextDelta(">")]
    assert parser.feed("g>") == [TextDelta(" <thing>")]


def test_reasoning_streams_as_it_comes():
    parser = get_parser("think")()
    assert parser.feed("<think>Let me") == [ReasoningDelta("Let me")]
    assert parser.feed(" see</thi") == [ReasoningDelta(" see")]
    assert parser.feed("nk>\n\nDone") == [TextDelta("Done")]
    assert parser.finish() == []


def test_think_can_be_turned_off_or_combined():
    text = "<think>hmm</think>answer"
    assert get_parser("hermes")(reasoning=None).parse_complete(text).content == text
    llama_with_think = get_parser("llama3")(reasoning=get_parser("think").default_reasoning)
    message = llama_with_think.parse_complete('<think>call it</think>{"name": "f", "parameters": {"x": 1}}')
    assert message.reasoning == "call it" and message.tool_calls[0].name == "f"


def test_harmony_streams_final_text_before_the_end():
    parser = get_parser("harmony")()
    assert parser.feed("<|channel|>final<|message|>Hel") == [TextDelta("Hel")]
    assert parser.feed("lo<|ret") == [TextDelta("lo")]
    assert parser.feed("urn|>") == []


def test_huge_call_streamed_char_by_char_is_linear_enough():
    body = json.dumps({"filePath": "x.py", "content": "print('hi')\n" * 2000})
    text = f'<tool_call>{{"name": "write", "arguments": {body}}}</tool_call>'
    parser = get_parser("hermes")()
    deltas = stream(parser, list(text))
    assert json.loads(collect_deltas(deltas).tool_calls[0].arguments) == json.loads(body)


# ---- arguments stream as they are written ---------------------------------------------------------

RAW_ARGUMENTS = '{ "command" :"echo \\"}\\" </tool_call> [ok]",\n  "nested": {"a": [1, {"b": null}]} }'
STREAMED_CALLS = [  # (parser, text before the arguments, text after them): one call whose arguments stream
    ("hermes", 'Sure.\n<tool_call>\n{"name": "bash", "arguments": ', '}\n</tool_call>'),
    ("hermes", '<tool_call>[{"type": "function", "name": "bash", "parameters": ', '}]</tool_call>'),
    ("llama3", '{"name": "bash", "parameters": ', '}'),
    ("llama3", '<|python_tag|>{"name": "bash", "parameters": ', '}'),
    ("mistral", "[TOOL_CALLS]bash[ARGS]", ""),
    ("mistral", "[TOOL_CALLS]bash[CALL_ID]a1b2c3d4e[ARGS]", ""),
    ("mistral", '[TOOL_CALLS][{"name": "bash", "arguments": ', ', "id": "a1b2c3d4e"}]'),
    ("json", '{"name": "bash", "arguments": ', '}'),
    ("harmony", "<|start|>assistant<|channel|>commentary to=functions.bash <|constrain|>json<|message|>", "<|call|>"),
]


def fragments_of(deltas: list, index: int = 0) -> list[str]:
    return [d.fragment for d in deltas if isinstance(d, ToolCallArgs) and d.index == index]


@pytest.mark.parametrize(("name", "before", "after"), STREAMED_CALLS)
def test_arguments_stream_as_the_model_writes_them(name, before, after):
    text = before + RAW_ARGUMENTS + after
    for pieces in chunkings(text, seed=7):
        deltas = stream(get_parser(name)(), pieces)
        check_invariants(deltas)
        assert "".join(fragments_of(deltas)) == RAW_ARGUMENTS  # exactly the text written, no more
        message = collect_deltas(deltas)
        assert [c.name for c in message.tool_calls] == ["bash"] and message.content in (None, "Sure.")
        assert json.loads(message.tool_calls[0].arguments) == json.loads(RAW_ARGUMENTS)
    char_by_char = fragments_of(stream(get_parser(name)(), list(text)))
    # nothing decided is held back: one fragment per character (harmony holds a "<" that may open <|call|>)
    held = RAW_ARGUMENTS.count("<") if name == "harmony" else 0
    assert len(char_by_char) == len(RAW_ARGUMENTS) - held


@pytest.mark.parametrize(("name", "before", "after"), STREAMED_CALLS)
def test_fragments_come_before_the_call_ends_and_never_past_the_arguments(name, before, after):
    parser = get_parser(name)()
    head = parser.feed(before + RAW_ARGUMENTS[:10])
    assert [type(d) for d in head][-2:] == [ToolCallStart, ToolCallArgs] and head[-2].name == "bash"
    assert head[-1].fragment == RAW_ARGUMENTS[:10]
    assert fragments_of(parser.feed(RAW_ARGUMENTS[10:])) == [RAW_ARGUMENTS[10:]]
    assert parser.feed(after) == [] and parser.finish() == []


@pytest.mark.parametrize(("name", "before", "after"), STREAMED_CALLS)
def test_a_call_cut_inside_its_arguments_is_dropped_at_finish(name, before, after):
    parser = get_parser(name)()
    shown = parser.feed(before + RAW_ARGUMENTS[:30])
    assert "".join(fragments_of(shown)) == RAW_ARGUMENTS[:30]
    assert parser.finish() == [ToolCallDropped(0)]
    assert collect_deltas(shown + [ToolCallDropped(0)]).tool_calls == ()


@pytest.mark.parametrize("text", [
    '<tool_call>{"arguments": {"command": "ls"}, "name": "bash"}</tool_call>',  # arguments before the name
    '<tool_call>{"name": "bash", "arguments": "{\\"command\\": \\"ls\\"}"}</tool_call>',  # arguments as a string
])
def test_a_call_that_cannot_stream_comes_whole_when_its_region_ends(text):
    parser = get_parser("hermes")()
    cut = text.index("</tool_call>")
    assert parser.feed(text[:cut]) == []
    deltas = parser.feed(text[cut:])
    assert [type(d) for d in deltas] == [ToolCallStart, ToolCallArgs]
    assert deltas[1].fragment == '{"command": "ls"}'


def test_arguments_that_prove_not_to_be_json_drop_their_call():
    parser = get_parser("hermes")()
    deltas = parser.feed('<tool_call>{"name": "read", "arguments": {path: 1}}</tool_call>Done.')
    assert [type(d) for d in deltas] == [ToolCallStart, ToolCallArgs, ToolCallDropped, TextDelta]
    assert collect_deltas(deltas).tool_calls == () and collect_deltas(deltas).content == "Done."


def test_streamed_calls_of_several_regions_are_numbered_in_order():
    text = ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>[{"name": "b", "arguments": {"y": 2}}, {"name": "c", "arguments": {}}]</tool_call>')
    for pieces in chunkings(text, seed=3):
        deltas = stream(get_parser("hermes")(), pieces)
        check_invariants(deltas)
        calls = collect_deltas(deltas).tool_calls
        assert [(c.name, c.arguments) for c in calls] == [("a", '{"x": 1}'), ("b", '{"y": 2}'), ("c", "{}")]


def test_partial_marker_length():
    assert partial_marker_length("abc <tool", ["<tool_call>"]) == 5
    assert partial_marker_length("abc", ["<tool_call>"]) == 0
    assert partial_marker_length("<tool_call>", ["<tool_call>"]) == 0


def test_registry_knows_every_family_and_refuses_others():
    for name in PARSER_NAMES:
        assert callable(get_parser(name))
    with pytest.raises(UnknownParserError):
        get_parser("os")
