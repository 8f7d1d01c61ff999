"""The attention layer: one model layer's multi-head attention over its slice of the paged KV cache.

It only reshapes heads and hands the work to the backend carried by the step's
metadata; which backend that is, and how the metadata is laid out, is stated in
nbllm.layers.attention_backend.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nbllm.layers.attention_backend import AttentionMetadata, KVCache


class Attention(nn.Module):
    """Multi-head attention (MHA/GQA/MQA) of one layer over its slice of the KV cache.

    sliding_window=W lets a query at position p see only keys at positions > p - W
    (transformers' convention); logits_soft_cap=c replaces each scaled score s by
    c * tanh(s / c) before the softmax (Gemma 2). None disables either.
    """

    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, scale: float,
                 sliding_window: Optional[int] = None, logits_soft_cap: Optional[float] = None):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be a positive number of tokens, got {sliding_window}")
        if logits_soft_cap is not None and not logits_soft_cap > 0:
            raise ValueError(f"logits_soft_cap must be positive, got {logits_soft_cap}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata) -> torch.Tensor:
        """q: [T, Hq*D] or [T, Hq, D]; k/v: [T, Hkv*D] or [T, Hkv, D] (strided views are fine) -> [T, Hq*D]."""
        t = q.shape[0]
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        out = meta.backend.forward(q, k, v, kv_cache, meta, self.scale, sliding_window=self.sliding_window,
                                   logits_soft_cap=self.logits_soft_cap)
        return out.reshape(t, self.num_heads * self.head_dim)
