"""Output parsers on recorded model outputs: streamed in every split, and parsed whole."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from minerva.core.events import ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart
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
    """Ids and names once per call, indices 0, 1, … never backwards, arguments valid JSON."""
    started: dict[int, ToolCallStart] = {}
    last_index = -1
    arguments: dict[int, str] = {}
    for delta in deltas:
        if isinstance(delta, ToolCallStart):
            assert delta.index == last_index + 1, "indices go 0, 1, … one start each"
            assert CALL_ID.match(delta.id)
            assert delta.name
            started[delta.index] = delta
            last_index = delta.index
        elif isinstance(delta, ToolCallArgs):
            assert delta.index == last_index, "arguments follow their own start, never go back"
            arguments[delta.index] = arguments.get(delta.index, "") + delta.fragment
        else:
            assert isinstance(delta, TextDelta | ReasoningDelta)
            assert delta.text
    assert len({start.id for start in started.values()}) == len(started)
    for index in started:
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


def test_partial_marker_length():
    assert partial_marker_length("abc <tool", ["<tool_call>"]) == 5
    assert partial_marker_length("abc", ["<tool_call>"]) == 0
    assert partial_marker_length("<tool_call>", ["<tool_call>"]) == 0


def test_registry_knows_every_family_and_refuses_others():
    for name in PARSER_NAMES:
        assert callable(get_parser(name))
    with pytest.raises(UnknownParserError):
        get_parser("os")
