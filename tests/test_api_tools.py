"""Tool calls and structured output on the real SmolLM2 (its template knows no tools, so minerva
describes them in the system message and constrains decoding with a grammar)."""

import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9007199254740991},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone.",
                                          "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                         "required": ["tz"]}}}
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the weather in Paris?"}]


def create(client, **kwargs):
    return client.chat.completions.create(model="smollm2-135m-instruct", **{"messages": ASK, **kwargs})


def check_call(call, tools=(WEATHER, TIME)):
    assert call.id.startswith("call_") and call.type == "function"
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_required_tool_call_validates(client):
    response = create(client, tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=96)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call)


def test_named_tool_choice_forces_that_function(client):
    response = create(client, tools=[WEATHER, TIME], temperature=0, max_tokens=96,
                      messages=[{"role": "user", "content": "What time is it in Europe/Paris?"}],
                      tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = response.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_time" for c in calls)
    for call in calls:
        check_call(call)


RECORD_PERSON = {"type": "function", "function": {"name": "record_person", "description": "Record a person.",
                                                   "parameters": {"type": "object", "properties": {
                                                       "name": {"type": "string"}, "age": {"type": "integer"}},
                                                       "required": ["name", "age"]}}}


def test_a_named_call_costs_only_its_arguments(client):
    """The envelope of a call to a named tool is in the prompt: the model writes the arguments and ends."""
    from llama_cpp import Llama

    from minerva.default_model import default_model_path

    response = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "John is 30 years old."}],
        tools=[RECORD_PERSON], tool_choice={"type": "function", "function": {"name": "record_person"}}, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "record_person"
    assert json.loads(call.function.arguments) == {"name": "John", "age": 30}
    vocab = Llama(str(default_model_path()), vocab_only=True, verbose=False)
    argument_tokens = len(vocab.tokenize(call.function.arguments.encode(), add_bos=False))
    assert response.usage.completion_tokens <= argument_tokens + 1  # the arguments and the end of turn


def test_streamed_tool_call_deltas_follow_openai(client):
    stream = create(client, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=96, stream=True,
                    parallel_tool_calls=False)
    seen: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or ():
            assert delta.index is not None and delta.function is not None
            if delta.index not in seen:
                assert isinstance(delta.id, str) and delta.function.name == "get_weather"
                seen[delta.index] = {"id": delta.id, "args": ""}
            else:
                assert delta.id in (None, seen[delta.index]["id"])
            seen[delta.index]["args"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(seen) == [0]
    jsonschema.validate(json.loads(seen[0]["args"]), WEATHER["function"]["parameters"])


def test_tool_choice_none_and_auto_are_well_formed(client):
    plain = create(client, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=16)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason in ("stop", "length")
    auto = create(client, tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=96)
    message = auto.choices[0].message
    # under "auto" the model may answer or call (greedy SmolLM2 does either, depending on which cached
    # prefix cells it reuses); each outcome must be well formed on its own terms
    if message.tool_calls:
        assert auto.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            check_call(call, (WEATHER,))
    else:
        assert message.content and auto.choices[0].finish_reason in ("stop", "length")
        if auto.choices[0].finish_reason == "stop":  # a finished answer holds no unparsed call markup
            assert "<tool_call>" not in message.content


def test_tool_results_round_trip(client):
    messages = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    response = create(client, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=24)
    assert response.choices[0].message.content


def test_unknown_named_tool_is_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        create(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert raised.value.body["param"] == "tool_choice"


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                            "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_response_format_validates(client):
    for stream in (False, True):
        kwargs = dict(temperature=0, max_tokens=80, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
            messages=[{"role": "user", "content": "Describe a person as JSON."}])
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in create(client, stream=True, **kwargs) if c.choices)
        else:
            text = create(client, **kwargs).choices[0].message.content
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_response_format(client):
    response = create(client, temperature=0, max_tokens=48, response_format={"type": "json_object"},
                      messages=[{"role": "user", "content": "Give me a JSON object with a greeting."}])
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_unsupported_schema_feature_is_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        create(client, max_tokens=8, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}}})
    assert raised.value.body["param"] == "response_format"
