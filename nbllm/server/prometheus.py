"""The engine's MetricsSnapshot and the server's per-request statistics as Prometheus text, with vLLM's names.

`EngineCollector` reads `llm.get_stats()` at each scrape (register it in a per-app
CollectorRegistry), and the server's RequestStats, so that vLLM's Grafana dashboard
reads `nbllm serve` unchanged: the engine-wide gauges, counters and latency histograms
(nbllm.client.prometheus_text reads these back for RemoteLLM), `iteration_tokens_total`,
`num_requests_waiting_by_reason`, `request_success_total` by finish reason, and the
per-request length, parameter and phase-time histograms.
"""

from __future__ import annotations

from typing import Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from nbllm.client.prometheus_text import CACHE_CONFIG, COUNTERS, GAUGES, HISTOGRAMS
from nbllm.metrics import Histogram, MetricsSnapshot
from nbllm.protocol import EngineClient
from nbllm.server.request_stats import RequestStats

# RequestStats' histograms, by vLLM's names.
REQUEST_HISTOGRAMS = {"prompt_tokens": "vllm:request_prompt_tokens",
                      "generation_tokens": "vllm:request_generation_tokens",
                      "params_n": "vllm:request_params_n",
                      "params_max_tokens": "vllm:request_params_max_tokens",
                      "queue_time": "vllm:request_queue_time_seconds",
                      "inference_time": "vllm:request_inference_time_seconds",
                      "prefill_time": "vllm:request_prefill_time_seconds",
                      "decode_time": "vllm:request_decode_time_seconds",
                      "num_preemptions": "vllm:request_num_preemptions"}


class EngineCollector:
    """A prometheus_client collector over one engine's metrics and one server's request statistics."""

    def __init__(self, llm: EngineClient, model_name: str, stats: Optional[RequestStats] = None):
        self._llm = llm
        self._stats = stats
        self._labels = {"model_name": model_name, "engine": "0"}

    def collect(self) -> Iterator[Metric]:
        snapshot: MetricsSnapshot = self._llm.get_stats()
        names, values = list(self._labels), list(self._labels.values())
        for field, name in GAUGES.items():
            gauge = GaugeMetricFamily(name, f"nbllm {field}", labels=names)
            gauge.add_metric(values, float(getattr(snapshot, field)))
            yield gauge
        by_reason = GaugeMetricFamily("vllm:num_requests_waiting_by_reason",
                                      "Waiting requests by reason (capacity: waiting for room in the batch)",
                                      labels=names + ["reason"])
        by_reason.add_metric(values + ["capacity"], float(snapshot.num_requests_waiting))
        by_reason.add_metric(values + ["deferred"], 0.0)
        yield by_reason
        for field, name in COUNTERS.items():
            counter = CounterMetricFamily(name, f"nbllm {field}", labels=names)
            counter.add_metric(values, float(getattr(snapshot, field)))
            yield counter
        for field, name in HISTOGRAMS.items():
            yield _histogram_family(name, getattr(snapshot, field), names, values)
        yield _histogram_family("vllm:iteration_tokens_total", snapshot.iteration_tokens, names, values)
        if self._stats is not None:
            yield from self._request_families(self._stats, names, values)
        info = GaugeMetricFamily(CACHE_CONFIG, "KV cache configuration", labels=["block_size", "num_gpu_blocks"])
        info.add_metric([str(snapshot.block_size), str(snapshot.num_blocks_total)], 1.0)
        yield info

    @staticmethod
    def _request_families(stats: RequestStats, names: list[str], values: list[str]) -> Iterator[Metric]:
        success = CounterMetricFamily("vllm:request_success", "Finished requests by finish reason",
                                      labels=names + ["finished_reason"])
        for reason, count in stats.success.items():
            success.add_metric(values + [reason], float(count))
        yield success
        for field, name in REQUEST_HISTOGRAMS.items():
            yield _histogram_family(name, getattr(stats, field), names, values)


def _histogram_family(name: str, histogram: Histogram, names: list[str], values: list[str]) -> Metric:
    family = HistogramMetricFamily(name, f"nbllm {name}", labels=names)
    cumulative, buckets = 0, []
    for bound, count in zip(histogram.buckets, histogram.counts):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", histogram.count))
    family.add_metric(values, buckets, histogram.total)
    return family
