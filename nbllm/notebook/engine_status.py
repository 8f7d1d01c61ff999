"""What `%nbllm status` shows: the engine's model, memory, KV usage and running requests.

Built from the EngineClient contract (`model_name`, `capabilities`, `get_stats()`) and
the process's own memory counters, so a remote engine reports the same way as a local
one. What the engine cannot do is listed as unavailable; an engine without metrics
(a server with no vLLM /metrics) shows only the counts its client kept from `usage`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from typing import Optional

from nbllm.protocol import EngineClient
from nbllm.views.status_view import status_table_html

# What a missing capability means to the user.
MISSING = {"metrics": "server metrics", "block_states": "KV block states", "tokenizer": "tokenizer",
           "beam_search": "beam search", "beam_tree": "beam trees", "logprobs": "logprobs",
           "token_ids": "token ids (token counts come from usage)"}


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
    unavailable: list[str] = field(default_factory=list)  # what the engine cannot do, in words
    server_metrics: bool = True  # False: the counts below are the client's own, from `usage`
    requests_finished_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0

    def rows(self) -> list[tuple[str, str]]:
        missing = [("unavailable", ", ".join(self.unavailable))] if self.unavailable else []
        if not self.server_metrics:
            return [("engine", self.engine_type), ("model", self.model),
                    ("requests", f"{self.num_requests_running} running, {self.requests_finished_total} done"),
                    ("tokens", f"{self.prompt_tokens_total} prompt, {self.generation_tokens_total} generated"),
                    ("throughput", f"{self.tokens_per_second:.1f} tokens/s"), *missing]
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
            *missing,
        ]

    def __repr__(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.rows())

    def _repr_html_(self) -> str:
        return status_table_html(self.rows())


def missing(engine: EngineClient) -> list[str]:
    """What the engine cannot do, in words (from its capabilities)."""
    caps = engine.capabilities
    return [MISSING[f.name] for f in fields(caps) if not getattr(caps, f.name)]


def engine_status(engine: EngineClient) -> EngineStatus:
    """Read the engine's stats and the process's memory into an EngineStatus."""
    caps = engine.capabilities
    m = engine.get_stats()
    return EngineStatus(
        engine_type=type(engine).__name__, model=engine.model_name,
        process_rss_bytes=_process_rss_bytes(), cuda_allocated_bytes=_cuda_allocated_bytes(),
        kv_cache_usage_perc=m.kv_cache_usage_perc, num_blocks_used=m.num_blocks_used,
        num_blocks_cached=m.num_blocks_cached, num_blocks_total=m.num_blocks_total, block_size=m.block_size,
        num_requests_running=m.num_requests_running, num_requests_waiting=m.num_requests_waiting,
        running_request_blocks=dict(m.running_request_blocks), tokens_per_second=m.tokens_per_second,
        prefix_cache_hit_rate=m.prefix_cache_hit_rate,
        unavailable=missing(engine),
        server_metrics=caps.metrics, requests_finished_total=m.requests_finished_total,
        prompt_tokens_total=m.prompt_tokens_total, generation_tokens_total=m.generation_tokens_total)


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
