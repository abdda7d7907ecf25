"""GET /metrics: request counters, token counters, latency histograms and engine gauges (scripted engine)."""

import dataclasses

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from minerva.api.app import create_app
from minerva.core.events import Usage
from minerva.metrics import UNMATCHED, RequestRecord, observation_from
from minerva.settings import Settings
from tests.servers import running_server
from tests.scripted_engine import Script, scripted_loader

MODEL = "smollm2-135m-instruct"


def samples(server, headers=None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(table, name: str, **labels) -> float:
    return table.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    choose = lambda prompt, call: Script([b"one", b" two", b" three", b" four"], piece_delay_s=0.01)  # noqa: E731
    settings = Settings(models_dirs=[tmp_path_factory.mktemp("empty")], api_keys=["sk-metrics"])
    with running_server(settings, loader=scripted_loader(choose)) as running:
        yield running


AUTH = {"authorization": "Bearer sk-metrics"}


def chat(server, stream: bool = False, model: str = MODEL) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "count"}],
            "stream_options": {"include_usage": True} if stream else None}
    return httpx.post(server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=30)


def test_metrics_open_without_key_and_counts_requests(server):
    before = samples(server)
    assert chat(server).status_code == 200
    assert chat(server, stream=True).status_code == 200
    assert chat(server, model="no-such-model").status_code == 404
    assert httpx.get(server.base_url + "/nowhere/../etc", headers=AUTH).status_code == 404
    assert httpx.get(server.base_url + "/models", headers=AUTH).status_code == 200
    after = samples(server)
    endpoint = "/v1/chat/completions"
    ok = dict(endpoint=endpoint, method="POST", status="200")
    assert value(after, "minerva_requests_total", **ok) - value(before, "minerva_requests_total", **ok) == 2
    missing = dict(endpoint=endpoint, method="POST", status="404")
    assert value(after, "minerva_requests_total", **missing) - value(before, "minerva_requests_total", **missing) == 1
    assert value(after, "minerva_requests_total", endpoint=UNMATCHED, method="GET", status="404") >= 1
    assert value(after, "minerva_requests_total", endpoint="/v1/models", method="GET", status="200") >= 1
    # the raw path and the bogus model name never become label values
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    assert "nowhere" not in text and "no-such-model" not in text


def test_tokens_and_latency_histograms(server):
    before = samples(server)
    assert chat(server).json()["usage"]["completion_tokens"] == 4
    assert chat(server, stream=True).status_code == 200
    after = samples(server)

    def delta(name):
        return value(after, name, model=MODEL) - value(before, name, model=MODEL)

    assert delta("minerva_completion_tokens_total") == 8
    assert delta("minerva_prompt_tokens_total") > 0
    assert delta("minerva_time_to_first_token_seconds_count") == 2
    assert delta("minerva_time_per_output_token_seconds_count") == 2
    per_token = delta("minerva_time_per_output_token_seconds_sum") / 2
    assert 0.005 < per_token < 1.0  # the script sleeps 10 ms between pieces


def test_engine_gauges(server):
    chat(server)
    table = samples(server)
    assert value(table, "minerva_models_loaded") == 1
    assert value(table, "minerva_model_memory_bytes", model=MODEL) > 0
    assert value(table, "minerva_total_slots", model=MODEL) == 1  # the scripted engine's stats()
    assert value(table, "minerva_active_slots", model=MODEL) == 0
    assert value(table, "minerva_queue_depth", model=MODEL) == 0


def test_each_app_has_its_own_registry(tmp_path):
    one = create_app(Settings(models_dirs=[tmp_path]))
    two = create_app(Settings(models_dirs=[tmp_path]))
    assert one.state.minerva.metrics.registry is not two.state.minerva.metrics.registry
    one.state.minerva.metrics.requests.labels("/x", "GET", "200").inc()
    assert b'endpoint="/x"' not in two.state.minerva.metrics.render()


def test_observation_from_access_record():
    record = RequestRecord(started=10.0, first_token=10.5, last_token=11.5, status=200, model="m",
                           usage=Usage(prompt_tokens=7, completion_tokens=5, cached_tokens=3))
    item = observation_from({"method": "POST"}, record, ended=12.0)
    assert item.endpoint == UNMATCHED and item.status == "200" and item.duration_s == 2.0
    assert item.ttft_s == 0.5 and item.per_token_s == 0.25 and item.cached_tokens == 3
    single = observation_from({}, dataclasses.replace(record, usage=Usage(0, 1)), ended=12.0)
    assert single.per_token_s is None  # one token has no inter-token gap
    empty = observation_from({}, RequestRecord(started=1.0, status=None), ended=2.0)
    assert empty.status == "none" and empty.ttft_s is None and empty.prompt_tokens == 0
