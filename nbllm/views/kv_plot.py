"""Static matplotlib plots of recorded engine metrics, for export.

`plot_kv_usage` draws KV-cache usage over time from a sequence of KVSample (a
KVCacheMonitor's `history`) or MetricsSnapshot. Its axis is scaled to the usage
seen, as the live monitor's is, and the 90% and 98% lines are drawn where the axis
reaches them. `plot_kv_history` draws what the live monitor shows, one panel each:
usage, running and waiting requests, tokens/s, prefix-cache hit rate and preemptions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence, Union

from nbllm.metrics import MetricsSnapshot
from nbllm.views.kv_view import KVSample

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Samples = Sequence[Union[KVSample, MetricsSnapshot]]
THRESHOLDS = ((90, "#f29900"), (98, "#d32f2f"))


def usage_axis_top(peak_percent: float) -> float:
    """The usage axis' top: a round number above 1.2 x the peak, at least 1%, at most 100%."""
    value = 1.2 * peak_percent
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    top = next(m * power for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= value - 1e-12)
    return min(100.0, top)


def _seconds(samples: Samples) -> list[float]:
    start = samples[0].timestamp
    return [s.timestamp - start for s in samples]


def _checked(history: Samples) -> list:
    samples = list(history)
    if not samples:
        raise ValueError("history is empty: record a run first (e.g. KVCacheMonitor(...).history)")
    return samples


def plot_kv_usage(history: Samples, ax: Optional[Axes] = None, title: Optional[str] = "KV cache usage") -> Axes:
    """Plot usage (%) against seconds since the first sample; returns the Axes."""
    samples = _checked(history)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 3))
    usage = [100 * s.kv_cache_usage_perc for s in samples]
    # steps: a sample holds until the next one (the monitor records only changes)
    ax.step(_seconds(samples), usage, where="post", color="#2176d2", label="KV cache usage")
    top = usage_axis_top(max(usage))
    for percent, colour in THRESHOLDS:
        if percent <= top:
            ax.axhline(percent, color=colour, linestyle="--", linewidth=1, label=f"{percent}%")
    ax.set_ylim(0, top * 1.02)
    ax.set_xlabel("seconds")
    ax.set_ylabel("usage (%)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_kv_history(history: Sequence[KVSample]) -> Figure:
    """The live monitor's charts as one figure: usage, requests, tokens/s, hit rate, preemptions."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    samples = _checked(history)
    seconds = _seconds(samples)
    fig, axes = plt.subplots(5, 1, figsize=(7, 9), sharex=True, layout="constrained")
    plot_kv_usage(samples, axes[0])
    axes[0].set_xlabel("")
    axes[1].step(seconds, [s.num_requests_running for s in samples], where="post", color="#2176d2", label="running")
    axes[1].step(seconds, [s.num_requests_waiting for s in samples], where="post", color="#d32f2f", linestyle="--",
                 label="waiting")
    axes[1].set_ylabel("requests")
    axes[1].legend(loc="upper left", fontsize="small")
    rates = [math.nan if s.tokens_per_second is None else s.tokens_per_second for s in samples]
    axes[2].step(seconds, rates, where="post", color="#6a3d9a")
    axes[2].set_ylabel("tokens/s")
    axes[3].step(seconds, [100 * s.prefix_cache_hit_rate for s in samples], where="post", color="#31a354")
    axes[3].set_ylabel("prefix hit rate (%)")
    axes[4].step(seconds, [s.num_preemptions for s in samples], where="post", color="#e6550d")
    axes[4].set_ylabel("preemptions")
    axes[4].set_xlabel("seconds")
    for ax in axes[1:]:
        ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    for ax in (axes[1], axes[4]):  # counts
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
