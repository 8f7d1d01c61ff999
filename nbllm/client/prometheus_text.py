"""Prometheus /metrics text, as nbllm and vLLM servers expose it, read back into a MetricsSnapshot.

The metric names are vLLM's (the server's exposition uses this same table); older vLLM
releases' names are understood too. A data-parallel server reports one label set per
engine, and each metric is summed over them. What the text cannot say (per-block
states, per-request blocks, cached blocks) is left empty in the snapshot.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from nbllm.metrics import Histogram, MetricsSnapshot, now

GAUGES = {"kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
          "num_requests_running": "vllm:num_requests_running",
          "num_requests_waiting": "vllm:num_requests_waiting"}
COUNTERS = {"prefix_cache_queries": "vllm:prefix_cache_queries",
            "prefix_cache_hits": "vllm:prefix_cache_hits",
            "num_preemptions": "vllm:num_preemptions",
            "prompt_tokens_total": "vllm:prompt_tokens",
            "generation_tokens_total": "vllm:generation_tokens"}
HISTOGRAMS = {"time_to_first_token": "vllm:time_to_first_token_seconds",
              "inter_token_latency": "vllm:inter_token_latency_seconds",
              "e2e_request_latency": "vllm:e2e_request_latency_seconds"}
CACHE_CONFIG = "vllm:cache_config_info"
# Names older vLLM releases used for the same quantities.
_OLD_NAMES = {"vllm:kv_cache_usage_perc": "vllm:gpu_cache_usage_perc",
              "vllm:prefix_cache_queries": "vllm:gpu_prefix_cache_queries",
              "vllm:prefix_cache_hits": "vllm:gpu_prefix_cache_hits",
              "vllm:inter_token_latency_seconds": "vllm:time_per_output_token_seconds"}


def snapshot_from_text(text: str) -> MetricsSnapshot:
    """Sum each metric over its label sets (one per engine of a data-parallel server)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    block_size, num_blocks = 0, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == CACHE_CONFIG:
                block_size = int(float(sample.labels.get("block_size", 0) or 0))
                num_blocks += int(float(sample.labels.get("num_gpu_blocks", 0) or 0))
            elif sample.name.endswith("_bucket") and "le" in sample.labels:
                buckets[sample.name[:-len("_bucket")]][float(sample.labels["le"])] += sample.value
            else:
                sums[sample.name] += sample.value
                counts[sample.name] += 1

    def value(name: str, suffix: str = "") -> float:
        for candidate in (name, _OLD_NAMES.get(name)):
            if candidate and candidate + suffix in sums:
                return sums[candidate + suffix]
        return 0.0

    def gauge_mean(name: str) -> float:
        for candidate in (name, _OLD_NAMES.get(name)):
            if candidate in counts:
                return sums[candidate] / counts[candidate]
        return 0.0

    def histogram(name: str) -> Histogram:
        for candidate in (name, _OLD_NAMES.get(name)):
            if candidate in buckets:
                return _histogram(buckets[candidate], sums[candidate + "_sum"], sums[candidate + "_count"])
        return Histogram()

    usage = gauge_mean(GAUGES["kv_cache_usage_perc"])
    return MetricsSnapshot(
        timestamp=now(), kv_cache_usage_perc=usage, num_blocks_total=num_blocks,
        num_blocks_used=round(usage * num_blocks), num_blocks_cached=0, block_size=block_size,
        num_requests_running=int(value(GAUGES["num_requests_running"])),
        num_requests_waiting=int(value(GAUGES["num_requests_waiting"])),
        prefix_cache_queries=int(value(COUNTERS["prefix_cache_queries"], "_total")),
        prefix_cache_hits=int(value(COUNTERS["prefix_cache_hits"], "_total")),
        num_preemptions=int(value(COUNTERS["num_preemptions"], "_total")),
        prompt_tokens_total=int(value(COUNTERS["prompt_tokens_total"], "_total")),
        generation_tokens_total=int(value(COUNTERS["generation_tokens_total"], "_total")),
        requests_finished_total=int(histogram(HISTOGRAMS["e2e_request_latency"]).count),
        tokens_per_second=0.0, running_request_blocks={}, block_states=[],
        time_to_first_token=histogram(HISTOGRAMS["time_to_first_token"]),
        inter_token_latency=histogram(HISTOGRAMS["inter_token_latency"]),
        e2e_request_latency=histogram(HISTOGRAMS["e2e_request_latency"]))


def _histogram(cumulative: dict[float, float], total: float, count: float) -> Histogram:
    bounds = sorted(b for b in cumulative if b != float("inf"))
    counts, previous = [], 0.0
    for bound in bounds:
        counts.append(int(cumulative[bound] - previous))
        previous = cumulative[bound]
    counts.append(int(cumulative.get(float("inf"), count) - previous))
    return Histogram(buckets=tuple(bounds), counts=counts, total=total, count=int(count))
