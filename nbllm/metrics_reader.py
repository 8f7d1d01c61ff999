"""vLLM's in-memory metrics API: `LLM.get_metrics()` as a list of Counter/Gauge/Histogram/Vector.

The same names and shapes as vllm.v1.metrics.reader, built from the engine's
MetricsSnapshot (nbllm/metrics.py), so code written against vLLM's offline metrics
reads nbllm's unchanged. Histogram buckets map an upper bound ("0.5", ..., "+Inf")
to the cumulative count of observations at or below it, as Prometheus counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbllm.metrics import Histogram as SnapshotHistogram
from nbllm.metrics import MetricsSnapshot


@dataclass
class Metric:
    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    value: int


@dataclass
class Vector(Metric):
    values: list[int]


@dataclass
class Gauge(Metric):
    value: float


@dataclass
class Histogram(Metric):
    count: int
    sum: float
    buckets: dict[str, int]


_GAUGES = (("vllm:num_requests_running", "num_requests_running"),
           ("vllm:num_requests_waiting", "num_requests_waiting"),
           ("vllm:kv_cache_usage_perc", "kv_cache_usage_perc"))
_COUNTERS = (("vllm:prefix_cache_queries", "prefix_cache_queries"), ("vllm:prefix_cache_hits", "prefix_cache_hits"),
             ("vllm:num_preemptions", "num_preemptions"), ("vllm:prompt_tokens", "prompt_tokens_total"),
             ("vllm:generation_tokens", "generation_tokens_total"),
             ("vllm:request_success", "requests_finished_total"))
_HISTOGRAMS = (("vllm:time_to_first_token_seconds", "time_to_first_token"),
               ("vllm:inter_token_latency_seconds", "inter_token_latency"),
               ("vllm:e2e_request_latency_seconds", "e2e_request_latency"))


def metrics_from_snapshot(snapshot: MetricsSnapshot, model_name: str) -> list[Metric]:
    labels = {"model_name": model_name, "engine": "0"}
    metrics: list[Metric] = [Gauge(name, dict(labels), float(getattr(snapshot, field))) for name, field in _GAUGES]
    metrics += [Counter(name, dict(labels), int(getattr(snapshot, field))) for name, field in _COUNTERS]
    metrics += [_histogram(name, dict(labels), getattr(snapshot, field)) for name, field in _HISTOGRAMS]
    return metrics


def _histogram(name: str, labels: dict[str, str], histogram: SnapshotHistogram) -> Histogram:
    buckets: dict[str, int] = {}
    running = 0
    for bound, count in zip(histogram.buckets, histogram.counts):
        running += count
        buckets[str(bound)] = running
    buckets["+Inf"] = histogram.count
    return Histogram(name, labels, histogram.count, histogram.total, buckets)
