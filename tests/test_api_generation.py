"""Chat and completions on the real SmolLM2 through the openai SDK: shapes, determinism, limits."""

import asyncio
import json

import httpx
import openai
import pytest

# SmolLM2's template injects a long default system prompt under which the Q4_1 model rambles;
# with a plain system message it answers greedily "The capital of France is Paris."
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def chat(client, **kwargs):
    return client.chat.completions.create(model="smollm2-135m-instruct", **{"messages": QUESTION, **kwargs})


def streamed_text(client, **kwargs) -> tuple[str, list]:
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_chat_answers_paris_with_openai_shape(client):
    response = chat(client, temperature=0, max_tokens=24)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == "smollm2-135m-instruct"
    choice = response.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens >= 0


def test_greedy_is_deterministic_and_stream_matches_non_stream(client):
    first = chat(client, temperature=0, max_tokens=32).choices[0].message.content
    second = chat(client, temperature=0, max_tokens=32).choices[0].message.content
    text, _ = streamed_text(client, temperature=0, max_tokens=32)
    assert first == second == text


def test_same_seed_same_output(client):
    kwargs = dict(temperature=1.0, seed=1234, max_tokens=24,
                  messages=[{"role": "user", "content": "Tell me a short story."}])
    a = chat(client, **kwargs).choices[0].message.content
    b = chat(client, **kwargs).choices[0].message.content
    streamed, _ = streamed_text(client, **kwargs)
    assert a == b == streamed


def test_stream_shape(client):
    text, chunks = streamed_text(client, temperature=0, max_tokens=12)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens > 0
    assert all(c.id == chunks[0].id for c in chunks)
    assert text


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(chat(client, stream=True, temperature=0, max_tokens=4))
    assert all(c.choices for c in chunks)


def test_max_tokens_gives_length(client):
    response = chat(client, temperature=0, max_tokens=5,
                    messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5
    response = chat(client, temperature=0, max_completion_tokens=3,
                    messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    assert response.usage.completion_tokens == 3


def test_stop_sequence_ends_text_before_it(client):
    free = chat(client, temperature=0, max_tokens=24).choices[0].message.content
    assert "Paris" in free
    stopped = chat(client, temperature=0, max_tokens=24, stop=["Paris"])
    assert stopped.choices[0].message.content == free[: free.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"
    text, _ = streamed_text(client, temperature=0, max_tokens=24, stop=["aris"])
    assert text == free[: free.index("aris")]


def test_n_choices(client):
    response = chat(client, temperature=1.0, seed=7, n=2, max_tokens=8)
    assert [c.index for c in response.choices] == [0, 1]


def test_logprobs(client):
    response = chat(client, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-3)  # greedy picks the top


def test_logit_bias_bans_a_token(client, default_server):
    free = chat(client, temperature=0, max_tokens=8, logprobs=True)
    first_token = free.choices[0].logprobs.content[0]
    engine = next(iter(default_server.state.pool.loaded().values()))
    token_id = engine.tokenize(first_token.token, add_special=False, parse_special=False)[0]
    biased = chat(client, temperature=0, max_tokens=8, logprobs=True, logit_bias={str(token_id): -100})
    assert biased.choices[0].logprobs.content[0].token != first_token.token


def test_two_consecutive_user_messages_and_parts(client, default_server):
    response = chat(client, temperature=0, max_tokens=8, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Generate a title"}]},
        {"role": "user", "content": "for a chat about Paris."},
    ])
    assert response.choices[0].message.content
    first_only = chat(client, temperature=0, max_tokens=1, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Generate a title"}]},
    ])
    engine = next(iter(default_server.state.pool.loaded().values()))
    second_turn = len(engine.tokenize("for a chat about Paris.", add_special=False, parse_special=False))
    # both user turns reached the prompt: the second adds its own tokens (plus its turn markers)
    assert response.usage.prompt_tokens >= first_only.usage.prompt_tokens + second_turn


def test_image_parts_are_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert raised.value.body["param"] == "messages"


def test_too_long_prompt_is_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, messages=[{"role": "user", "content": "word " * 5000}])
    body = raised.value.body
    assert body["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in body["message"]


def test_max_tokens_beyond_context_is_clamped(client):
    response = chat(client, temperature=0, max_tokens=100_000)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 2048 - response.usage.prompt_tokens


def test_unknown_model_404_and_bad_params_400(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, top_p=3)
    assert raised.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, extra_body={"n": 0})
    assert raised.value.body["param"] == "n"


def test_unknown_fields_are_accepted(client):
    response = chat(client, temperature=0, max_tokens=4,
                    extra_body={"reasoning_effort": "low", "chat_template_kwargs": {"x": 1}, "vendor_thing": [1]})
    plain = chat(client, temperature=0, max_tokens=4)
    assert response.choices[0].message.content == plain.choices[0].message.content != ""
    assert response.usage.prompt_tokens == plain.usage.prompt_tokens  # ignored, not folded into the prompt


def test_completions(client):
    response = client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is",
                                         max_tokens=6, temperature=0)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    text = response.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=6, temperature=0,
        stream=True) if c.choices)
    assert text == streamed
    echoed = client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is",
                                       max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "The capital of France is" + text


def test_completions_prompt_forms_and_logprobs(client, default_server):
    engine = next(iter(default_server.state.pool.loaded().values()))
    ids = engine.tokenize("The capital of France is", add_special=True, parse_special=False)
    by_text = client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is",
                                        max_tokens=4, temperature=0, logprobs=2)
    by_ids = client.completions.create(model="smollm2-135m-instruct", prompt=ids, max_tokens=4, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert len(by_text.choices[0].logprobs.tokens) == 4
    many = client.completions.create(model="smollm2-135m-instruct", prompt=["Hello", "Goodbye"], max_tokens=2,
                                     temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smollm2-135m-instruct", prompt=[10**9], max_tokens=2)


def test_disconnect_mid_stream_leaves_server_serving(default_server, client):
    async def abandon():
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"model": "smollm2-135m-instruct", "stream": True, "max_tokens": 400, "temperature": 0,
                    "messages": [{"role": "user", "content": "Write a very long story."}]}
            async with http.stream("POST", default_server.base_url + "/chat/completions", json=body) as response:
                count = 0
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        count += 1
                    if count >= 3:
                        break

    asyncio.run(abandon())
    response = chat(client, temperature=0, max_tokens=8)
    assert response.choices[0].message.content
    engine = next(iter(default_server.state.pool.loaded().values()))
    for _ in range(100):
        if engine.stats().active_slots == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert engine.stats().active_slots == 0


def test_concurrent_requests_all_complete(default_server):
    async def run():
        async with httpx.AsyncClient(timeout=120) as http:
            bodies = [{"model": "smollm2-135m-instruct", "max_tokens": 12, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Count to {i}."}]} for i in range(6)]
            return await asyncio.gather(*(http.post(default_server.base_url + "/chat/completions", json=b)
                                          for b in bodies))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert all(json.loads(r.text)["choices"][0]["message"]["content"] for r in responses)
