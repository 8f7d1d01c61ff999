"""The engine's MetricsSnapshot as Prometheus text with vLLM's metric names.

`EngineCollector` reads `llm.get_stats()` at each scrape (register it in a
per-app CollectorRegistry). The names are those nbllm.client.prometheus_text reads
back into a snapshot for RemoteLLM.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from nbllm.client.prometheus_text import CACHE_CONFIG, COUNTERS, GAUGES, HISTOGRAMS
from nbllm.metrics import Histogram, MetricsSnapshot
from nbllm.protocol import EngineClient


class EngineCollector:
    """A prometheus_client collector over one engine's metrics."""

    def __init__(self, llm: EngineClient, model_name: str):
        self._llm = llm
        self._labels = {"model_name": model_name, "engine": "0"}

    def collect(self) -> Iterator[Metric]:
        snapshot: MetricsSnapshot = self._llm.get_stats()
        names, values = list(self._labels), list(self._labels.values())
        for field, name in GAUGES.items():
            gauge = GaugeMetricFamily(name, f"nbllm {field}", labels=names)
            gauge.add_metric(values, float(getattr(snapshot, field)))
            yield gauge
        for field, name in COUNTERS.items():
            counter = CounterMetricFamily(name, f"nbllm {field}", labels=names)
            counter.add_metric(values, float(getattr(snapshot, field)))
            yield counter
        for field, name in HISTOGRAMS.items():
            yield _histogram_family(name, getattr(snapshot, field), names, values)
        info = GaugeMetricFamily(CACHE_CONFIG, "KV cache configuration", labels=["block_size", "num_gpu_blocks"])
        info.add_metric([str(snapshot.block_size), str(snapshot.num_blocks_total)], 1.0)
        yield info


def _histogram_family(name: str, histogram: Histogram, names: list[str], values: list[str]) -> Metric:
    family = HistogramMetricFamily(name, f"nbllm {name}", labels=names)
    cumulative, buckets = 0, []
    for bound, count in zip(histogram.buckets, histogram.counts):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", histogram.count))
    family.add_metric(values, buckets, histogram.total)
    return family
