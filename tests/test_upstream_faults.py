"""Upstream faults against tiny fake upstreams: hangs, stalls, garbage, error statuses, failover, hang-ups."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest

from minerva.core.errors import InvalidRequestError
from minerva.engine.upstream.config import parse_upstream_flag, server_root, upstream_config
from minerva.engine.upstream.protocol import ChunkDecoder, UnresolvedToken, parse_sse_data
from minerva.engine.upstream.replicas import ReplicaSet
from minerva.engine.base import GenerationEnd, TokenEvent
from minerva.core.errors import UpstreamError
from minerva.settings import Settings, build_settings
from tests.servers import running_server
from tests.upstreams import FakeUpstream

QUICK = {"connect_s": 2, "first_token_s": 1.0, "between_tokens_s": 1.0, "health_interval_s": 0.2}


@contextlib.contextmanager
def front_of(tmp_path, *fakes: FakeUpstream, **timeouts):
    settings = Settings(models_dirs=[tmp_path], include_default_model=False,
                        upstreams={"fakes": {"urls": [f.url for f in fakes], **QUICK, **timeouts}})
    with running_server(settings) as server:
        yield server, openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)


def ask(client, **kwargs):
    return client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          **kwargs)


def test_a_hanging_upstream_is_a_timeout_not_a_500(tmp_path):
    with FakeUpstream("hang") as fake, front_of(tmp_path, fake) as (_, client):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client)
    assert caught.value.status_code == 504 and caught.value.body["code"] == "upstream_timeout"


def test_an_upstream_that_stalls_mid_stream_ends_it_with_an_error_event(tmp_path):
    with FakeUpstream("stall") as fake, front_of(tmp_path, fake) as (_, client):
        stream = ask(client, stream=True)
        with pytest.raises(openai.APIError, match="sent no token"):
            list(stream)


def test_an_upstream_sending_garbage_is_a_bad_gateway(tmp_path):
    with FakeUpstream("garbage") as fake, front_of(tmp_path, fake) as (_, client):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client)
    assert caught.value.status_code == 502 and "malformed" in caught.value.message


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (503, 502), (400, 400)])
def test_upstream_error_statuses_map_to_typed_errors(tmp_path, status, expected):
    with FakeUpstream(f"status:{status}") as fake, front_of(tmp_path, fake) as (_, client):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client)
    assert caught.value.status_code == expected and "the fake refuses" in caught.value.message


def test_a_replica_failing_before_its_first_token_is_replaced_by_another(tmp_path):
    with FakeUpstream("hang") as hanging, FakeUpstream("status:500") as failing, FakeUpstream("ok") as good, \
            front_of(tmp_path, hanging, failing, good) as (server, client):
        for _ in range(2):
            assert ask(client).choices[0].message.content == "aaa"
        assert good.completions == 2 and hanging.completions == 1 and failing.completions == 1
        states = {r.url: r.healthy for r in server.state.registry.upstreams.sources[0].replicas.replicas}
        assert states[server_root(good.url)] and not states[server_root(failing.url)]


def test_a_client_that_hangs_up_closes_the_upstream_request(tmp_path):
    with FakeUpstream("ok", n_tokens=10_000, token_gap_s=0.02) as fake, front_of(tmp_path, fake) as (server, _):
        with httpx.stream("POST", f"{server.base_url}/chat/completions", timeout=30, json={
                "model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000,
                "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if '"content":"a"' in line)  # a token came through the upstream
        assert fake.disconnected.wait(30)


def test_upstream_settings_from_flags_and_config(tmp_path):
    config = tmp_path / "minerva.toml"
    config.write_text('[upstreams.gpu]\nurls = ["http://10.0.0.5:8000/v1/"]\napi_key = "k"\nmodels = ["m"]\n'
                      'first_token_s = 30\n')
    flag_name, flag_urls = parse_upstream_flag("cpu=http://a:1/v1,http://b:2")
    settings = build_settings(config, upstreams={flag_name: {"urls": flag_urls}})
    gpu = upstream_config("gpu", settings.upstreams["gpu"].model_dump())
    cpu = upstream_config("cpu", settings.upstreams["cpu"].model_dump())
    assert gpu.urls == ("http://10.0.0.5:8000",) and gpu.api_key == "k" and gpu.models == ("m",)
    assert gpu.timeouts.first_token_s == 30 and cpu.urls == ("http://a:1", "http://b:2")
    with pytest.raises(InvalidRequestError):
        parse_upstream_flag("no-urls=")


def test_balancing_prefers_the_least_loaded_and_the_sessions_replica():
    replicas = ReplicaSet("r", ("http://a", "http://b"))
    a, b = replicas.replicas
    a.in_flight = 1
    assert replicas.pick() is b
    replicas.served(a, "s")
    assert replicas.pick("s") is a  # one more request is within the affinity slack
    a.in_flight = 5
    assert replicas.pick("s") is b
    replicas.mark_down(b, "gone")
    assert replicas.pick("s") is a and replicas.pick(exclude=(a,)) is b  # a down replica is still a last resort


def test_chunks_credit_text_to_tokens_and_drop_the_end_token():
    decoder = ChunkDecoder(frozenset({2}), want_logprobs=False, prompt_tokens=4)
    assert decoder.feed({"content": "é", "tokens": [7, 8]}) == [TokenEvent(7, "é".encode()), TokenEvent(8, b"")]
    assert decoder.feed({"content": "", "tokens": [50]}) == []  # held: a special token, or the end
    assert decoder.feed({"content": "x", "tokens": [9]}) == [UnresolvedToken(50), TokenEvent(9, b"x")]
    assert decoder.feed({"content": "", "tokens": [2]}) == []
    end = decoder.feed({"stop": True, "stop_type": "eos", "tokens_predicted": 5, "tokens_evaluated": 4,
                        "timings": {"cache_n": 3}})
    assert end == [GenerationEnd("stop", 4, 4, 3)]
    with pytest.raises(UpstreamError):
        parse_sse_data("data: [1, 2")
    with pytest.raises(UpstreamError):
        decoder.feed({"error": {"message": "boom"}})
