"""Prometheus metrics of one server: request counters and latency histograms, engine gauges at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minerva.core.events import Usage, is_output

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # endpoint label of requests no route matched (keeps label values bounded)

# Time to first token on 2 CPU cores ranges from tens of ms (cached prefix) to minutes (long prompts).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class PoolView(Protocol):
    """What the gauges read from the engine pool."""

    def loaded(self) -> Mapping[str, Any]:
        """Loaded engines by model id."""
        ...

    def memory_bytes(self) -> Mapping[str, int]:
        """Estimated memory of each loaded model."""
        ...


@dataclass
class RequestRecord:
    """What one request reports to its access log line and the metrics, filled in as it runs."""

    started: float
    request_id: str = ""
    status: int | None = None
    first_byte: float | None = None
    model: str | None = None
    usage: Usage | None = None
    first_token: float | None = None  # when the first output event was produced
    last_token: float | None = None
    outcome: str | None = None  # e.g. "client_disconnected"; None: decided by how the app returned

    def observe_event(self, event: object) -> None:
        """Note when the first output and the final usage of a generation stream went by (clock read only then)."""
        if self.first_token is None and is_output(event):
            self.first_token = time.perf_counter()
        if isinstance(event, Usage):
            self.usage = event
            self.last_token = time.perf_counter()


@dataclass(frozen=True)
class RequestObservation:
    """What one finished request contributes to the metrics (read from its access record)."""

    endpoint: str
    method: str
    status: str
    duration_s: float
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float | None = None
    per_token_s: float | None = None


def endpoint_of(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (e.g. /v1/models/{model_id}), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return path if isinstance(path, str) else UNMATCHED


def observation_from(scope: Mapping[str, Any], record: RequestRecord, ended: float) -> RequestObservation:
    """Turn a request's record (see RequestContextMiddleware) into an observation."""
    usage = record.usage
    completion = usage.completion_tokens if usage else 0
    first, last = record.first_token, record.last_token
    ttft = first - record.started if first is not None else None
    per_token = None
    if first is not None and last is not None and completion > 1 and last >= first:
        per_token = (last - first) / (completion - 1)
    return RequestObservation(
        endpoint=endpoint_of(scope),
        method=str(scope.get("method") or "-"),
        status=str(record.status) if record.status is not None else "none",
        duration_s=max(0.0, ended - record.started),
        model=record.model,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=completion,
        cached_tokens=usage.cached_tokens if usage else 0,
        ttft_s=ttft,
        per_token_s=per_token,
    )


class EngineCollector(Collector):
    """Gauges read from the pool and each loaded engine's stats() at scrape time."""

    def __init__(self, pool: PoolView):
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        """One sample per loaded model for each engine figure."""
        loaded = GaugeMetricFamily("minerva_models_loaded", "Models loaded in memory now.")
        memory = GaugeMetricFamily("minerva_model_memory_bytes", "Estimated memory of a loaded model "
                                   "(weights plus KV cache).", labels=["model"])
        queued = GaugeMetricFamily("minerva_queue_depth", "Requests waiting for a slot.", labels=["model"])
        active = GaugeMetricFamily("minerva_active_slots", "Slots generating now.", labels=["model"])
        total = GaugeMetricFamily("minerva_total_slots", "Slots of a loaded model.", labels=["model"])
        held = GaugeMetricFamily("minerva_kv_cached_tokens", "Tokens held in the KV cache (reusable prefixes "
                                 "included).", labels=["model"])
        reused = CounterMetricFamily("minerva_engine_cached_prompt_tokens", "Prompt tokens served from the "
                                     "prefix cache since the model was loaded.", labels=["model"])
        drafted = CounterMetricFamily("minerva_draft_tokens", "Speculative draft tokens verified since the model "
                                      "was loaded.", labels=["model"])
        accepted = CounterMetricFamily("minerva_draft_accepted_tokens", "Speculative draft tokens the sampler kept "
                                       "(acceptance rate: this over minerva_draft_tokens).", labels=["model"])
        kept = GaugeMetricFamily("minerva_prompt_cache_entries", "Prompts whose KV cells are kept outside the slots, "
                                 "by tier (host memory, disk).", labels=["model", "tier"])
        kept_bytes = GaugeMetricFamily("minerva_prompt_cache_bytes", "Bytes of the KV cells kept outside the slots, "
                                       "by tier (host memory, disk).", labels=["model", "tier"])
        engines = dict(self._pool.loaded())
        sizes = dict(self._pool.memory_bytes())
        loaded.add_metric([], len(engines))
        for model_id, engine in sorted(engines.items()):
            memory.add_metric([model_id], sizes.get(model_id, 0))
            try:
                stats = engine.stats()
            except Exception:  # an engine closing under the scrape: report what we can
                logger.debug("stats() of %s failed during a scrape", model_id, exc_info=True)
                continue
            queued.add_metric([model_id], stats.queued)
            active.add_metric([model_id], stats.active_slots)
            total.add_metric([model_id], stats.total_slots)
            held.add_metric([model_id], stats.kv_tokens_held)
            reused.add_metric([model_id], stats.cached_tokens_total)
            drafted.add_metric([model_id], stats.draft_tokens_total)
            accepted.add_metric([model_id], stats.draft_accepted_total)
            for tier, entries, size in (("host", stats.saved_prompts, stats.saved_prompt_bytes),
                                        ("disk", stats.disk_prompts, stats.disk_prompt_bytes)):
                kept.add_metric([model_id, tier], entries)
                kept_bytes.add_metric([model_id, tier], size)
        yield from (loaded, memory, queued, active, total, held, reused, drafted, accepted, kept, kept_bytes)


class ServerMetrics:
    """The metrics of one server, in its own registry (never the process-global one)."""

    def __init__(self, pool: PoolView):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("minerva_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.duration = Histogram("minerva_request_duration_seconds", "Wall time of HTTP requests.",
                                  ["endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.prompt_tokens = Counter("minerva_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter("minerva_completion_tokens", "Completion tokens generated.",
                                         ["model"], registry=r)
        self.cached_tokens = Counter("minerva_cached_prompt_tokens", "Prompt tokens reused from the prefix "
                                     "cache.", ["model"], registry=r)
        self.ttft = Histogram("minerva_time_to_first_token_seconds", "From request arrival to the first "
                              "output token.", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.per_token = Histogram("minerva_time_per_output_token_seconds", "Mean time between output "
                                   "tokens of a request.", ["model"], buckets=TOKEN_BUCKETS, registry=r)
        r.register(EngineCollector(pool))

    def observe(self, item: RequestObservation) -> None:
        """Count one finished request."""
        self.requests.labels(item.endpoint, item.method, item.status).inc()
        self.duration.labels(item.endpoint).observe(item.duration_s)
        if not item.model or item.endpoint == UNMATCHED:
            return
        if item.prompt_tokens:
            self.prompt_tokens.labels(item.model).inc(item.prompt_tokens)
        if item.completion_tokens:
            self.completion_tokens.labels(item.model).inc(item.completion_tokens)
        if item.cached_tokens:
            self.cached_tokens.labels(item.model).inc(item.cached_tokens)
        if item.ttft_s is not None:
            self.ttft.labels(item.model).observe(item.ttft_s)
        if item.per_token_s is not None:
            self.per_token.labels(item.model).observe(item.per_token_s)

    def observe_request(self, scope: Mapping[str, Any], record: RequestRecord, ended: float) -> None:
        """Count one finished request from its ASGI scope and record; never raises."""
        try:
            self.observe(observation_from(scope, record, ended))
        except Exception:  # metrics must never fail a request
            logger.exception("recording request metrics failed")

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
