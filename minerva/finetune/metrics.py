"""Prometheus metrics of fine-tuning, read from the job store at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from minerva.finetune.store import FineTuneStore

JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


class FineTuningCollector:
    """Jobs by status and the tokens trained, for a server's metrics registry."""

    def __init__(self, store: FineTuneStore):
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        jobs = GaugeMetricFamily("minerva_fine_tuning_jobs", "Fine-tuning jobs by status.", labels=["status"])
        tokens = CounterMetricFamily("minerva_fine_tuning_trained_tokens", "Tokens trained by fine-tuning jobs.")
        counts = self._store.job_counts()
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, (0, 0))[0])
        tokens.add_metric([], sum(trained for _, trained in counts.values()))
        yield from (jobs, tokens)
