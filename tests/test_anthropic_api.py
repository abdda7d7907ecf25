"""The Anthropic Messages API through the official `anthropic` SDK on the real SmolLM2 (the server root is the
base URL): text, streaming, tools, count_tokens, stop sequences, errors in Anthropic's envelope, x-api-key."""

from __future__ import annotations

import anthropic
import jsonschema
import pytest

from minerva.settings import Settings
from tests.servers import running_server

MODEL = "smollm2-135m-instruct"
GREEDY = {"temperature": 0}  # the SDK no longer takes sampling arguments; they travel as extra body fields
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                     "required": ["city"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def claude(default_server) -> anthropic.Anthropic:
    """An anthropic SDK client on the default server (its base URL is the server root)."""
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{default_server.port}", api_key="sk-test", max_retries=0,
                               timeout=300)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_text_message(claude):
    message = claude.messages.create(model=MODEL, max_tokens=24, messages=user("Say hello."), extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"] and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.output_tokens > 0 and message.usage.output_tokens <= 24
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 5


def test_streamed_deltas_equal_the_message(claude):
    kwargs = dict(model=MODEL, max_tokens=32, system="You answer briefly.", messages=user("Name a colour."),
                  extra_body=GREEDY)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events if event.type not in ("text", "ping")]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert deltas == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_tool_round_trip(claude):
    question = user("What is the weather in Paris?")
    call = claude.messages.create(model=MODEL, max_tokens=80, tools=[WEATHER], tool_choice={"type": "any"},
                                  messages=question, extra_body=GREEDY)
    assert call.stop_reason == "tool_use"
    uses = [block for block in call.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    answer = claude.messages.create(
        model=MODEL, max_tokens=40, tools=[WEATHER], extra_body=GREEDY,
        messages=[*question, {"role": "assistant", "content": [block.model_dump() for block in call.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": [{"type": "text", "text": "Sunny, 24 degrees."}]}]}])
    texts = [block.text for block in answer.content if block.type == "text"]
    assert answer.stop_reason in ("end_turn", "max_tokens") and "".join(texts).strip()


def test_forced_tool_by_name(claude):
    lookup = {"name": "lookup", "description": "Look a word up.",
              "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}
    message = claude.messages.create(model=MODEL, max_tokens=60, tools=[WEATHER, lookup],
                                     tool_choice={"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
                                     messages=user("Look up the word 'serendipity'."), extra_body=GREEDY)
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [use.name for use in uses] == ["lookup"] and message.stop_reason == "tool_use"
    jsonschema.validate(uses[0].input, lookup["input_schema"])


def test_count_tokens_equals_generation_input_tokens(claude):
    kwargs = dict(model=MODEL, system=[{"type": "text", "text": "Be terse."}], tools=[WEATHER],
                  messages=user("How warm is it in Oslo today?"))
    counted = claude.messages.count_tokens(**kwargs).input_tokens
    message = claude.messages.create(max_tokens=4, **kwargs, extra_body=GREEDY)
    # Anthropic's input_tokens leaves out the prompt tokens read from the (prefix) cache
    assert counted == message.usage.input_tokens + message.usage.cache_read_input_tokens
    with claude.messages.stream(max_tokens=4, **kwargs, extra_body=GREEDY) as stream:
        start = next(event for event in stream if event.type == "message_start")
        final = stream.get_final_message()
    assert start.message.usage.input_tokens == counted
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == counted
    assert claude.messages.count_tokens(model=MODEL, messages=user("How warm is it in Oslo today? Very.")) \
        .input_tokens != counted


def test_stop_sequence(claude):
    base = claude.messages.create(model=MODEL, max_tokens=24, messages=user("Count from one to ten in words."),
                                  extra_body=GREEDY)
    words = base.content[0].text.split()
    assert len(words) >= 3, base.content[0].text
    stop = words[2]
    message = claude.messages.create(model=MODEL, max_tokens=24, messages=user("Count from one to ten in words."),
                                     stop_sequences=[stop], extra_body=GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert stop not in message.content[0].text


def test_prompt_past_the_context_is_invalid_request(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MODEL, max_tokens=10, messages=user("hello " * 3000))
    body = caught.value.body
    assert caught.value.status_code == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"].startswith("prompt is too long")


def test_max_tokens_past_the_context_is_clamped(claude):
    message = claude.messages.create(model=MODEL, max_tokens=32000, messages=user("Say hi."),
                                     stop_sequences=["\n"], extra_body=GREEDY)
    assert message.stop_reason in ("end_turn", "stop_sequence", "max_tokens")


def test_unknown_model_is_not_found_and_claude_names_reach_the_local_model(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=user("hi"))
    assert caught.value.body["error"]["type"] == "not_found_error" and caught.value.body["type"] == "error"
    message = claude.messages.create(model="claude-haiku-4-5-20251001", max_tokens=4, messages=user("hi"),
                                     extra_body=GREEDY)
    assert message.model == "claude-haiku-4-5-20251001" and message.content


def test_images_are_refused_with_a_clear_400(claude):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and "images are not supported" in error["message"]


def test_claude_code_request_fields_are_accepted(claude, default_server):
    """What Claude Code sends beyond the basics: a billing header block, a system turn inside messages,
    thinking, metadata, context_management, output_config, a ?beta=true query."""
    import httpx

    body = {"model": MODEL, "max_tokens": 8, "stream": False, "temperature": 0,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328.c3c; cc_entrypoint=cli;"},
                       {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>hi</system-reminder>"}]},
                         {"role": "system", "content": "Answer in English."}],
            "metadata": {"user_id": '{"session_id": "s1"}'}, "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"}}
    url = f"http://127.0.0.1:{default_server.port}/v1/messages?beta=true"
    response = httpx.post(url, json=body, timeout=120, headers={"x-claude-code-session-id": "s1"})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["type"] == "text"
    other_header = {**body, "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9; cch=abcde;"},
                                       body["system"][1]]}
    counted = [httpx.post(f"http://127.0.0.1:{default_server.port}/v1/messages/count_tokens?beta=true", json=b,
                          timeout=60).json()["input_tokens"] for b in (body, other_header)]
    assert counted[0] == counted[1]  # the per-request billing header never reaches the prompt


def test_x_api_key_auth(tmp_path):
    settings = Settings(models_dirs=[tmp_path], include_default_model=False, api_keys=["sk-right"])
    with running_server(settings) as server:
        root = f"http://127.0.0.1:{server.port}"
        wrong = anthropic.Anthropic(base_url=root, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.create(model=MODEL, max_tokens=4, messages=user("hi"))
        assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                                "message": caught.value.body["error"]["message"]}}
        right = anthropic.Anthropic(base_url=root, api_key="sk-right", max_retries=0)
        with pytest.raises(anthropic.NotFoundError):  # past the key check: this server has no models
            right.messages.create(model=MODEL, max_tokens=4, messages=user("hi"))
