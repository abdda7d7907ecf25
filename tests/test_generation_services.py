"""The generation services on a scripted engine, with no server and no dialect: core request → core events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minerva.core.errors import ContextLengthExceededError, InvalidRequestError
from minerva.core.events import ChoiceEnd, ReasoningDelta, StreamFailed, TextDelta, ToolCallArgs, ToolCallDropped, \
    ToolCallStart, Usage
from minerva.core.requests import (
    ChatRequest,
    CompletionRequest,
    ForcedTool,
    JsonObjectOutput,
    Limits,
    Message,
    ToolCall,
    ToolSpec,
)
from minerva.formats.model_info import ModelInfo
from minerva.generation.chat import ChoiceState, accept_tool_calls, chat_events, prepare_chat
from minerva.generation.completion import completion_events, prepare_completion
from minerva.generation.prompt import build_chat_prompt
from minerva.parsers.registry import get_parser
from tests.model_fixtures import CHATML_TEMPLATE
from tests.scripted_engine import Script, ScriptedEngine

TEMPLATES = Path(__file__).parent / "data" / "templates"
WEATHER = ToolSpec("get_weather", "Current weather in a city.",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
ASK = (Message("user", "Weather in Paris?"),)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def engine_with(template: str | None, script: Script | None = None, n_ctx: int = 1_000_000) -> ScriptedEngine:
    info = ModelInfo(format="gguf", path=Path("scripted.gguf"), files=(Path("scripted.gguf"),), file_size_bytes=1,
                     tensor_count=1, parameter_count=1, quantization=None, architecture="llama", context_length=None,
                     kind="chat", name="scripted", chat_template=template, vocab_size=0x110000)
    chosen = script or Script([b"ok"])
    return ScriptedEngine(info, lambda prompt, call: chosen, n_ctx=n_ctx)


def pieces(text: str, size: int = 5) -> list[bytes]:
    return [text[i:i + size].encode() for i in range(0, len(text), size)]


def run_chat(request: ChatRequest, engine: ScriptedEngine) -> list:
    async def collect() -> list:
        return [event async for event in chat_events(prepare_chat(request, engine, "m"), engine)]

    return asyncio.run(collect())


# ---- parser and grammar choice -------------------------------------------------------------------

def test_template_without_tools_gets_the_tool_prompt_hermes_parser_and_an_optional_call_grammar():
    prompt = build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,)), engine_with(CHATML_TEMPLATE))
    assert prompt.parser == "hermes" and prompt.grammar is not None
    assert "get_weather" in prompt.text and "<tool_call>" in prompt.text  # tools described in the system prompt


def test_tool_choice_none_sends_no_tools_no_grammar_and_reads_history_as_text():
    history = ASK + (Message("assistant", "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}', "call_1"),)),
                     Message("tool", "18 degrees", tool_call_id="call_1"))
    prompt = build_chat_prompt(ChatRequest(history, tools=(WEATHER,), tool_choice="none"), engine_with(CHATML_TEMPLATE))
    assert prompt.parser is None and prompt.grammar is None
    assert "Current weather" not in prompt.text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt.text
    assert "<tool_response>\n18 degrees\n</tool_response>" in prompt.text


def test_native_tool_template_renders_tools_itself_and_is_only_constrained_when_required():
    qwen3 = (TEMPLATES / "qwen3.jinja").read_text()
    auto = build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,)), engine_with(qwen3))
    assert auto.parser == "hermes" and auto.grammar is None and "get_weather" in auto.text
    required = build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,), tool_choice="required"), engine_with(qwen3))
    assert required.grammar is not None and "get_weather" in required.grammar
    forced = build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,), tool_choice=ForcedTool("get_weather")),
                               engine_with(qwen3))
    assert forced.grammar is not None


def test_reasoning_template_picks_the_think_parser():
    qwen3 = (TEMPLATES / "qwen3.jinja").read_text()
    assert build_chat_prompt(ChatRequest(ASK), engine_with(qwen3)).parser == "think"
    assert build_chat_prompt(ChatRequest(ASK), engine_with(CHATML_TEMPLATE)).parser is None


def test_output_constraint_becomes_a_grammar_and_tools_take_precedence():
    engine = engine_with(CHATML_TEMPLATE)
    assert build_chat_prompt(ChatRequest(ASK, output=JsonObjectOutput()), engine).grammar is not None
    with_tools = build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,), output=JsonObjectOutput()), engine)
    assert with_tools.grammar == build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,)), engine).grammar


def test_forcing_a_tool_that_is_not_offered_is_a_400():
    with pytest.raises(InvalidRequestError) as raised:
        build_chat_prompt(ChatRequest(ASK, tools=(WEATHER,), tool_choice=ForcedTool("nope")), engine_with(None))
    assert raised.value.param == "tool_choice"


# ---- the event stream ----------------------------------------------------------------------------

def test_a_repeated_tool_call_ends_the_choice_with_one_call():
    engine = engine_with(CHATML_TEMPLATE, Script(pieces(CALL + CALL + CALL + "and more text")))
    events = run_chat(ChatRequest(ASK, tools=(WEATHER,)), engine)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    args = [e for e in events if isinstance(e, ToolCallArgs)]
    assert [s.name for s in starts] == ["get_weather"] and {a.index for a in args} == {0}
    assert len(args) > 1 and "".join(a.fragment for a in args) == '{"city": "Paris"}'  # the first call streams
    assert [e for e in events if isinstance(e, ChoiceEnd)] == [ChoiceEnd(0, "tool_calls")]
    assert engine.cancelled == 1  # generation stopped at the repeat, not at max_tokens
    assert not any(isinstance(e, TextDelta) and "more" in e.text for e in events)


def weather_call(arguments: str) -> str:
    return f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>'


def test_a_call_is_held_only_while_it_may_repeat_an_earlier_one():
    parser = get_parser("hermes")()
    state = ChoiceState(0)
    seen = accept_tool_calls(state, parser.feed(weather_call('{"city": "Paris"}') + '<tool_call>{"name": "get_w'))
    assert [type(e) for e in seen] == [ToolCallStart, ToolCallArgs]  # the first call went out at once
    assert accept_tool_calls(state, parser.feed('eather", "arguments": {"city": "Par')) == []  # may be a repeat
    released = accept_tool_calls(state, parser.feed("ma"))  # it is not: all that was held goes out, in order
    assert [type(e) for e in released] == [ToolCallStart, ToolCallArgs, ToolCallArgs]
    assert released[0].index == 1 and "".join(e.fragment for e in released[1:]) == '{"city": "Parma'
    assert accept_tool_calls(state, parser.feed('"}}</tool_call>')) == [ToolCallArgs(1, '"}')]
    assert not state.repeated_call and state.shown_calls == 2


def test_a_streamed_repeat_with_another_name_or_arguments_in_between_is_still_cut():
    script = Script(pieces(weather_call('{"city": "Paris"}') + weather_call('{"city": "Rome"}')
                           + weather_call('{"city": "Paris"}') + weather_call('{"city": "Oslo"}'), 3))
    events = run_chat(ChatRequest(ASK, tools=(WEATHER,)), engine_with(CHATML_TEMPLATE, script))
    calls = [e for e in events if isinstance(e, ToolCallStart | ToolCallArgs)]
    shown = {i: "".join(e.fragment for e in calls if isinstance(e, ToolCallArgs) and e.index == i) for i in (0, 1)}
    assert shown == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'}
    assert [e.index for e in calls if isinstance(e, ToolCallStart)] == [0, 1]
    assert events[-2] == ChoiceEnd(0, "tool_calls")


def test_a_call_cut_by_max_tokens_is_shown_then_dropped_and_the_choice_ends_by_length():
    text = weather_call('{"city": "Paris", "note": "a long argument"}')
    events = run_chat(ChatRequest(ASK, tools=(WEATHER,), limits=Limits(max_tokens=14)),  # 70 characters
                      engine_with(CHATML_TEMPLATE, Script(pieces(text))))
    kinds = [type(e) for e in events]
    assert kinds[0] is ToolCallStart and kinds.count(ToolCallArgs) > 1
    assert kinds[-3:] == [ToolCallDropped, ChoiceEnd, Usage] and events[-2] == ChoiceEnd(0, "length")
    two = run_chat(ChatRequest(ASK, tools=(WEATHER,), logprobs=True, limits=Limits(max_tokens=14, n=2)),
                   engine_with(CHATML_TEMPLATE, Script(pieces(text))))
    assert sorted(e.choice for e in two if isinstance(e, ToolCallDropped)) == [0, 1]
    assert sorted(e.choice for e in two if isinstance(e, ChoiceEnd) and e.reason == "length") == [0, 1]


def test_n_choices_are_merged_with_their_index_and_one_usage():
    engine = engine_with(CHATML_TEMPLATE, Script([b"a", b"b", b"c"]))
    events = run_chat(ChatRequest(ASK, limits=Limits(n=3)), engine)
    for choice in range(3):
        assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == choice) == "abc"
    assert sorted(e.choice for e in events if isinstance(e, ChoiceEnd)) == [0, 1, 2]
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens == 9
    assert usage.prompt_tokens == len(engine.prompts[0])  # the shared prompt is paid for once


def test_stop_sequences_cut_the_text_and_name_the_stop():
    engine = engine_with(CHATML_TEMPLATE, Script(pieces("Hello world. STOP here", 3)))
    events = run_chat(ChatRequest(ASK, limits=Limits(stop=("STOP", "never"))), engine)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello world. "
    assert [e for e in events if isinstance(e, ChoiceEnd)] == [ChoiceEnd(0, "stop_sequence", "STOP")]


def test_natural_end_and_budget_end_are_told_apart():
    assert run_chat(ChatRequest(ASK), engine_with(CHATML_TEMPLATE, Script([b"ok"])))[-2] == ChoiceEnd(0, "end")
    long = engine_with(CHATML_TEMPLATE, Script([b"x"] * 10))
    assert run_chat(ChatRequest(ASK, limits=Limits(max_tokens=4)), long)[-2] == ChoiceEnd(0, "length")


def test_reasoning_comes_as_its_own_events():
    qwen3 = (TEMPLATES / "qwen3.jinja").read_text()
    events = run_chat(ChatRequest(ASK), engine_with(qwen3, Script(pieces("<think>mull it</think>Paris"))))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "mull it"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Paris"


def test_logprobs_ride_on_the_deltas_of_their_tokens():
    engine = engine_with(CHATML_TEMPLATE, Script([b"a", b"b"]))
    events = run_chat(ChatRequest(ASK, logprobs=True), engine)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.logprobs[0].piece for d in deltas] == [b"a", b"b"]


def test_a_typed_failure_mid_stream_is_the_last_event():
    failure = InvalidRequestError("grammar dead end")
    engine = engine_with(CHATML_TEMPLATE, Script([b"a", b"b", b"c"], fail_after=2, failure=failure))
    events = run_chat(ChatRequest(ASK), engine)
    assert events[-1] == StreamFailed(failure) and not any(isinstance(e, Usage) for e in events)


def test_the_budget_is_what_the_context_has_left_and_an_overlong_prompt_is_refused():
    engine = engine_with(CHATML_TEMPLATE, n_ctx=200)
    prepared = prepare_chat(ChatRequest(ASK, limits=Limits(max_tokens=100_000)), engine, "m")
    prompt = len(prepared.generations[0].prompt_tokens)
    assert prepared.generations[0].max_tokens == 200 - prompt
    with pytest.raises(ContextLengthExceededError):
        prepare_chat(ChatRequest((Message("user", "x" * 300),)), engine, "m")


def test_completions_echo_first_and_count_each_prompt_once():
    engine = engine_with(None, Script([b"1", b"2"]))
    request = CompletionRequest(("ab", (120, 121)), limits=Limits(n=2), echo=True)

    async def collect() -> list:
        return [e async for e in completion_events(prepare_completion(request, engine, "m"), engine)]

    events = asyncio.run(collect())
    assert [e.text for e in events[:4]] == ["ab", "ab", "xy", "xy"]  # echoes of each choice's prompt
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.prompt_tokens == 4 and usage.completion_tokens == 8
    assert sum(isinstance(e, ChoiceEnd) for e in events) == 4
