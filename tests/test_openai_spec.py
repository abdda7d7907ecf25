"""minerva's bodies on the wire (raw httpx, not the SDK) validated against OpenAI's own OpenAPI spec."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import running_server
from tests.model_fixtures import minilm_dir  # noqa: F401 - session fixture
from openai_spec import RELAXATIONS, OpenAISpecError, validate_openai

from minerva.settings import Settings

MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "minilm"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
FAST = {"temperature": 0, "max_tokens": 8}
NOW_TOOL = {"type": "function", "function": {"name": "now", "description": "The current time.", "parameters": {
    "type": "object", "properties": {}, "additionalProperties": False}}}
# A whole `<tool_call>{"name": "now", "arguments": {}}</tool_call>` is 23 SmolLM2 tokens: 16 would cut it off.
TOOL_CALL = {"model": MODEL, "messages": [{"role": "user", "content": "What time is it?"}], "tools": [NOW_TOOL],
             "tool_choice": "required", "parallel_tool_calls": False, "temperature": 0, "max_tokens": 32}


def post(server, path: str, body: dict) -> httpx.Response:
    """POST a raw JSON body."""
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=120)


def events(server, path: str, body: dict) -> list[dict]:
    """Every `data:` event of a streamed response, up to `[DONE]` (which must end it)."""
    with httpx.stream("POST", f"{server.base_url}{path}", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", data[-3:]
    return [json.loads(item) for item in data[:-1]]


def validate_all(schema_name: str, chunks: list[dict], stream: bool = False) -> None:
    """Validate every chunk, reporting all failing chunks at once."""
    problems = []
    for number, chunk in enumerate(chunks):
        try:
            validate_openai(schema_name, chunk, stream=stream)
        except OpenAISpecError as error:
            problems.append(f"chunk {number}: {error}")
    assert not problems, "\n".join(problems)


# --- the validator itself ----------------------------------------------------------------------------------

GOOD_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Paris.", "refusal": None}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def test_validator_accepts_a_good_payload():
    validate_openai("CreateChatCompletionResponse", GOOD_CHAT)


def test_validator_lists_every_violation_with_its_path():
    bad = json.loads(json.dumps(GOOD_CHAT))
    del bad["created"], bad["choices"][0]["message"]["refusal"]
    bad["choices"][0]["finish_reason"] = "done"
    with pytest.raises(OpenAISpecError) as raised:
        validate_openai("CreateChatCompletionResponse", bad)
    message = str(raised.value)
    assert "3 violation(s)" in message
    assert "$: 'created' is a required property" in message
    assert "$.choices[0].message: 'refusal' is a required property" in message
    assert "$.choices[0].finish_reason: 'done' is not one of" in message


def test_nullable_became_a_null_branch():
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "usage": None,
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": None}]}
    validate_openai("CreateChatCompletionStreamResponse", chunk)
    chunk["choices"][0]["finish_reason"] = "done"
    with pytest.raises(OpenAISpecError, match=r"\$\.choices\[0\]\.finish_reason"):
        validate_openai("CreateChatCompletionStreamResponse", chunk)


def test_relaxations_are_explicit_and_scoped():
    assert all(r.reason for r in RELAXATIONS)
    embedding = {"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                 "data": [{"object": "embedding", "index": 0, "embedding": "AACAPw=="}]}
    validate_openai("CreateEmbeddingResponse", embedding)
    chunk = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}]}
    validate_openai("CreateCompletionResponse", chunk, stream=True)
    with pytest.raises(OpenAISpecError, match=r"\$\.choices\[0\]\.finish_reason: None is not of type 'string'"):
        validate_openai("CreateCompletionResponse", chunk)


# --- chat completions --------------------------------------------------------------------------------------

def test_chat_completion(default_server):
    response = post(default_server, "/chat/completions", {"model": MODEL, "messages": ASK, **FAST})
    assert response.status_code == 200
    validate_openai("CreateChatCompletionResponse", response.json())


def test_chat_completion_with_logprobs(default_server):
    body = {"model": MODEL, "messages": ASK, "logprobs": True, "top_logprobs": 2, **FAST}
    response = post(default_server, "/chat/completions", body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["logprobs"]["content"]
    validate_openai("CreateChatCompletionResponse", response.json())


def test_chat_completion_with_a_tool_call(default_server):
    response = post(default_server, "/chat/completions", TOOL_CALL)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["tool_calls"]
    validate_openai("CreateChatCompletionResponse", response.json())


def test_streamed_chat_chunks(default_server):
    body = {"model": MODEL, "messages": ASK, "stream_options": {"include_usage": True}, **FAST}
    chunks = events(default_server, "/chat/completions", body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]
    validate_all("CreateChatCompletionStreamResponse", chunks)


def test_streamed_chat_chunks_with_logprobs(default_server):
    body = {"model": MODEL, "messages": ASK, "logprobs": True, "top_logprobs": 2, **FAST}
    chunks = events(default_server, "/chat/completions", body)
    assert any((c["choices"][0].get("logprobs") or {}).get("content") for c in chunks if c["choices"])
    validate_all("CreateChatCompletionStreamResponse", chunks)


def test_streamed_tool_call_chunks(default_server):
    chunks = events(default_server, "/chat/completions", TOOL_CALL)
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    validate_all("CreateChatCompletionStreamResponse", chunks)


# --- text completions --------------------------------------------------------------------------------------

def test_completion_with_logprobs(default_server):
    body = {"model": MODEL, "prompt": "The capital of France is", "logprobs": 2, **FAST}
    response = post(default_server, "/completions", body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["logprobs"]["tokens"]
    validate_openai("CreateCompletionResponse", response.json())


@pytest.mark.parametrize("logprobs", [None, 2])
def test_streamed_completion_chunks(default_server, logprobs):
    body = {"model": MODEL, "prompt": "The capital of France is", "logprobs": logprobs,
            "stream_options": {"include_usage": True}, **FAST}
    chunks = events(default_server, "/completions", body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]
    validate_all("CreateCompletionResponse", chunks, stream=True)


# --- models and errors -------------------------------------------------------------------------------------

def test_list_and_retrieve_models(default_server):
    listing = httpx.get(f"{default_server.base_url}/models", timeout=30)
    assert listing.status_code == 200
    validate_openai("ListModelsResponse", listing.json())
    one = httpx.get(f"{default_server.base_url}/models/{MODEL}", timeout=30)
    assert one.status_code == 200
    validate_openai("Model", one.json())


@pytest.mark.parametrize("request_kind", ["unknown_model_get", "unknown_model_chat", "validation", "context_length"])
def test_error_bodies(default_server, request_kind):
    base = default_server.base_url
    response = {
        "unknown_model_get": lambda: httpx.get(f"{base}/models/no-such-model", timeout=30),
        "unknown_model_chat": lambda: post(default_server, "/chat/completions",
                                           {"model": "no-such-model", "messages": ASK, **FAST}),
        "validation": lambda: post(default_server, "/chat/completions",
                                   {"model": MODEL, "messages": ASK, "temperature": "hot"}),
        "context_length": lambda: post(default_server, "/chat/completions",
                                       {"model": MODEL, "messages": [{"role": "user", "content": "word " * 5000}],
                                        **FAST}),
    }[request_kind]()
    assert response.status_code == (404 if request_kind.startswith("unknown") else 400)
    if request_kind == "context_length":
        assert response.json()["error"]["code"] == "context_length_exceeded"
    validate_openai("ErrorResponse", response.json())


# --- embeddings (a SafeTensors model) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def embed_server(minilm_dir, tmp_path_factory):  # noqa: F811
    """all-MiniLM-L6-v2 (SafeTensors) alone."""
    pytest.importorskip("torch")
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], models={EMBED_MODEL: minilm_dir}, include_default_model=False,
                        n_threads=1, n_slots=1, n_ctx=512)
    with running_server(settings) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings(embed_server, encoding_format):
    body = {"model": EMBED_MODEL, "input": ["A man is eating food.", "Der Himmel ist blau."],
            "encoding_format": encoding_format}
    response = post(embed_server, "/embeddings", body)
    assert response.status_code == 200
    assert isinstance(response.json()["data"][0]["embedding"], str if encoding_format == "base64" else list)
    validate_openai("CreateEmbeddingResponse", response.json())
