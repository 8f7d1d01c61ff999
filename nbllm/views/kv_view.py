"""What the live KV monitor sends to the browser: numbers only, as small JSON-able dicts.

The browser (kv_monitor_js.py) draws them. `KVSample` is the part of a
MetricsSnapshot the monitor keeps over time, plus tokens/s measured by the monitor
itself between two of its own readings (None for the first reading, which has no
interval behind it). `series_payload` turns the samples of the last window into
columns; `grid_payload` turns a snapshot's block states and each running request's
blocks into one code per block: the owner's index in `requests`, or FREE, CACHED
(free, but holding a prefix the cache can reuse) or USED (in use, by no request the
snapshot names); a block held by more than one request is listed in `shared` with
the indices of all its holders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from nbllm.metrics import MetricsSnapshot

FREE, CACHED, USED = -1, -2, -3
_CODES = {"free": FREE, "cached": CACHED, "used": USED}


@dataclass(frozen=True)
class KVSample:
    """The numbers of a MetricsSnapshot that the monitor keeps over time."""

    timestamp: float
    kv_cache_usage_perc: float
    num_blocks_used: int
    num_blocks_cached: int
    num_requests_running: int
    num_requests_waiting: int
    num_preemptions: int
    tokens_per_second: Optional[float]  # measured between two readings; None for the first
    prefix_cache_hit_rate: float = 0.0

    @classmethod
    def from_snapshot(cls, m: MetricsSnapshot, tokens_per_second: Optional[float] = None) -> "KVSample":
        return cls(m.timestamp, m.kv_cache_usage_perc, m.num_blocks_used, m.num_blocks_cached,
                   m.num_requests_running, m.num_requests_waiting, m.num_preemptions, tokens_per_second,
                   m.prefix_cache_hit_rate)

    def same_state(self, other: "KVSample") -> bool:
        """True when nothing but the time differs."""
        return replace(self, timestamp=other.timestamp) == other


def series_payload(samples: Sequence[KVSample], window_s: float) -> dict:
    """The samples of the last `window_s` seconds as columns; `t` is seconds before the newest (<= 0)."""
    if not samples:
        return {"t": [], "usage": [], "running": [], "waiting": [], "tokens_per_s": [], "hit_rate": [],
                "preemptions": []}
    end = samples[-1].timestamp
    shown = [s for s in samples if end - s.timestamp <= window_s]
    return {"t": [round(s.timestamp - end, 3) for s in shown],
            "usage": [round(100 * s.kv_cache_usage_perc, 4) for s in shown],
            "running": [s.num_requests_running for s in shown],
            "waiting": [s.num_requests_waiting for s in shown],
            "tokens_per_s": [None if s.tokens_per_second is None else round(s.tokens_per_second, 1) for s in shown],
            "hit_rate": [round(100 * s.prefix_cache_hit_rate, 2) for s in shown],
            "preemptions": [s.num_preemptions for s in shown]}


def pool_payload(m: MetricsSnapshot) -> dict:
    return {"blocks": m.num_blocks_total, "block_size": m.block_size, "tokens": m.num_blocks_total * m.block_size}


def grid_payload(m: MetricsSnapshot) -> dict:
    """One code per block (first owner's index, FREE, CACHED or USED), the owners' request ids, and the
    shared blocks as [block, [owner indices]]."""
    codes = [_CODES.get(state, FREE) for state in m.block_states]
    holders: dict[int, list[int]] = {}
    requests = sorted(m.request_blocks)
    for index, request_id in enumerate(requests):
        for block in m.request_blocks[request_id]:
            if 0 <= block < len(codes):
                holders.setdefault(block, []).append(index)
                codes[block] = holders[block][0]
    return {"blocks": codes, "requests": requests,
            "shared": [[block, owners] for block, owners in sorted(holders.items()) if len(owners) > 1]}
