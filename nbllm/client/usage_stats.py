"""Token counts of one RemoteLLM's own requests, from the `usage` the server returned.

A server without vLLM's /metrics still reports `usage` on each response, so a
RemoteLLM can say how many requests it sent and how many tokens went in and came
out, and at what rate (a stream without usage, as llama-cpp-python's, counts its
text chunks as generated tokens and its prompt not at all: OutputBuilder.end_call).
`snapshot` puts those counts in a MetricsSnapshot whose
server-side fields (KV cache, queues, latency histograms) are empty: they are not
known here, and `capabilities.metrics` stays False to say so.
"""

from __future__ import annotations

import threading
from collections import deque

from nbllm.client.wire import OutputBuilder
from nbllm.metrics import Histogram, MetricsSnapshot, now

_RATE_WINDOW_S = 10.0


class UsageCounter:
    """Thread-safe totals over finished requests; `record` is each RemoteRequest's on_end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_finished = 0
        self.requests_failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._recent: deque[tuple[float, int]] = deque()

    def record(self, builder: OutputBuilder, ok: bool) -> None:
        generated = builder.completion_tokens or sum(len(c.token_ids) for c in builder.choices)
        t = now()
        with self._lock:
            self.requests_finished += ok
            self.requests_failed += not ok
            self.prompt_tokens += builder.prompt_tokens or len(builder.prompt_token_ids)
            self.completion_tokens += generated
            self._recent.append((t, generated))
            while self._recent and t - self._recent[0][0] > _RATE_WINDOW_S:
                self._recent.popleft()

    def snapshot(self, running: int) -> MetricsSnapshot:
        """This client's counts (requests `running` now are its own in flight); server-side fields empty."""
        t = now()
        with self._lock:
            recent = [(stamp, n) for stamp, n in self._recent if t - stamp <= _RATE_WINDOW_S]
            rate = sum(n for _, n in recent) / _RATE_WINDOW_S if recent else 0.0
            return MetricsSnapshot(
                timestamp=t, kv_cache_usage_perc=0.0, num_blocks_total=0, num_blocks_used=0, num_blocks_cached=0,
                block_size=0, num_requests_running=running, num_requests_waiting=0, prefix_cache_queries=0,
                prefix_cache_hits=0, num_preemptions=0, prompt_tokens_total=self.prompt_tokens,
                generation_tokens_total=self.completion_tokens, requests_finished_total=self.requests_finished,
                tokens_per_second=rate, running_request_blocks={}, block_states=[],
                time_to_first_token=Histogram(), inter_token_latency=Histogram(), e2e_request_latency=Histogram())
