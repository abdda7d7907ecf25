"""Upstream engines with real upstreams on loopback: two llama-servers (one upstream, two replicas) and a minerva."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from minerva.settings import Settings
from tests.servers import running_server
from tests.upstreams import LlamaServer, llama_server_binary, llama_servers

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NO_END = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>: the stream runs to max_tokens


@pytest.fixture(scope="module")
def fleet(smollm2_path, tmp_path_factory):
    """Two llama-servers on SmolLM2, built from the vendored llama.cpp."""
    with llama_servers(llama_server_binary(), smollm2_path, tmp_path_factory.mktemp("llama"), 2) as servers:
        yield servers


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """A minerva serving the embedded SmolLM2, used as an upstream."""
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("peer-models")], n_threads=1, n_slots=2, n_ctx=1024)
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def front(fleet, peer, tmp_path_factory):
    """A minerva with no model of its own in front of the fleet and the peer."""
    fast_checks = {"health_interval_s": 0.2, "connect_s": 2}
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("front-models")], include_default_model=False,
                        upstreams={"fleet": {"urls": [s.url for s in fleet], **fast_checks},
                                   "peer": {"urls": [peer.base_url], "api_key": "unused", **fast_checks}})
    with running_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(front):
    return openai.OpenAI(base_url=front.base_url, api_key="sk-test", max_retries=0, timeout=120)


def replicas(front, name: str):
    return next(s for s in front.state.registry.upstreams.sources if s.config.name == name).replicas.replicas


def wait_until(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def chat(client, model: str, **kwargs) -> str:
    reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24, **kwargs)
    return reply.choices[0].message.content


def test_models_are_listed_with_what_their_upstream_reports(client, front):
    models = {m["id"]: m for m in httpx.get(f"{front.base_url}/models").json()["data"]}
    assert set(models) == {"smollm2-remote", "smollm2-135m-instruct"}
    remote = models["smollm2-remote"]
    assert remote["owned_by"] == "fleet" and remote["upstream"] == "fleet" and remote["upstream_kind"] == "llama-server"
    assert remote["upstream_meta"]["n_ctx_train"] == 8192 and remote["upstream_meta"]["n_params"] == 134515008
    assert remote["context_length"] == 8192 and remote["quantization"] == "Q4_1" and remote["kind"] == "chat"
    peer = models["smollm2-135m-instruct"]
    assert peer["owned_by"] == "peer" and peer["upstream_kind"] == "minerva"
    assert peer["upstream_meta"]["quantization"] == "Q4_1" and peer["upstream_meta"]["format"] == "gguf"
    assert len(json.dumps(remote)) < 1024


def test_llama_server_and_minerva_upstreams_answer_as_a_local_model(client, peer):
    local = openai.OpenAI(base_url=peer.base_url, api_key="x", max_retries=0, timeout=120)
    expected = chat(local, "smollm2-135m-instruct")
    assert chat(client, "smollm2-remote") == expected
    assert chat(client, "smollm2-135m-instruct") == expected


@pytest.mark.parametrize("model", ["smollm2-remote", "smollm2-135m-instruct"])
def test_streamed_text_is_the_whole_text(client, model):
    stream = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat(client, model)
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].usage.prompt_tokens > 20


def test_tools_are_prompted_and_grammar_enforced_by_minerva(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = client.chat.completions.create(
        model="smollm2-remote", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=tools, tool_choice="required", temperature=0, max_tokens=80)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)


def test_anthropic_messages_through_an_upstream(front):
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{front.port}", api_key="x", max_retries=0)
    with claude.messages.stream(model="smollm2-remote", max_tokens=24, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and 0 < final.usage.output_tokens <= 24
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_responses_through_an_upstream(client):
    response = client.responses.create(model="smollm2-135m-instruct", input="What is the capital of France?",
                                       temperature=0, max_output_tokens=24)
    assert response.status == "incomplete" and response.output_text == chat(client, "smollm2-135m-instruct")


def predicted(server: LlamaServer) -> float:
    return server.metric("llamacpp:tokens_predicted_total")


def test_two_replicas_share_concurrent_streams(client, fleet):
    before = [predicted(s) for s in fleet]
    streams = [client.chat.completions.create(model="smollm2-remote", messages=QUESTION, max_tokens=8, stream=True,
                                              logit_bias=NO_END) for _ in range(2)]
    for stream in streams:
        list(stream)
    assert [predicted(s) - b for s, b in zip(fleet, before)] == [8, 8]


def test_a_session_stays_on_the_replica_that_served_it(client, fleet):
    before = [predicted(s) for s in fleet]
    for _ in range(3):
        client.chat.completions.create(model="smollm2-remote", messages=QUESTION, max_tokens=5, logit_bias=NO_END,
                                       extra_headers={"x-session-affinity": "session-1"})
    assert sorted(predicted(s) - b for s, b in zip(fleet, before)) == [0, 15]


def test_a_replica_killed_mid_stream_ends_that_stream_with_an_error_and_comes_back(client, front, fleet):
    stream = client.chat.completions.create(model="smollm2-remote", messages=QUESTION, max_tokens=600, stream=True,
                                            logit_bias=NO_END)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    victim = next(s for s in fleet if s.processing())
    victim.kill()
    with pytest.raises(openai.APIError, match="upstream"):
        for _ in chunks:
            pass
    state = {r.url: r for r in replicas(front, "fleet")}
    victim_replica = state[f"http://127.0.0.1:{victim.port}"]
    assert not victim_replica.healthy
    assert chat(client, "smollm2-remote")  # the next request goes to the other replica
    victim.start()
    wait_until(lambda: victim_replica.healthy, "the restarted replica to be checked healthy")


def test_a_replica_killed_idle_is_failed_over_without_an_error(client, front, fleet):
    victim = fleet[0]
    victim.kill()
    for _ in range(3):  # whichever replica each request picks, none fails
        assert chat(client, "smollm2-remote", extra_headers={"x-session-affinity": "session-2"})
    victim_replica = next(r for r in replicas(front, "fleet") if r.url.endswith(f":{victim.port}"))
    wait_until(lambda: not victim_replica.healthy, "the dead replica to be taken out")
    victim.start()
    wait_until(lambda: victim_replica.healthy, "the restarted replica to be back")
    before = predicted(victim)
    wait_until(lambda: chat(client, "smollm2-remote") and predicted(victim) > before, "requests to reach it again")
