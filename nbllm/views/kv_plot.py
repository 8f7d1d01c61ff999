"""Static matplotlib plots of recorded engine metrics.

`plot_kv_usage` draws KV-cache usage over time from a sequence of KVSample (a
KVCacheMonitor's `history`) or MetricsSnapshot, with the 90% and 98% lines the
live monitor shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

from nbllm.metrics import MetricsSnapshot
from nbllm.views.kv_view import KVSample

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_kv_usage(history: Sequence[Union[KVSample, MetricsSnapshot]], ax: Optional[Axes] = None,
                  title: Optional[str] = "KV cache usage") -> Axes:
    """Plot usage (%) against seconds since the first sample; returns the Axes."""
    samples = list(history)
    if not samples:
        raise ValueError("history is empty: record a run first (e.g. KVCacheMonitor(...).history)")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 3))
    start = samples[0].timestamp
    seconds = [s.timestamp - start for s in samples]
    usage = [100 * s.kv_cache_usage_perc for s in samples]
    # steps: a sample holds until the next one (the monitor records only changes)
    ax.step(seconds, usage, where="post", color="#2176d2", label="KV cache usage")
    ax.axhline(90, color="#f29900", linestyle="--", linewidth=1, label="90%")
    ax.axhline(98, color="#d32f2f", linestyle="--", linewidth=1, label="98%")
    ax.set_ylim(0, 105)
    ax.set_xlabel("seconds")
    ax.set_ylabel("usage (%)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return ax
