"""Anthropic's named SSE events on the real server stack with a scripted engine behind a Qwen3-template fixture
(hermes tool calls, <think> reasoning): the exact event order for each shape of answer, ping while the prompt
is prefilled, an error after the stream started, and a disconnect that frees the slot."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from minerva.core.errors import InvalidRequestError
from minerva.settings import Settings
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.scripted_engine import Script, scripted_loader
from tests.servers import running_server

QWEN3_TEMPLATE = Path(__file__).parent / "data" / "templates" / "qwen3.jinja"
MODEL = "qwen3-tiny"
GATE = threading.Event()  # held shut by the ping test while it counts what arrives before any token
WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL_ARGUMENTS = {"city": "Paris", "note": "a longer argument so the call spans many pieces"}


def _pieces(text: bytes, size: int = 5) -> list[bytes]:
    return [text[i: i + size] for i in range(0, len(text), size)]


def _call(name: str, arguments: dict) -> bytes:
    return b"<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}).encode() + b"\n</tool_call>"


SCRIPTS = {
    "#text": lambda: Script([b"Hello", b" there"]),
    "#think": lambda: Script(_pieces(b"<think>\nA greeting is wanted.\n</think>\n\nHello there!")),
    "#text-call": lambda: Script(_pieces(b"Let me check.\n" + _call("get_weather", CALL_ARGUMENTS))),
    "#gated": lambda: Script([b"Hello", b" there"], gate=GATE),
    "#fail": lambda: Script([b"a", b"b", b"c"], fail_after=2, failure=InvalidRequestError("grammar dead end")),
    "#long": lambda: Script([b"tok "] * 500, piece_delay_s=0.01),
}


def choose(prompt: str, call: int) -> Script:
    for marker in sorted(SCRIPTS, key=len, reverse=True):
        if marker in prompt:
            return SCRIPTS[marker]()
    return Script([b"ok"])


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_gguf(models / f"{MODEL}.gguf", GGUFSpec(name="Qwen3 Tiny Fixture",
                                                 chat_template=QWEN3_TEMPLATE.read_text(encoding="utf-8")))
    loader = scripted_loader(choose)
    settings = Settings(models_dirs=[models], include_default_model=False, keepalive_interval_s=0.1)
    with running_server(settings, loader=loader) as server:
        server.loader = loader
        yield server


def body_for(marker: str, stream: bool = True, **fields) -> dict:
    return {"model": MODEL, "max_tokens": 1000, "stream": stream,
            "messages": [{"role": "user", "content": f"{marker} please"}], **fields}


def parse_sse(lines: list[str]) -> list[tuple[str, dict]]:
    """(event name, data) pairs; every event's name is its data's type."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert data["type"] == name, line
            events.append((name, data))
            name = None
        else:
            assert line == "", line
    return events


def stream_events(server, body: dict) -> list[tuple[str, dict]]:
    url = f"http://127.0.0.1:{server.port}/v1/messages?beta=true"
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(list(response.iter_lines()))


def shape(events: list[tuple[str, dict]]) -> list[str]:
    """The event sequence without pings, each delta named by its delta type, each block start by its block type."""
    names = []
    for name, data in events:
        if name == "ping":
            continue
        if name == "content_block_delta":
            name = data["delta"]["type"]
        elif name == "content_block_start":
            name = f"start:{data['content_block']['type']}"
        names.append(name)
    collapsed: list[str] = []
    for name in names:  # runs of the same delta collapse to one, marked with +
        if collapsed and collapsed[-1].rstrip("+") == name and name.endswith("_delta"):
            collapsed[-1] = name + "+"
        else:
            collapsed.append(name)
    return collapsed


def message_delta(events):
    return next(data for name, data in events if name == "message_delta")


def test_text_event_order(scripted):
    events = stream_events(scripted, body_for("#text"))
    assert shape(events) == ["message_start", "start:text", "text_delta+", "content_block_stop",
                             "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert [data["index"] for name, data in events if name.startswith("content_block")] == [0, 0, 0, 0]
    assert message_delta(events)["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta(events)["usage"]["output_tokens"] == 2


def test_thinking_then_text(scripted):
    events = stream_events(scripted, body_for("#think"))
    assert shape(events) == ["message_start", "start:thinking", "thinking_delta+", "signature_delta",
                             "content_block_stop", "start:text", "text_delta+", "content_block_stop",
                             "message_delta", "message_stop"]
    thinking = "".join(d["delta"]["thinking"] for n, d in events if n == "content_block_delta"
                       and d["delta"]["type"] == "thinking_delta")
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta"
                   and d["delta"]["type"] == "text_delta")
    assert thinking.strip() == "A greeting is wanted." and text == "Hello there!"
    signature = next(d["delta"]["signature"] for n, d in events if n == "content_block_delta"
                     and d["delta"]["type"] == "signature_delta")
    whole = httpx.post(f"http://127.0.0.1:{scripted.port}/v1/messages", json=body_for("#think", stream=False),
                       timeout=30).json()
    assert [block["type"] for block in whole["content"]] == ["thinking", "text"]
    assert whole["content"][0]["thinking"] == thinking and whole["content"][0]["signature"] and signature
    assert whole["content"][1] == {"type": "text", "text": "Hello there!"} and whole["stop_reason"] == "end_turn"


def test_text_then_tool_use_split_across_many_pieces(scripted):
    events = stream_events(scripted, body_for("#text-call", tools=[WEATHER]))
    # the engine's pieces cut the call everywhere; its arguments stream in pieces as they are generated
    assert [name.rstrip("+") for name in shape(events)] == [
        "message_start", "start:text", "text_delta", "content_block_stop", "start:tool_use", "input_json_delta",
        "content_block_stop", "message_delta", "message_stop"]
    block = next(d for n, d in events if n == "content_block_start" and d["content_block"]["type"] == "tool_use")
    assert block["index"] == 1 and block["content_block"]["name"] == "get_weather"
    assert block["content_block"]["id"].startswith("toolu_") and block["content_block"]["input"] == {}
    pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"
              and d["delta"]["type"] == "input_json_delta"]
    assert len(pieces) > 1 and all(d["index"] == 1 for n, d in events if n == "content_block_delta"
                                            and d["delta"]["type"] == "input_json_delta")
    assert "".join(pieces) == json.dumps(CALL_ARGUMENTS)  # the arguments exactly as the model wrote them
    assert message_delta(events)["delta"]["stop_reason"] == "tool_use"
    whole = httpx.post(f"http://127.0.0.1:{scripted.port}/v1/messages",
                       json=body_for("#text-call", stream=False, tools=[WEATHER]), timeout=30).json()
    assert [b["type"] for b in whole["content"]] == ["text", "tool_use"] and whole["stop_reason"] == "tool_use"
    assert whole["content"][0]["text"].strip() == "Let me check."
    assert whole["content"][1]["input"] == CALL_ARGUMENTS and whole["content"][1]["id"].startswith("toolu_")


def test_the_sdk_reads_the_arguments_in_pieces(scripted):
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{scripted.port}", api_key="k", max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=1000, tools=[WEATHER],
                                messages=[{"role": "user", "content": "#text-call please"}]) as stream:
        partials = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    assert len(partials) > 1 and json.loads("".join(partials)) == CALL_ARGUMENTS
    assert final.content[1].type == "tool_use" and final.content[1].input == CALL_ARGUMENTS


def test_a_call_cut_by_max_tokens_streams_in_part_and_is_left_out_of_the_message(scripted):
    body = body_for("#text-call", tools=[WEATHER], max_tokens=20)  # 100 characters: inside the arguments
    events = stream_events(scripted, body)
    assert shape(events) == ["message_start", "start:text", "text_delta+", "content_block_stop", "start:tool_use",
                             "input_json_delta+", "content_block_stop", "message_delta", "message_stop"]
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"
                      and d["delta"]["type"] == "input_json_delta")
    assert json.dumps(CALL_ARGUMENTS).startswith(partial) and partial != json.dumps(CALL_ARGUMENTS)
    assert message_delta(events)["delta"]["stop_reason"] == "max_tokens"
    whole = httpx.post(f"http://127.0.0.1:{scripted.port}/v1/messages", json={**body, "stream": False},
                       timeout=30).json()
    assert [b["type"] for b in whole["content"]] == ["text"] and whole["stop_reason"] == "max_tokens"


def test_tool_result_reaches_the_prompt_as_a_tool_response(scripted):
    messages = [{"role": "user", "content": "#text weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                   "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                              "content": [{"type": "text", "text": "station offline"}]},
                                             {"type": "text", "text": "and now?"}]}]
    response = httpx.post(f"http://127.0.0.1:{scripted.port}/v1/messages", timeout=30,
                          json={"model": MODEL, "max_tokens": 50, "tools": [WEATHER], "messages": messages})
    assert response.status_code == 200, response.text
    prompt = scripted.loader.engines[0].prompts[-1]
    assert '"name": "get_weather", "arguments": {"city": "Oslo"}' in prompt
    assert "<tool_response>\nError: station offline\n</tool_response>" in prompt
    assert prompt.index("station offline") < prompt.index("and now?")


def test_ping_while_the_prompt_is_prefilled(scripted):
    GATE.clear()
    url = f"http://127.0.0.1:{scripted.port}/v1/messages"
    lines: list[str] = []
    try:
        with httpx.stream("POST", url, json=body_for("#gated"), timeout=30) as response:
            for line in response.iter_lines():
                lines.append(line)
                if not GATE.is_set() and lines.count("event: ping") == 3:
                    assert not any("Hello" in seen for seen in lines)  # nothing generated yet
                    GATE.set()
    finally:
        GATE.set()
    events = parse_sse(lines)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[1:4] == ["ping"] * 3
    assert events[names.index("ping")][1] == {"type": "ping"}
    assert [n for n in shape(events)] == ["message_start", "start:text", "text_delta+", "content_block_stop",
                                          "message_delta", "message_stop"]


def test_error_after_the_stream_started(scripted):
    events = stream_events(scripted, body_for("#fail"))
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    assert events[-1][1] == {"type": "error", "error": {"type": "invalid_request_error", "message": "grammar dead end"}}
    whole = httpx.post(f"http://127.0.0.1:{scripted.port}/v1/messages", json=body_for("#fail", stream=False),
                       timeout=30)
    assert whole.status_code == 400 and whole.json() == events[-1][1]


def test_disconnect_mid_stream_frees_the_slot(scripted):
    engines = scripted.loader.engines
    before = sum(engine.cancelled for engine in engines)
    url = f"http://127.0.0.1:{scripted.port}/v1/messages"
    with httpx.stream("POST", url, json=body_for("#long"), timeout=30) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index > 20:
                break
    for _ in range(200):
        if sum(engine.cancelled for engine in engines) > before:
            break
        time.sleep(0.05)
    assert sum(engine.cancelled for engine in engines) == before + 1


def test_errors_before_the_stream_are_in_anthropics_envelope(scripted):
    root = f"http://127.0.0.1:{scripted.port}"
    missing = httpx.post(root + "/v1/messages", json={"model": MODEL, "max_tokens": 5}, timeout=30)
    assert missing.status_code == 400 and missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "invalid_request_error"
    forced = httpx.post(root + "/v1/messages", timeout=30, json={**body_for("#text", stream=True), "tools": [WEATHER],
                                                                 "tool_choice": {"type": "tool", "name": "nope"}})
    assert forced.status_code == 400 and forced.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(root + "/v1/messages/count_tokens", json={"model": "gpt-x", "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_argument_fragments_become_input_json_deltas_in_order():
    """The encoder alone: each core argument fragment is one input_json_delta on its tool's block."""
    from minerva.core.events import ChoiceEnd, ToolCallArgs, ToolCallStart, Usage
    from minerva.dialects.anthropic.message import MessageEncoder, MessageHeader, fold_message

    header = MessageHeader("msg_1", MODEL, 7)
    core = [ToolCallStart(0, "call_a", "get_weather"), ToolCallArgs(0, '{"ci'), ToolCallArgs(0, 'ty": "Pa'),
            ToolCallArgs(0, 'ris"}'), ToolCallStart(1, "call_b", "get_weather"), ToolCallArgs(1, '{"city": "Rome"}'),
            ChoiceEnd(0, "tool_calls"), Usage(7, 12, 3)]
    encoder = MessageEncoder(header)
    encoded = [pair for event in core for pair in encoder.encode(event)]
    deltas = [(d["index"], d["delta"]["partial_json"]) for n, d in encoded if n == "content_block_delta"]
    assert deltas == [(0, '{"ci'), (0, 'ty": "Pa'), (0, 'ris"}'), (1, '{"city": "Rome"}')]
    assert [n for n, _ in encoded].count("content_block_stop") == 2
    message = fold_message(header, core)
    assert [(b["id"], b["input"]) for b in message["content"]] == [("toolu_a", {"city": "Paris"}),
                                                                  ("toolu_b", {"city": "Rome"})]
    assert message["usage"] == {"input_tokens": 4, "output_tokens": 12, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 3}
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
