"""Pictures of the KV cache for the live monitor: a usage chart (SVG) and a block grid (PNG).

Pure functions of metrics: they read `MetricsSnapshot` fields and `KVSample`s and
return HTML, so the monitor's thread only sets one string trait. The block grid
is one pixel per block, written by matplotlib and scaled up by the browser: a few
hundred bytes per update even for thousands of blocks.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from nbllm.metrics import MetricsSnapshot
from nbllm.views.html_text import esc

BLOCK_COLOURS = {"free": (226, 226, 226), "used": (33, 118, 210), "cached": (67, 160, 71)}
_BACKGROUND = (255, 255, 255)
_THRESHOLDS = ((90, "#f29900"), (98, "#d32f2f"))


@dataclass(frozen=True)
class KVSample:
    """The few numbers of a MetricsSnapshot that the monitor keeps over time."""

    timestamp: float
    kv_cache_usage_perc: float
    num_blocks_used: int
    num_blocks_cached: int
    num_requests_running: int
    num_requests_waiting: int
    num_preemptions: int
    tokens_per_second: float

    @classmethod
    def from_snapshot(cls, m: MetricsSnapshot) -> "KVSample":
        return cls(m.timestamp, m.kv_cache_usage_perc, m.num_blocks_used, m.num_blocks_cached,
                   m.num_requests_running, m.num_requests_waiting, m.num_preemptions, m.tokens_per_second)

    def same_state(self, other: "KVSample") -> bool:
        """True when nothing but the time differs."""
        return replace(self, timestamp=other.timestamp) == other


def block_grid_png(states: Sequence[str], columns: int) -> bytes:
    """A PNG with one pixel per block, row after row of `columns`, coloured free / used / cached."""
    from matplotlib.image import imsave

    rows = math.ceil(max(len(states), 1) / columns)
    pixels = np.full((rows * columns, 3), _BACKGROUND, dtype=np.uint8)
    if states:
        pixels[:len(states)] = [BLOCK_COLOURS.get(s, _BACKGROUND) for s in states]
    buffer = io.BytesIO()
    imsave(buffer, pixels.reshape(rows, columns, 3), format="png", metadata={"Software": None})
    return buffer.getvalue()


def block_grid_html(states: Sequence[str], max_columns: int = 64, max_height_px: int = 200) -> str:
    """An <img> with one square per KV block, coloured free / used / cached."""
    columns = min(max_columns, max(len(states), 1))
    rows = math.ceil(max(len(states), 1) / columns)
    cell = max(2, min(10, 512 // columns, max_height_px // rows))
    data = base64.b64encode(block_grid_png(states, columns)).decode()
    return (f'<img class="nbllm-kv-grid" alt="KV block grid" src="data:image/png;base64,{data}" '
            f'width="{columns * cell}" height="{rows * cell}" '
            f'style="image-rendering: pixelated; border: 1px solid #ccc; max-width: none">')


def usage_chart_svg(samples: Sequence[KVSample], width: int = 512, height: int = 120, window_s: float = 60.0) -> str:
    """KV usage (%) over the last `window_s` seconds, with the 90% and 98% lines."""
    left, top, plot_w, plot_h = 34, 6, width - 40, height - 24

    def y(percent: float) -> float:
        return top + plot_h * (1 - percent / 100)

    parts = [f'<svg class="nbllm-kv-chart" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
             f'style="font: 10px sans-serif">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>']
    for percent in (0, 50, 100):
        parts.append(f'<text x="{left - 4}" y="{y(percent) + 3:.1f}" text-anchor="end" fill="#666">{percent}%</text>')
    for percent, colour in _THRESHOLDS:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(percent):.1f}" y2="{y(percent):.1f}" '
                     f'stroke="{colour}" stroke-dasharray="4 3"/>')
    if samples:
        end = samples[-1].timestamp
        shown = [s for s in samples if end - s.timestamp <= window_s]
        xs = [left + plot_w * (1 - (end - s.timestamp) / window_s) for s in shown]
        ys = [y(100 * s.kv_cache_usage_perc) for s in shown]
        steps = [(xs[0], ys[0])]  # a sample holds until the next one: the monitor records only changes
        for i in range(1, len(xs)):
            steps += [(xs[i], ys[i - 1]), (xs[i], ys[i])]
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in steps)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#2176d2" stroke-width="1.5"/>')
    parts.append(f'<text x="{left}" y="{height - 4}" fill="#666">-{window_s:.0f}s</text>'
                 f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end" fill="#666">now</text></svg>')
    return "".join(parts)


def monitor_html(m: MetricsSnapshot, samples: Sequence[KVSample]) -> str:
    """The whole monitor: numbers, usage chart and block grid for one snapshot."""
    legend = " ".join(f'<span style="display:inline-block;width:9px;height:9px;background:rgb{colour}"></span> '
                      f"{esc(name)}" for name, colour in BLOCK_COLOURS.items())
    stats = esc(f"{m.num_blocks_used}/{m.num_blocks_total} blocks used ({m.block_size} tokens each) · "
                f"{m.num_blocks_cached} cached · {m.num_requests_running} running · "
                f"{m.num_requests_waiting} waiting · prefix hit rate {m.prefix_cache_hit_rate:.1%} · "
                f"{m.num_preemptions} preemptions · {m.tokens_per_second:.1f} tokens/s")
    return (f'<div class="nbllm-kv-monitor-view" style="font-size:12px">'
            f'<div class="nbllm-kv-stats"><b>KV cache {m.kv_cache_usage_perc:.1%}</b> · {stats}</div>'
            f'{usage_chart_svg(samples)}<div style="margin:2px 0">{legend}</div>'
            f'{block_grid_html(m.block_states)}</div>')


def note_html(text: str, error: bool = False) -> str:
    """A one-line note shown instead of (or under) the pictures."""
    colour = "#b00020" if error else "#666"
    return f'<div class="nbllm-kv-note" style="font-size:12px;color:{colour}">{esc(text)}</div>'
