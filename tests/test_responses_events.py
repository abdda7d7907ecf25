"""Responses stream events on a scripted engine behind the real server stack: the exact event order for
text, reasoning, split and namespaced tool calls, custom tools, failures and a disconnect."""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from minerva.core.errors import InvalidRequestError
from minerva.core.events import ChoiceEnd, ToolCallArgs, ToolCallDropped, ToolCallStart, Usage
from minerva.dialects.openai_responses.output import ResponseWriter
from minerva.dialects.openai_responses.protocol import Tool
from minerva.dialects.openai_responses.tools import tool_set
from minerva.settings import Settings
from tests.model_fixtures import GGUFSpec, write_gguf
from tests.scripted_engine import Script, scripted_loader
from tests.servers import RunningServer, running_server

QWEN3 = "qwen3-tiny"  # a fixture GGUF with Qwen3's template: hermes tool calls and <think> reasoning
QWEN3_TEMPLATE = Path(__file__).resolve().parent / "data" / "templates" / "qwen3.jinja"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
TEXT_ITEM = ["response.output_item.added", "response.content_part.added"]
TEXT_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def _call(name: str, arguments: dict) -> bytes:
    return b"<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}).encode() + b"\n</tool_call>"


def _pieces(text: bytes, size: int = 5) -> list[bytes]:
    return [text[i: i + size] for i in range(0, len(text), size)]


SCRIPTS = {
    "#words": lambda: Script([b"one", b" two", b" three"]),
    "#think": lambda: Script(_pieces(b"<think>\nA greeting is wanted.\n</think>\n\nHello there!")),
    "#call": lambda: Script(_pieces(_call("get_weather", {"city": "Paris"}))),
    "#namespaced": lambda: Script(_pieces(_call("weather_v1.get_weather", {"city": "Oslo"}))),
    "#patch": lambda: Script(_pieces(_call("apply_patch", {"input": "*** Begin Patch\n*** End Patch"}))),
    "#fail": lambda: Script([b"a", b"b", b"c"], fail_after=2, failure=InvalidRequestError("grammar dead end")),
    "#slow": lambda: Script([b"Hello", b" there"], first_delay_s=0.45),
    "#long": lambda: Script([b"x"] * 400, piece_delay_s=0.01),
}


def choose(prompt: str, call: int) -> Script:
    """The script whose marker the prompt's last user turn holds, else "ok"."""
    last_user = prompt.rsplit("<|im_start|>user", 1)[-1]
    for marker, script in SCRIPTS.items():
        if marker in last_user:
            return script()
    return Script([b"ok"])


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("qwen3-models")
    write_gguf(models / f"{QWEN3}.gguf", GGUFSpec(name="Qwen3 Tiny", chat_template=QWEN3_TEMPLATE.read_text()))
    loader = scripted_loader(choose)
    with running_server(Settings(models_dirs=[models], keepalive_interval_s=0.1), loader=loader) as server:
        server.loader = loader  # type: ignore[attr-defined]
        yield server


def frames(server: RunningServer, **body) -> list[dict | str]:
    """The SSE frames of a streamed response: each event's data (checked against its `event:` name), or
    "keep-alive" for a comment."""
    response = httpx.post(server.base_url + "/responses", json={"model": QWEN3, "stream": True, **body}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    out: list[dict | str] = []
    for frame in response.text.split("\n\n"):
        if not frame:
            continue
        if frame.startswith(":"):
            out.append("keep-alive")
            continue
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def _sdk_event_types() -> dict[str, type]:
    members = typing.get_args(typing.get_args(ResponseStreamEvent)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


SDK_EVENTS = _sdk_event_types()


def events(server: RunningServer, **body) -> list[dict]:
    """The events of a streamed response (keep-alives dropped), with sequence numbers 0, 1, 2…, each one
    valid (strictly, not just parsed) as the openai SDK's model of its type."""
    items = [f for f in frames(server, **body) if isinstance(f, dict)]
    assert [e["sequence_number"] for e in items] == list(range(len(items)))
    for item in items:
        SDK_EVENTS[item["type"]].model_validate(item)
    return items


def types(items: list[dict]) -> list[str]:
    return [e["type"] for e in items]


def test_text_event_order(scripted):
    items = events(scripted, input="#words")
    assert types(items) == ["response.created", "response.in_progress", *TEXT_ITEM,
                            *["response.output_text.delta"] * 3, *TEXT_DONE, "response.completed"]
    assert [e["delta"] for e in items if e["type"] == "response.output_text.delta"] == ["one", " two", " three"]
    final = items[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "one two three"
    assert items[-2]["item"] == final["output"][0] and items[2]["item"]["id"] == final["output"][0]["id"]
    whole = httpx.post(scripted.base_url + "/responses", json={"model": QWEN3, "input": "#words"}, timeout=30)
    assert Response.model_validate(whole.json()).output_text == "one two three"
    usage = final["usage"]
    assert usage["output_tokens"] == 3 and usage["total_tokens"] == usage["input_tokens"] + 3


def test_reasoning_then_text(scripted):
    items = events(scripted, input="#think", include=["reasoning.encrypted_content"])
    kinds = types(items)
    reasoning_deltas = kinds.count("response.reasoning_text.delta")
    text_deltas = kinds.count("response.output_text.delta")
    assert reasoning_deltas and text_deltas
    assert kinds == ["response.created", "response.in_progress", *TEXT_ITEM,
                     *["response.reasoning_text.delta"] * reasoning_deltas,
                     "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
                     *TEXT_ITEM, *["response.output_text.delta"] * text_deltas, *TEXT_DONE, "response.completed"]
    assert all(e["content_index"] == 0 for e in items if e["type"] == "response.reasoning_text.delta")
    reasoning, message = items[-1]["response"]["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"][0]["text"].strip() == "A greeting is wanted."
    assert message["content"][0]["text"] == "Hello there!"
    assert reasoning["encrypted_content"]
    usage = items[-1]["response"]["usage"]  # the thinking's tokens, not the answer's
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] < usage["output_tokens"]
    # echoed back statelessly, only through encrypted_content, the reasoning reaches the template again
    engine = scripted.loader.engines[0]
    httpx.post(scripted.base_url + "/responses", timeout=30, json={"model": QWEN3, "store": False, "input": [
        {"role": "user", "content": "#think"},
        {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": reasoning["encrypted_content"]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}], "tools": [WEATHER]})
    assert "<think>\nA greeting is wanted." in engine.prompts[-1] and "sunny" in engine.prompts[-1]


def test_function_call_split_across_pieces(scripted):
    items = events(scripted, input="#call", tools=[WEATHER])
    kinds = types(items)
    deltas = [e["delta"] for e in items if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and "".join(deltas) == '{"city": "Paris"}'  # in pieces, exactly as generated
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * len(deltas),
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    added, done = items[2]["item"], items[-2]["item"]
    assert added["type"] == "function_call" and added["arguments"] == "" and added["name"] == "get_weather"
    assert done["arguments"] == "".join(deltas) and done["call_id"] == added["call_id"] and "namespace" not in done
    assert items[-3]["arguments"] == done["arguments"]
    assert items[-1]["response"]["output"] == [done]


def test_a_call_cut_by_max_output_tokens_ends_incomplete_and_is_left_out(scripted):
    items = events(scripted, input="#call", tools=[WEATHER], max_output_tokens=12)  # 60 characters: mid-arguments
    kinds = types(items)
    deltas = [e["delta"] for e in items if e["type"] == "response.function_call_arguments.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * len(deltas), "response.output_item.done",
                     "response.incomplete"]
    assert len(deltas) > 1 and '{"city": "Paris"}'.startswith("".join(deltas))
    assert items[-2]["item"]["status"] == "incomplete" and items[-2]["item"]["arguments"] == "".join(deltas)
    final = items[-1]["response"]
    assert final["status"] == "incomplete" and final["output"] == []
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    whole = httpx.post(scripted.base_url + "/responses", timeout=30, json={
        "model": QWEN3, "input": "#call", "tools": [WEATHER], "max_output_tokens": 12}).json()
    assert whole["status"] == "incomplete" and whole["output"] == []


def test_argument_fragments_each_become_a_delta():
    writer = ResponseWriter({"id": "resp_1"}, tool_set([Tool(**WEATHER)]))
    fragments = ['{"ci', 'ty": ', '"Par', 'is"}']
    out = writer.opening() + writer.encode(ToolCallStart(0, "call_1", "get_weather"))
    for fragment in fragments:
        out += writer.encode(ToolCallArgs(0, fragment))
    out += writer.encode(ChoiceEnd(0, "tool_calls")) + writer.encode(Usage(5, 4))
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["delta"] for e in out if e["type"] == "response.function_call_arguments.delta"] == fragments
    assert out[-2]["item"]["arguments"] == "".join(fragments) and out[-1]["type"] == "response.completed"
    assert writer.assistant_message().tool_calls[0].arguments == "".join(fragments)


def test_a_dropped_call_is_no_part_of_the_response_or_of_the_next_turn():
    writer = ResponseWriter({"id": "resp_1"}, tool_set([Tool(**WEATHER), Tool(**PATCH)]))
    core = [ToolCallStart(0, "call_1", "get_weather"), ToolCallArgs(0, '{"city": "Paris"}'),
            ToolCallStart(1, "call_2", "apply_patch"), ToolCallArgs(1, '{"input": "*** Be'), ToolCallDropped(1),
            ChoiceEnd(0, "length"), Usage(5, 4)]
    out = writer.opening() + [event for item in core for event in writer.encode(item)]
    done = [e["item"] for e in out if e["type"] == "response.output_item.done"]
    assert [(d["type"], d["status"]) for d in done] == [("function_call", "completed"),
                                                        ("custom_tool_call", "incomplete")]
    assert done[1]["input"] == "" and "response.custom_tool_call_input.done" not in types(out)
    assert writer.response["output"] == [done[0]] and out[-1]["type"] == "response.incomplete"
    assert [call.name for call in writer.assistant_message().tool_calls] == ["get_weather"]


def test_a_namespaced_call_comes_back_with_its_namespace(scripted):
    namespace = {"type": "namespace", "name": "weather_v1", "description": "Weather.", "tools": [WEATHER]}
    items = events(scripted, input="#namespaced", tools=[namespace, {"type": "web_search"}])
    done = items[-2]["item"]
    assert done["type"] == "function_call" and done["name"] == "get_weather" and done["namespace"] == "weather_v1"
    prompt = scripted.loader.engines[0].prompts[-1]
    assert '"weather_v1.get_weather"' in prompt and "web_search" not in prompt


def test_a_custom_tool_call_carries_its_raw_input(scripted):
    items = events(scripted, input="#patch", tools=[PATCH])
    assert types(items) == ["response.created", "response.in_progress", "response.output_item.added",
                            "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
                            "response.output_item.done", "response.completed"]
    done = items[-2]["item"]
    assert done["type"] == "custom_tool_call" and done["name"] == "apply_patch"
    assert done["input"] == "*** Begin Patch\n*** End Patch" and done["id"].startswith("ctc_")


def test_an_error_after_the_start_is_response_failed(scripted):
    items = events(scripted, input="#fail")
    assert types(items)[:2] == ["response.created", "response.in_progress"]
    assert items[-1]["type"] == "response.failed" and "response.completed" not in types(items)
    assert items[-1]["response"]["status"] == "failed"
    assert items[-1]["response"]["error"]["message"] == "grammar dead end"
    assert items[-1]["response"]["error"]["code"] == "invalid_prompt"
    whole = httpx.post(scripted.base_url + "/responses", json={"model": QWEN3, "input": "#fail"}, timeout=30)
    assert whole.status_code == 400 and whole.json()["error"]["message"] == "grammar dead end"


def test_keepalive_comments_while_waiting_for_the_first_token(scripted):
    items = frames(scripted, input="#slow")
    first_delta = next(i for i, f in enumerate(items) if isinstance(f, dict)
                       and f["type"] == "response.output_text.delta")
    assert "keep-alive" in items[2:first_delta]


def test_the_sdk_reads_the_stream(scripted):
    client = openai.OpenAI(base_url=scripted.base_url, api_key="k", max_retries=0)
    with client.responses.stream(model=QWEN3, input="#call", tools=[WEATHER]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments) == {"city": "Paris"}


def test_a_disconnect_mid_stream_frees_the_slot(scripted):
    engine = scripted.loader.engines[0]
    before = engine.cancelled
    body = {"model": QWEN3, "stream": True, "input": "#long"}
    with httpx.stream("POST", scripted.base_url + "/responses", json=body, timeout=30) as response:
        for index, line in enumerate(response.iter_lines()):
            if "response.output_text.delta" in line and index > 10:
                break
    for _ in range(200):
        if engine.cancelled > before:
            break
        time.sleep(0.05)
    assert engine.cancelled == before + 1


def test_input_items_become_the_conversation_the_template_renders(scripted):
    engine = scripted.loader.engines[0]
    response = httpx.post(scripted.base_url + "/responses", timeout=30, json={
        "model": QWEN3, "store": False, "instructions": "Be brief.", "tools": [PATCH, WEATHER], "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Dev rules."}]},
            {"role": "user", "content": "Fix the bug."},
            {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "patched ok"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]},
            {"type": "item_reference", "id": "msg_unknown"},
            {"role": "user", "content": [{"type": "input_text", "text": "Thanks"}]}]})
    assert response.status_code == 200, response.text
    prompt = engine.prompts[-1]
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nDev rules.")
    assert '"name": "apply_patch", "arguments": {"input": "*** Begin Patch"}' in prompt
    assert "<tool_response>\npatched ok\n</tool_response>" in prompt
    assert prompt.index("Done.") < prompt.index("Thanks")
