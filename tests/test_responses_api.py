"""The OpenAI Responses API on the real SmolLM2, through the openai SDK's `responses` client."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from minerva.dialects.openai_responses.store import ResponseStore

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
TIME = {"type": "function", "name": "get_time", "description": "Get the current time in a timezone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}
ASK_WEATHER = "What is the weather in Paris?"


def create(client, **kwargs):
    return client.responses.create(model=MODEL, **{"input": "What is the capital of France?",
                                                   "max_output_tokens": 24, "temperature": 0, **kwargs})


def check_usage(usage) -> None:
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert isinstance(usage.input_tokens_details.cached_tokens, int)


def test_text_response(client):
    response = create(client)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert response.status in ("completed", "incomplete")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    assert response.output_text.strip()
    check_usage(response.usage)


def test_streamed_deltas_equal_the_whole_text(client):
    whole = create(client, store=False)
    events = list(create(client, store=False, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if whole.status == "completed" else "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens


def test_max_output_tokens_past_the_context_is_clamped_and_length_is_incomplete(client):
    response = create(client, max_output_tokens=1_000_000, input="Count from one to ten.")
    assert response.status in ("completed", "incomplete")
    short = create(client, max_output_tokens=2, input="Write a long story about a dragon.")
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.usage.output_tokens == 2


def _single_call(response, name: str, tool: dict):
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    call = calls[0]
    assert call.name == name and call.id.startswith("fc_") and call.call_id
    jsonschema.validate(json.loads(call.arguments), tool["parameters"])
    return call


def test_tool_round_trip_with_items_and_with_previous_response_id(client):
    first = create(client, input=ASK_WEATHER, tools=[WEATHER], tool_choice="required", max_output_tokens=64)
    call = _single_call(first, "get_weather", WEATHER)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 22 degrees."}
    stateless = create(client, store=False, tools=[WEATHER], input=[
        {"role": "user", "content": ASK_WEATHER},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        result,
    ])
    assert stateless.output[0].type == "message" and stateless.output_text.strip()
    chained = create(client, previous_response_id=first.id, tools=[WEATHER], input=[result])
    assert chained.previous_response_id == first.id and chained.output_text.strip()
    # the stored conversation is the same prompt the stateless request rebuilt
    assert chained.usage.input_tokens == stateless.usage.input_tokens


def test_forced_function(client):
    response = create(client, input=ASK_WEATHER, tools=[WEATHER, TIME], max_output_tokens=64,
                      tool_choice={"type": "function", "name": "get_time"})
    _single_call(response, "get_time", TIME)


def test_hosted_tools_are_skipped_and_namespaced_calls_keep_their_namespace(client):
    namespace = {"type": "namespace", "name": "weather_v1", "description": "Weather tools.", "tools": [WEATHER]}
    response = create(client, input=ASK_WEATHER, max_output_tokens=64, tool_choice="required",
                      tools=[{"type": "web_search"}, {"type": "image_generation"}, namespace])
    call = _single_call(response, "get_weather", WEATHER)
    assert call.namespace == "weather_v1"


def test_json_schema_text_format_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    response = create(client, input="Name a city and its country as JSON.", max_output_tokens=64,
                      text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)


def test_input_image_is_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}])
    error = caught.value.body
    assert error["code"] == "unsupported_content" and error["param"] == "input[0].content[1]"
    assert "images are not supported" in error["message"]


def test_overflow_is_400_whole_and_response_failed_streamed(client):
    long_input = "word " * 5000
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input=long_input)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["type"] == "invalid_request_error"
    events = list(create(client, input=long_input, stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "context_length_exceeded"


def test_get_and_delete_a_stored_response(client):
    response = create(client)
    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id and fetched.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)
    unstored = create(client, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        create(client, previous_response_id=unstored.id)


def test_the_store_evicts_the_least_recently_used(client, default_server):
    state = default_server.state
    saved, state.responses_store = state.responses_store, ResponseStore(capacity=2)
    try:
        first, second = create(client, max_output_tokens=2), create(client, max_output_tokens=2)
        client.responses.retrieve(first.id)  # first is now the most recently used
        third = create(client, max_output_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(second.id)
        assert client.responses.retrieve(first.id).id == first.id
        assert client.responses.retrieve(third.id).id == third.id
    finally:
        state.responses_store = saved


def test_a_custom_tool_with_a_lark_grammar_gets_input_in_its_language(client):
    from tests.test_freeform_grammar import APPLY_PATCH_LARK, APPLY_PATCH_REGEX

    apply_patch = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
                   "format": {"type": "grammar", "syntax": "lark", "definition": APPLY_PATCH_LARK}}
    task = "Apply this patch:\n*** Begin Patch\n*** Add File: hello.txt\n+Hello\n*** End Patch\n"
    response = create(client, input=task, tools=[apply_patch], tool_choice={"type": "custom", "name": "apply_patch"},
                      max_output_tokens=200, parallel_tool_calls=False)
    calls = [item for item in response.output if item.type == "custom_tool_call"]
    assert response.status == "completed" and calls and calls[0].name == "apply_patch", response.output
    assert APPLY_PATCH_REGEX.fullmatch(calls[0].input), calls[0].input
