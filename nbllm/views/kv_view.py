"""What the live KV monitor sends to the browser: numbers only, as small JSON-able dicts.

The browser (kv_monitor_js.py) draws them. `KVSample` is the part of a
MetricsSnapshot the monitor keeps over time, plus tokens/s measured by the monitor
itself over its own recent readings (None for the first reading, which has no
interval behind it). `sample_payload` is one reading (what the monitor sends
after each one), `series_payload` the samples of the last window as columns (sent
now and then, so a view opened later has the history); `grid_payload` turns a
snapshot's block states and each running request's blocks into one code per block,
run-length encoded: the owner's index in `requests`, or FREE, CACHED
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


SERIES_KEYS = ("ts", "usage", "running", "waiting", "tokens_per_s", "hit_rate", "preemptions")


def sample_payload(s: KVSample) -> dict:
    """One reading, as the browser appends it to its series (`ts` is the engine's clock, in seconds)."""
    return {"ts": round(s.timestamp, 3), "usage": round(100 * s.kv_cache_usage_perc, 4),
            "running": s.num_requests_running, "waiting": s.num_requests_waiting,
            "tokens_per_s": None if s.tokens_per_second is None else round(s.tokens_per_second, 1),
            "hit_rate": round(100 * s.prefix_cache_hit_rate, 2), "preemptions": s.num_preemptions}


def series_payload(samples: Sequence[KVSample], window_s: float) -> dict:
    """The samples of the last `window_s` seconds as columns (the keys of sample_payload)."""
    end = samples[-1].timestamp if samples else 0.0
    shown = [sample_payload(s) for s in samples if end - s.timestamp <= window_s]
    return {key: [row[key] for row in shown] for key in SERIES_KEYS}


def pool_payload(m: MetricsSnapshot) -> dict:
    return {"blocks": m.num_blocks_total, "block_size": m.block_size, "tokens": m.num_blocks_total * m.block_size}


def grid_payload(m: MetricsSnapshot) -> dict:
    """The block codes (first owner's index, FREE, CACHED or USED) run-length encoded as [code, count] pairs
    (a pool is mostly long runs: a few hundred bytes instead of one number per block), the owners' request
    ids, and the shared blocks as [block, [owner indices]]."""
    codes = [_CODES.get(state, FREE) for state in m.block_states]
    holders: dict[int, list[int]] = {}
    requests = sorted(m.request_blocks)
    for index, request_id in enumerate(requests):
        for block in m.request_blocks[request_id]:
            if 0 <= block < len(codes):
                holders.setdefault(block, []).append(index)
                codes[block] = holders[block][0]
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][0] == code:
            runs[-1][1] += 1
        else:
            runs.append([code, 1])
    return {"runs": runs, "requests": requests,
            "shared": [[block, owners] for block, owners in sorted(holders.items()) if len(owners) > 1]}
