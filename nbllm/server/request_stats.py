"""Per-request statistics of the requests this server answered, for vLLM's Prometheus families.

vLLM's dashboards read histograms that the engine's snapshot does not hold: prompt and
generation lengths, `n` and `max_tokens`, and each finished request's queue, inference,
prefill and decode times (from the RequestMetrics timestamps every RequestOutput
carries), plus a counter of finished requests by reason. `RequestStats` records them
as the server's requests finish. Requests the notebook runs on the same engine
directly are not the server's and are not counted here (the engine-wide families
are). `timing_fields` is vLLM's per-request `metrics` object (--enable-per-request-metrics).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from nbllm.metrics import Histogram
from nbllm.outputs import RequestMetrics, RequestOutput

REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error")


def buckets_1_2_5(maximum: int) -> tuple[int, ...]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to `maximum`."""
    out, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10 ** exponent
            if value > maximum:
                return tuple(out)
            out.append(value)
        exponent += 1


def _histogram(buckets: tuple) -> Histogram:
    return Histogram(buckets=tuple(float(b) for b in buckets), counts=[0] * (len(buckets) + 1))


class RequestStats:
    """Histograms and counters over finished requests (updated on the event loop, read by /metrics)."""

    def __init__(self, max_model_len: int):
        lengths = buckets_1_2_5(max_model_len)
        self.success: Counter[str] = Counter({reason: 0 for reason in FINISH_REASONS})
        self.prompt_tokens = _histogram(lengths)
        self.generation_tokens = _histogram(lengths)
        self.params_n = _histogram(N_BUCKETS)
        self.params_max_tokens = _histogram(lengths)
        self.queue_time = _histogram(REQUEST_LATENCY_BUCKETS)
        self.inference_time = _histogram(REQUEST_LATENCY_BUCKETS)
        self.prefill_time = _histogram(REQUEST_LATENCY_BUCKETS)
        self.decode_time = _histogram(REQUEST_LATENCY_BUCKETS)
        self.num_preemptions = _histogram(PREEMPTION_BUCKETS)

    def observe(self, output: RequestOutput, n: int, max_tokens: Optional[int], finished_at: float) -> None:
        """One finished request (its completions counted by finish reason)."""
        for completion in output.outputs:
            self.success[completion.finish_reason or "abort"] += 1
            self.generation_tokens.observe(len(completion.token_ids))
        self.prompt_tokens.observe(len(output.prompt_token_ids or ()))
        self.params_n.observe(n)
        if max_tokens is not None:
            self.params_max_tokens.observe(max_tokens)
        m = output.metrics
        if m is None:
            return
        self.num_preemptions.observe(m.num_preemptions)
        scheduled = m.first_scheduled_time
        if scheduled is None:
            self.queue_time.observe(max(finished_at - m.arrival_time, 0.0))
            return
        end = m.finished_time or finished_at
        self.queue_time.observe(max(scheduled - m.arrival_time, 0.0))
        self.inference_time.observe(max(end - scheduled, 0.0))
        if m.first_token_time is not None:
            self.prefill_time.observe(max(m.first_token_time - scheduled, 0.0))
            self.decode_time.observe(max((m.last_token_time or end) - m.first_token_time, 0.0))

    def observe_failure(self) -> None:
        self.success["error"] += 1


def timing_fields(metrics: Optional[RequestMetrics], num_generation_tokens: int) -> dict[str, Optional[float]]:
    """vLLM's PerRequestTimingMetrics: milliseconds from scheduling to the first token, queueing, generation."""
    fields: dict[str, Optional[float]] = dict.fromkeys(
        ("time_to_first_token_ms", "generation_time_ms", "queue_time_ms", "mean_itl_ms", "tokens_per_second"))
    if metrics is None or metrics.first_scheduled_time is None:
        return fields
    scheduled = metrics.first_scheduled_time
    fields["queue_time_ms"] = (scheduled - metrics.arrival_time) * 1000
    if metrics.first_token_time is None or metrics.last_token_time is None:
        return fields
    generation = metrics.last_token_time - metrics.first_token_time
    fields["time_to_first_token_ms"] = (metrics.first_token_time - scheduled) * 1000
    fields["generation_time_ms"] = generation * 1000
    if num_generation_tokens > 1:
        fields["mean_itl_ms"] = generation * 1000 / (num_generation_tokens - 1)
    inference = metrics.last_token_time - scheduled
    if inference > 0:
        fields["tokens_per_second"] = num_generation_tokens / inference
    return fields
