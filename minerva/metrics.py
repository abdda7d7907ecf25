"""Prometheus metrics of one server: request counters and latency histograms, engine gauges at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def observation_from(scope: Mapping[str, Any], record: Mapping[str, Any], ended: float) -> RequestObservation:
    """Turn a request's access record (see RequestContextMiddleware) into an observation."""
    started = record.get("started", ended)
    usage = record.get("usage") or {}
    completion = _int(usage.get("completion_tokens"))
    first, last = record.get("first_token"), record.get("last_token")
    ttft = first - started if isinstance(first, float) else None
    per_token = None
    if isinstance(first, float) and isinstance(last, float) and completion > 1 and last >= first:
        per_token = (last - first) / (completion - 1)
    status = record.get("status")
    return RequestObservation(
        endpoint=endpoint_of(scope),
        method=str(scope.get("method") or "-"),
        status=str(status) if status is not None else "none",
        duration_s=max(0.0, ended - started),
        model=record.get("model"),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=completion,
        cached_tokens=_int((usage.get("prompt_tokens_details") or {}).get("cached_tokens")),
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
            queued.add_metric([model_id], stats.get("queued", 0))
            active.add_metric([model_id], stats.get("active_slots", 0))
            total.add_metric([model_id], stats.get("total_slots", 0))
            held.add_metric([model_id], stats.get("kv_tokens_held", 0))
            reused.add_metric([model_id], stats.get("cached_tokens_total", 0))
        yield from (loaded, memory, queued, active, total, held, reused)


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

    def observe_request(self, scope: Mapping[str, Any], record: Mapping[str, Any], ended: float) -> None:
        """Count one finished request from its ASGI scope and access record; never raises."""
        try:
            self.observe(observation_from(scope, record, ended))
        except Exception:  # metrics must never fail a request
            logger.exception("recording request metrics failed")

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
