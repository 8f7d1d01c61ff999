"""The contract between the attention layers and their backends: per-step metadata and a protocol.

KV cache layout, per layer: key_cache and value_cache of shape
[num_blocks, block_size, num_kv_heads, head_dim]; a token's slot is
block_id * block_size + offset. Block 0 is a zeroed padding block.

A step's tokens are packed: the decoding sequences (one new token each) come first,
then the prefilling ones (a chunk of new tokens, possibly after cached context).
The metadata is built once per step by the model runner and passed down through
forward() arguments; nothing is global. The backend is chosen when the engine loads
(nbllm.layers.attention_selector) and travels inside the metadata. This module
imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each query sees."""

    slot_mapping: torch.Tensor  # [T] int64: cache slot for each new token
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32: context length including this step's tokens
    block_tables: torch.Tensor  # [B, max_blocks] int32
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    num_decodes: int  # the first num_decodes sequences have exactly one query token
    block_size: int
    backend: AttentionBackend
    extras: dict = field(default_factory=dict)  # backend-specific tensors built in prepare()

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)


class AttentionBackend(Protocol):
    """Stores a layer's new keys and values in its cache and attends over the cached context."""

    name: str
    supports_cuda_graphs: bool  # True: prepare_static_decode exists and decode steps may be captured

    def prepare(self, meta: AttentionMetadata) -> None:
        """Build whatever per-step tensors forward() needs, once for all layers."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata, scale: float, sliding_window: Optional[int] = None,
                logits_soft_cap: Optional[float] = None) -> torch.Tensor:
        """Store k/v ([T, Hkv, D]) in the cache, then attend q ([T, Hq, D]) -> [T, Hq, D].

        sliding_window W: a query at position p sees keys at positions p - W + 1 .. p only.
        logits_soft_cap c: each scaled score s becomes c * tanh(s / c) before the softmax.
        """
