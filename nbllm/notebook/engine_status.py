"""What `%nbllm status` shows: the engine's model, memory, KV usage and running requests.

Built from the EngineClient contract (`model_name`, `get_stats()`) and the process's
own memory counters, so a remote engine reports the same way as a local one (where
its `capabilities.metrics` says it reports metrics at all).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

from nbllm.protocol import EngineClient
from nbllm.views.status_view import status_table_html


@dataclass
class EngineStatus:
    """A snapshot of the kernel's engine, shown as a small table."""

    engine_type: str
    model: str
    process_rss_bytes: Optional[int]
    cuda_allocated_bytes: Optional[int]
    kv_cache_usage_perc: float
    num_blocks_used: int
    num_blocks_cached: int
    num_blocks_total: int
    block_size: int
    num_requests_running: int
    num_requests_waiting: int
    running_request_blocks: dict[str, int]
    tokens_per_second: float
    prefix_cache_hit_rate: float

    def rows(self) -> list[tuple[str, str]]:
        requests = ", ".join(f"{rid} ({blocks} blocks)" for rid, blocks in self.running_request_blocks.items())
        memory = _format_bytes(self.process_rss_bytes)
        if self.cuda_allocated_bytes is not None:
            memory += f" (CUDA {_format_bytes(self.cuda_allocated_bytes)})"
        return [
            ("engine", self.engine_type),
            ("model", self.model),
            ("process memory", memory),
            ("KV cache", f"{self.kv_cache_usage_perc:.1%} used: {self.num_blocks_used}/{self.num_blocks_total} "
                         f"blocks of {self.block_size} tokens, {self.num_blocks_cached} holding cached prefixes"),
            ("requests", f"{self.num_requests_running} running, {self.num_requests_waiting} waiting"),
            ("running", requests or "none"),
            ("throughput", f"{self.tokens_per_second:.1f} tokens/s"),
            ("prefix cache hit rate", f"{self.prefix_cache_hit_rate:.1%}"),
        ]

    def __repr__(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def _repr_html_(self) -> str:
        return status_table_html(self.rows())


def engine_status(engine: EngineClient) -> EngineStatus:
    """Read the engine's stats and the process's memory into an EngineStatus."""
    m = engine.get_stats()
    return EngineStatus(
        engine_type=type(engine).__name__, model=engine.model_name,
        process_rss_bytes=_process_rss_bytes(), cuda_allocated_bytes=_cuda_allocated_bytes(),
        kv_cache_usage_perc=m.kv_cache_usage_perc, num_blocks_used=m.num_blocks_used,
        num_blocks_cached=m.num_blocks_cached, num_blocks_total=m.num_blocks_total, block_size=m.block_size,
        num_requests_running=m.num_requests_running, num_requests_waiting=m.num_requests_waiting,
        running_request_blocks=dict(m.running_request_blocks), tokens_per_second=m.tokens_per_second,
        prefix_cache_hit_rate=m.prefix_cache_hit_rate)


def _process_rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cuda_allocated_bytes() -> Optional[int]:
    torch = sys.modules.get("torch")  # never import torch just to report on a remote engine
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated())


def _format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
