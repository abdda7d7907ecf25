"""The SafeTensors SmolLM2 (made from the GGUF) served by TransformersEngine, through the openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import openai
import pytest
from conftest import running_server
from safetensors_models import smollm2_safetensors_dir  # noqa: F401 - session fixture

from minerva.settings import Settings

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

MODEL = "smollm2-st"
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def st_server(smollm2_safetensors_dir, tmp_path_factory):  # noqa: F811
    """A server with only the SafeTensors SmolLM2 (1 torch thread: the test machine is shared, 2 slots, 1024-token context)."""
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], models={MODEL: smollm2_safetensors_dir}, include_default_model=False,
                        n_threads=1, n_slots=2, n_ctx=1024)
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def st_client(st_server):
    return openai.OpenAI(base_url=st_server.base_url, api_key="sk-test", max_retries=0, timeout=300)


def chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL, **{"messages": QUESTION, **kwargs})


def test_greedy_chat_answers_paris_stream_and_not(st_client):
    response = chat(st_client, temperature=0, max_tokens=16)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(chat(st_client, temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    # the same conversation again reuses the kept KV cache for all but the last prompt token
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_stop_sequence_and_max_tokens(st_client):
    response = chat(st_client, temperature=0, max_tokens=16, stop=["Paris"])
    assert "Paris" not in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    response = chat(st_client, temperature=0, max_tokens=3,
                    messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_same_seed_same_output(st_client):
    kwargs = dict(temperature=1.0, seed=77, max_tokens=8, messages=[{"role": "user", "content": "Tell me a story."}])
    first = chat(st_client, **kwargs).choices[0].message.content
    assert chat(st_client, **kwargs).choices[0].message.content == first


def test_completion_logprobs(st_client):
    response = st_client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3,
                                            temperature=0, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == 3
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(alts) == 2 for alts in logprobs.top_logprobs)


def test_context_length_error(st_client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(st_client, max_tokens=4, messages=[{"role": "user", "content": "hello " * 1100}])
    assert info.value.code == "context_length_exceeded"


def test_json_schema_response_format_validates(st_client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    response = chat(st_client, temperature=0, max_tokens=40,
                    response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_cancelled_stream_frees_its_slot(st_client, st_server):
    stream = chat(st_client, temperature=0, max_tokens=200, stream=True,
                  messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    engine = st_server.state.pool.loaded()[MODEL]
    deadline = time.monotonic() + 20
    while engine.stats().active_slots and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.stats().active_slots == 0


def test_chat_model_refuses_embeddings(st_client):
    with pytest.raises(openai.BadRequestError) as info:
        st_client.embeddings.create(model=MODEL, input="hello")
    assert info.value.param == "model"


GGUF_ONLY_SCRIPT = textwrap.dedent("""
    import sys, tempfile, openai
    sys.path.insert(0, "tests")
    from conftest import running_server
    from minerva.settings import Settings
    settings = Settings(models_dirs=[tempfile.mkdtemp()], n_threads=2, n_slots=1, n_ctx=512)
    with running_server(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=2,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
    print("torch" in sys.modules, "transformers" in sys.modules)
""")


def test_gguf_only_server_never_imports_torch(smollm2_path):
    result = subprocess.run([sys.executable, "-c", GGUF_ONLY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["False", "False"]
