"""Engine metrics: counters and histograms recorded each step, and the snapshot users read.

Names follow vLLM's metrics where vLLM has one (kv_cache_usage_perc,
num_requests_running, prefix cache queries/hits, num_preemptions, prompt and
generation token totals, time to first token, inter-token latency). The notebook's
KV monitor and the server's /metrics read only `MetricsSnapshot`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # vLLM's
_THROUGHPUT_WINDOW_S = 5.0


@dataclass
class Histogram:
    """Cumulative-bucket histogram in Prometheus' sense."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def copy(self) -> "Histogram":
        return Histogram(self.buckets, list(self.counts), self.total, self.count)


@dataclass
class MetricsSnapshot:
    """A consistent view of the engine at one moment."""

    timestamp: float
    kv_cache_usage_perc: float  # 0..1, as vLLM reports it
    num_blocks_total: int
    num_blocks_used: int
    num_blocks_cached: int
    block_size: int
    num_requests_running: int
    num_requests_waiting: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int
    tokens_per_second: float  # generated tokens per second over the last few seconds
    running_request_blocks: dict[str, int]  # request id -> blocks held
    block_states: list[str]  # per usable block: "free" | "used" | "cached"
    time_to_first_token: Histogram
    inter_token_latency: Histogram
    e2e_request_latency: Histogram
    # running request id -> the indices into block_states of the blocks it holds (a block held by
    # several requests is shared: a common prefix, or beams forked from one another)
    request_blocks: dict[str, list[int]] = field(default_factory=dict)
    iteration_tokens: "Histogram" = field(default_factory=lambda: iteration_histogram())  # tokens per engine step

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return data


class MetricsRecorder:
    """Counters the engine updates as it runs; one per engine."""

    def __init__(self) -> None:
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished_total = 0
        self.time_to_first_token = Histogram()
        self.inter_token_latency = Histogram()
        self.e2e_request_latency = Histogram()
        self.iteration_tokens = iteration_histogram()
        self._recent: deque[tuple[float, int]] = deque()

    def record_generated(self, num_tokens: int, now: float) -> None:
        self.generation_tokens_total += num_tokens
        self._recent.append((now, num_tokens))
        while self._recent and now - self._recent[0][0] > _THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self, now: float) -> float:
        recent = [(t, n) for t, n in self._recent if now - t <= _THROUGHPUT_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0][0], 1e-6)
        return sum(n for _, n in recent[1:]) / span


def iteration_histogram() -> Histogram:
    """vLLM's vllm:iteration_tokens_total: the tokens each engine step computed."""
    return Histogram(ITERATION_TOKEN_BUCKETS, [0] * (len(ITERATION_TOKEN_BUCKETS) + 1))


def now() -> float:
    return time.monotonic()
