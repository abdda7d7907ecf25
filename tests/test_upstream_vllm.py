"""minerva in front of vLLM: a protocol-faithful vLLM loopback (tests/vllm_loopback.py) generating through a real
llama-server on SmolLM2, so the tokens are real; every answer must equal the same minerva's local model's."""

from __future__ import annotations

import json
import logging
import time

import anthropic
import httpx
import openai
import pytest

from minerva.settings import Settings
from tests.servers import running_server
from tests.upstreams import llama_server_binary, llama_servers
from tests.vllm_loopback import VllmLoopback

LOCAL = "smollm2-135m-instruct"
REMOTE = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
FAST_CHECKS = {"health_interval_s": 0.2, "connect_s": 2}


@pytest.fixture(scope="module")
def llama(smollm2_path, tmp_path_factory):
    with llama_servers(llama_server_binary(), smollm2_path, tmp_path_factory.mktemp("llama"), 1) as servers:
        yield servers[0]


@pytest.fixture(scope="module")
def vllm(llama):
    """Two vLLM replicas of one upstream; the first reports others' requests waiting in its /metrics."""
    with VllmLoopback(llama.url, extra_waiting=50) as busy, VllmLoopback(llama.url) as idle:
        yield busy, idle


@pytest.fixture(scope="module")
def bare(llama, tmp_path_factory):
    """vLLM replicas without /tokenizer_info: one told its template by a file, one told nothing."""
    template = tmp_path_factory.mktemp("template") / "chat_template.jinja"
    with VllmLoopback(llama.url, "smol-from-file", tokenizer_info=False) as from_file, \
            VllmLoopback(llama.url, "smol-untemplated", tokenizer_info=False) as untemplated:
        template.write_text(from_file.props["chat_template"])
        yield from_file, untemplated, template


class Lines(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def catalogue_log():
    """What the upstream catalogue warns of while the module's server runs."""
    handler, logger = Lines(), logging.getLogger("minerva.engine.upstream.catalogue")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def front(vllm, bare, catalogue_log, tmp_path_factory):
    """A minerva serving the embedded SmolLM2 locally and the same model through vLLM upstreams."""
    from_file, untemplated, template = bare
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("models")], n_threads=1, n_slots=2, n_ctx=1024,
                        upstreams={"gpu": {"urls": [v.url for v in vllm], "kind": "vllm", **FAST_CHECKS},
                                   "filed": {"urls": [from_file.url], "chat_template": str(template), **FAST_CHECKS},
                                   "bare": {"urls": [untemplated.url], **FAST_CHECKS}})
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(front):
    return openai.OpenAI(base_url=front.base_url, api_key="x", max_retries=0, timeout=120)


def chat(client, model: str, **kwargs):
    return client.chat.completions.create(model=model, temperature=0, **{"messages": QUESTION, "max_tokens": 24, **kwargs})


def replicas(front):
    return next(s for s in front.state.registry.upstreams.sources if s.config.name == "gpu").replicas.replicas


def test_vllm_models_are_listed_with_max_model_len_and_where_they_run(front):
    models = {m["id"]: m for m in httpx.get(f"{front.base_url}/models").json()["data"]}
    remote = models[REMOTE]
    assert remote["upstream"] == "gpu" and remote["upstream_kind"] == "vllm" and remote["owned_by"] == "gpu"
    assert remote["upstream_meta"] == {"max_model_len": 1024, "root": REMOTE}
    assert remote["context_length"] == 1024 and remote["kind"] == "chat"
    assert models["smol-from-file"]["kind"] == "chat" and models["smol-from-file"]["upstream_kind"] == "vllm"
    assert models["smol-untemplated"]["kind"] == "completion"  # auto-detected vLLM, no template to read


def test_chat_through_vllm_is_the_local_models_answer(client, vllm):
    short = [{"role": "user", "content": "What is 2+2?"}]
    local, remote = (chat(client, model, max_tokens=200, messages=short) for model in (LOCAL, REMOTE))
    assert remote.choices[0].message.content == local.choices[0].message.content
    assert remote.choices[0].finish_reason == local.choices[0].finish_reason == "stop"  # ended on <|im_end|>
    assert remote.usage.completion_tokens == local.usage.completion_tokens
    assert remote.usage.prompt_tokens == local.usage.prompt_tokens
    body = vllm[1].bodies[-1]  # the idle replica took it
    assert body["model"] == REMOTE and body["return_token_ids"] is True and body["skip_special_tokens"] is False
    assert all(isinstance(t, int) for t in body["prompt"]) and body["stream_options"] == {"include_usage": True}


def test_a_template_from_the_chat_template_key_gives_the_same_answer(client):
    assert chat(client, "smol-from-file").choices[0].message.content == chat(client, LOCAL).choices[0].message.content


def test_the_stream_is_the_whole_text_with_usage(client):
    stream = client.chat.completions.create(model=REMOTE, messages=QUESTION, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat(client, LOCAL).choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 24


def test_tools_are_prompted_and_grammar_enforced_by_minerva_through_structured_outputs(client, vllm):
    ask = {"messages": [{"role": "user", "content": "What's the weather in Paris?"}], "tools": TOOLS,
           "tool_choice": "required", "temperature": 0, "max_tokens": 80}
    local = client.chat.completions.create(model=LOCAL, **ask)
    remote = client.chat.completions.create(model=REMOTE, **ask)
    call = remote.choices[0].message.tool_calls[0]
    assert remote.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(local.choices[0].message.tool_calls[0].function.arguments)
    assert "root" in vllm[1].bodies[-1]["structured_outputs"]["grammar"]


def test_anthropic_messages_through_vllm_are_the_local_models(front, client):
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{front.port}", api_key="x", max_retries=0)
    answers = []
    for model in (LOCAL, REMOTE):
        with claude.messages.stream(model=model, max_tokens=24, messages=QUESTION, extra_body={"temperature": 0}) as stream:
            answers.append(("".join(stream.text_stream), stream.get_final_message().usage.output_tokens))
    assert answers[0] == answers[1] and answers[0][0]


def test_logprobs_through_vllm_are_the_local_models(client):
    local, remote = (chat(client, m, max_tokens=6, logprobs=True, top_logprobs=2).choices[0].logprobs.content
                     for m in (LOCAL, REMOTE))
    assert [t.token for t in remote] == [t.token for t in local]
    assert [[a.token for a in t.top_logprobs] for t in remote] == [[a.token for a in t.top_logprobs] for t in local]
    assert all(abs(r.logprob - lo.logprob) < 1e-3 for r, lo in zip(remote, local))


def test_a_raw_completion_through_vllm_is_the_local_models(client):
    ask = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    assert client.completions.create(model=REMOTE, **ask).choices[0].text == \
        client.completions.create(model=LOCAL, **ask).choices[0].text


def test_requests_go_to_the_replica_whose_vllm_queue_is_shorter(front, client, vllm):
    busy, idle = vllm
    deadline = time.monotonic() + 30
    while replicas(front)[0].remote_queue < 50:
        assert time.monotonic() < deadline, "the busy replica's /metrics queue was never read"
        time.sleep(0.05)
    before = (len(busy.bodies), len(idle.bodies))
    for _ in range(3):
        chat(client, REMOTE, max_tokens=2)
    assert (len(busy.bodies) - before[0], len(idle.bodies) - before[1]) == (0, 3)


def test_a_model_without_a_template_is_logged_and_serves_completions(client, catalogue_log):
    assert any("smol-untemplated" in m and "--enable-tokenizer-info-endpoint" in m for m in catalogue_log)
    ask = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    assert client.completions.create(model="smol-untemplated", **ask).choices[0].text == \
        client.completions.create(model=LOCAL, **ask).choices[0].text
