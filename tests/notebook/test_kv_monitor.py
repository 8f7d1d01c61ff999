"""KVCacheMonitor updates while the engine works and stops with close() or the engine; plot_kv_usage."""

from __future__ import annotations

import matplotlib
import pytest
from nb_fakes import wait_until

from nbllm import LLM, SamplingParams
from nbllm.notebook.kv_monitor import NO_BLOCK_STATES, NO_METRICS, KVCacheMonitor
from nbllm.protocol import EngineCapabilities
from nbllm.views.kv_plot import plot_kv_usage, usage_axis_top
from nbllm.views.kv_view import KVSample

matplotlib.use("Agg")


def test_monitor_follows_a_generation_and_stops_on_close(tiny_llm):
    monitor = KVCacheMonitor(tiny_llm, interval=0.01)
    sent = []
    monitor.observe(lambda change: sent.append(change["new"]), names="latest")
    grids = []
    monitor.observe(lambda change: grids.append(change["new"]), names="grid")
    try:
        stream = tiny_llm.stream(["Once upon a time"] * 4, SamplingParams(max_tokens=240, ignore_eos=True))
        seen_busy = wait_until(lambda: any(s.num_requests_running == 4 for s in monitor.history), timeout=10)
        for _ in stream:
            pass
        assert seen_busy, monitor.history
        assert wait_until(lambda: monitor.history[-1].num_requests_running == 0)
    finally:
        monitor.close()
    assert max(s.kv_cache_usage_perc for s in monitor.history) > 0
    assert len(sent) >= 3 and max(reading["running"] for reading in sent) == 4
    assert monitor.series["ts"][-1] <= sent[-1]["ts"], "the whole window is sent now and then"
    busy = [g for g in grids if len(g["requests"]) == 4]
    assert busy, "the grid names the four running requests"
    assert {code for code, _ in busy[-1]["runs"] if code >= 0} <= {0, 1, 2, 3}
    assert sum(count for _, count in busy[-1]["runs"]) == monitor.pool["blocks"]
    assert monitor.pool["blocks"] == tiny_llm.get_stats().num_blocks_total
    assert not monitor.running


def test_tokens_per_second_is_measured_over_a_real_interval(tiny_llm):
    """The first reading has no interval behind it: no rate; later ones span at least the polling interval."""
    monitor = KVCacheMonitor(tiny_llm, interval=0.05)
    try:
        stream = tiny_llm.stream(["Once upon a time"] * 2, SamplingParams(max_tokens=200, ignore_eos=True))
        for _ in stream:
            pass
        assert wait_until(lambda: monitor.history[-1].num_requests_running == 0)
    finally:
        monitor.close()
    history = monitor.history
    assert history[0].tokens_per_second is None
    rates = [s.tokens_per_second for s in history[1:]]
    assert all(r is not None and r >= 0 for r in rates)
    total = 2 * 200
    span = history[-1].timestamp - history[0].timestamp
    assert max(rates) < 20 * total / span, f"no absurd reading: {max(rates):.0f} tok/s for {total} tokens in {span:.2f}s"


def test_plot_draws_every_chart(tiny_llm):
    monitor = KVCacheMonitor(tiny_llm, interval=0.02)
    try:
        for _ in tiny_llm.stream(["Hello"], SamplingParams(max_tokens=60, ignore_eos=True)):
            pass
        assert wait_until(lambda: len(monitor.history) >= 3)
    finally:
        monitor.close()
    figure = monitor.plot()
    assert [ax.get_ylabel() for ax in figure.axes] == ["usage (%)", "requests", "tokens/s", "prefix hit rate (%)",
                                                       "preemptions"]
    top = figure.axes[0].get_ylim()[1]
    assert top < 10 * max(100 * s.kv_cache_usage_perc for s in monitor.history) + 2, "the usage axis is scaled"


class FrozenEngine:
    """An idle engine whose stats never change (the KV monitor reads nothing else)."""

    is_running = True

    def __init__(self, snapshot, **capabilities):
        self.snapshot = snapshot
        self.capabilities = EngineCapabilities(**capabilities)

    def get_stats(self):
        return self.snapshot


def test_idle_engine_is_not_redrawn(tiny_llm):
    monitor = KVCacheMonitor(FrozenEngine(tiny_llm.get_stats()), interval=10)
    try:
        assert wait_until(lambda: len(monitor.history) == 1)
        sent = []
        monitor.observe(lambda change: sent.append(change), names=["series", "latest", "grid", "pool"])
        assert monitor.update() is False and len(monitor.history) == 1 and sent == []
        assert NO_BLOCK_STATES not in monitor.note
    finally:
        monitor.close()


def test_an_engine_without_block_states_says_so(tiny_llm):
    monitor = KVCacheMonitor(FrozenEngine(tiny_llm.get_stats(), block_states=False), interval=10)
    try:
        assert NO_BLOCK_STATES in monitor.note
        assert wait_until(lambda: len(monitor.series["ts"]) == 1), "the numbers and the charts are still sent"
        assert monitor.grid == {}
    finally:
        monitor.close()


def test_monitor_stops_when_the_engine_shuts_down(tiny_llama_path):
    llm = LLM(str(tiny_llama_path), num_kv_blocks=16, block_size=8)
    monitor = KVCacheMonitor(llm, interval=0.01)
    assert wait_until(lambda: monitor.history)
    llm.shutdown()
    assert wait_until(lambda: not monitor.running, timeout=5)
    assert "monitor stopped" in monitor.note
    monitor.close()


class BrokenMetrics:
    is_running = True

    def __init__(self, **capabilities):
        self.capabilities = EngineCapabilities(**capabilities)

    def get_stats(self):
        raise ConnectionError("server went away")


def test_metric_errors_show_in_the_widget():
    monitor = KVCacheMonitor(BrokenMetrics(), interval=0.01)
    try:
        assert wait_until(lambda: "server went away" in monitor.note) and monitor.note_is_error
        assert monitor.running
    finally:
        monitor.close()


def test_an_engine_without_metrics_is_not_polled():
    monitor = KVCacheMonitor(BrokenMetrics(metrics=False), interval=0.01)
    assert NO_METRICS in monitor.note and not monitor.running
    monitor.close()


def test_interval_must_be_positive(tiny_llm):
    with pytest.raises(ValueError, match="interval"):
        KVCacheMonitor(tiny_llm, interval=0)


def sample(t: float, usage: float) -> KVSample:
    return KVSample(timestamp=t, kv_cache_usage_perc=usage, num_blocks_used=0, num_blocks_cached=0,
                    num_requests_running=0, num_requests_waiting=0, num_preemptions=0, tokens_per_second=0.0)


def test_plot_kv_usage_draws_usage_and_thresholds(tiny_llm):
    history = [sample(100.0, 0.1), sample(100.5, 0.5), sample(101.0, 0.95)]
    ax = plot_kv_usage(history)
    usage_line = ax.get_lines()[0]
    assert list(usage_line.get_xdata()) == [0.0, 0.5, 1.0] and list(usage_line.get_ydata()) == [10.0, 50.0, 95.0]
    assert sorted(line.get_ydata()[0] for line in ax.get_lines()[1:]) == [90, 98]
    snapshots = [tiny_llm.get_stats(), tiny_llm.get_stats()]
    assert len(plot_kv_usage(snapshots).get_lines()[0].get_xdata()) == 2  # MetricsSnapshot works as well
    with pytest.raises(ValueError, match="empty"):
        plot_kv_usage([])


def test_plot_kv_usage_scales_its_axis_to_low_usage():
    ax = plot_kv_usage([sample(0.0, 0.001), sample(1.0, 0.004)])  # a big pool: under half a percent used
    assert ax.get_ylim()[1] < 1.1 and len(ax.get_lines()) == 1, "no 90%/98% lines far above the axis"
    assert [usage_axis_top(p) for p in (0.0, 0.4, 3.0, 40.0, 95.0)] == [1.0, 1.0, 4.0, 50.0, 100.0]
