"""SSE protocol edge cases on the real server stack with a scripted engine: keep-alives, in-band
errors, UTF-8 split across tokens, tool-call arguments in pieces, and disconnects."""

import json
import threading
import time

import httpx
import openai
import pytest

from minerva.core.errors import InvalidRequestError
from minerva.settings import Settings
from tests.servers import running_server
from tests.scripted_engine import Script, scripted_loader


GATE = threading.Event()  # held shut by a test while it checks what arrives before any token
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "note": {"type": "string"}}, "required": ["city"]}}}
CALL_ARGUMENTS = '{"city": "Paris", "note": "arguments long enough to span many pieces"}'
CALL = f'<tool_call>\n{{"name": "get_weather", "arguments": {CALL_ARGUMENTS}}}\n</tool_call>'.encode()


def choose(prompt: str, call: int) -> Script:
    if "#weather-call" in prompt:  # first: the tool prompt may hold any of the words below
        return Script([CALL[i:i + 4] for i in range(0, len(CALL), 4)])
    if "slow" in prompt:
        return Script([b"Hello", b" there"], gate=GATE)
    if "fail" in prompt:
        return Script([b"a", b"b", b"c"], fail_after=2, failure=InvalidRequestError("grammar dead end"))
    if "crash" in prompt:
        return Script([b"a", b"b"], fail_after=1, failure=RuntimeError("boom"))
    if "emoji" in prompt:
        llama = "🦙".encode()
        return Script([b"x", llama[:1], llama[1:3], llama[3:], b"y"])
    if "long" in prompt:
        return Script([b"tok "] * 500, piece_delay_s=0.01)
    return Script([b"ok"])


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, smollm2_path):
    loader = scripted_loader(choose)
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")], keepalive_interval_s=0.3)
    with running_server(settings, loader=loader) as server:
        server.loader = loader
        yield server


def stream_lines(server, content: str) -> list[str]:
    body = {"model": "smollm2-135m-instruct", "stream": True, "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(response.iter_lines())


def test_keepalive_comments_while_waiting(scripted):
    """While the model produces nothing, keep-alive comments keep coming; the answer follows when it does."""
    GATE.clear()
    body = {"model": "smollm2-135m-instruct", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
    lines: list[str] = []
    with httpx.stream("POST", scripted.base_url + "/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if not GATE.is_set() and sum(seen == ": keep-alive" for seen in lines) == 3:
                assert not any("Hello" in seen for seen in lines)  # nothing generated yet
                GATE.set()
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: {") and "Hello" in line)
    assert sum(line == ": keep-alive" for line in lines[:first_data]) >= 3
    assert lines[-2] == "data: [DONE]" or lines[-1] == "data: [DONE]"


def test_headers_arrive_before_generation(scripted):
    """Response headers go out before the model has produced a token (the engine is held shut)."""
    GATE.clear()
    body = {"model": "smollm2-135m-instruct", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
    try:
        with httpx.stream("POST", scripted.base_url + "/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert not GATE.is_set()
            GATE.set()
            assert any("Hello" in line for line in response.iter_lines())
    finally:
        GATE.set()


def test_error_after_stream_start_is_an_error_event(scripted):
    lines = [line for line in stream_lines(scripted, "fail now") if line.startswith("data: ")]
    assert '"error"' in lines[-1] and "grammar dead end" in lines[-1]
    assert "data: [DONE]" not in lines
    crash = [line for line in stream_lines(scripted, "crash now") if line.startswith("data: ")]
    assert '"internal_error"' in crash[-1] and "Traceback" not in "".join(crash)


def test_utf8_split_across_tokens_is_never_broken(scripted):
    import json

    lines = [line for line in stream_lines(scripted, "emoji") if line.startswith("data: {")]
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines]
    pieces = [p for p in pieces if p]
    assert "".join(pieces) == "x🦙y"
    assert all("\ufffd" not in p for p in pieces)


def test_disconnect_cancels_generation(scripted):
    engines = scripted.loader.engines
    before = sum(e.cancelled for e in engines)
    body = {"model": "smollm2-135m-instruct", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    with httpx.stream("POST", scripted.base_url + "/chat/completions", json=body, timeout=30) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index > 10:
                break
    for _ in range(100):
        if sum(e.cancelled for e in engines) > before:
            break
        time.sleep(0.05)
    assert sum(e.cancelled for e in engines) == before + 1


def test_non_streaming_error_is_envelope(scripted):
    response = httpx.post(scripted.base_url + "/chat/completions", timeout=30,
                          json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "fail"}]})
    assert response.status_code == 400 and response.json()["error"]["message"] == "grammar dead end"
    crash = httpx.post(scripted.base_url + "/chat/completions", timeout=30,
                       json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "crash"}]})
    assert crash.status_code == 500 and crash.json()["error"]["type"] == "server_error"


def ask_weather(server, **fields):
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    return client.chat.completions.create(model="smollm2-135m-instruct", tools=[WEATHER], **fields,
                                          messages=[{"role": "user", "content": "#weather-call"}])


def test_tool_call_arguments_stream_in_pieces(scripted):
    fragments, finish = [], None
    for chunk in ask_weather(scripted, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            assert delta.index == 0 and (delta.function.name or "get_weather") == "get_weather"
            fragments.append(delta.function.arguments)
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert fragments[0] == "" and len(fragments) > 2  # the start, then the arguments as they are generated
    assert "".join(fragments) == CALL_ARGUMENTS and finish == "tool_calls"
    whole = ask_weather(scripted).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.tool_calls[0].function.arguments == CALL_ARGUMENTS


def test_a_tool_call_cut_by_max_tokens_is_shown_in_part_then_left_out(scripted):
    fragments, finish = [], None
    for chunk in ask_weather(scripted, stream=True, max_tokens=20):  # 80 characters: inside the arguments
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            fragments.append(delta.function.arguments)
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert len(fragments) > 1 and CALL_ARGUMENTS.startswith("".join(fragments)) and finish == "length"
    whole = ask_weather(scripted, max_tokens=20).choices[0]
    assert whole.finish_reason == "length" and whole.message.tool_calls is None and not whole.message.content
