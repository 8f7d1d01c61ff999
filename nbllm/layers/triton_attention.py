"""The Triton attention backend: nbllm_kernels' paged kernels behind the backend protocol.

Chosen automatically on CUDA (and by attention_backend="triton" anywhere; on a CPU
it runs through the Triton interpreter, which the tests use). It produces the same
results as TorchAttentionBackend, the reference. Per-step values that the kernels
would otherwise read back from the device (split count, longest query) are computed
on the host in prepare(). Importing this module does not import Triton; building the
backend does.
"""

from __future__ import annotations

from typing import Optional

import torch

import nbllm_kernels
from nbllm.layers.attention_backend import AttentionMetadata, KVCache


class TritonAttentionBackend:
    name = "triton"
    supports_cuda_graphs = True

    def __init__(self) -> None:
        # Resolving the kernels imports Triton: here, so that the PyTorch path never needs it.
        self._store_kv_cache = nbllm_kernels.store_kv_cache
        self._decode_attention = nbllm_kernels.paged_decode_attention
        self._prefill_attention = nbllm_kernels.paged_prefill_attention
        self._choose_num_splits = nbllm_kernels.choose_num_splits

    def prepare(self, meta: AttentionMetadata) -> None:
        nd = meta.num_decodes
        if nd:
            meta.extras["num_splits"] = self._choose_num_splits(max(meta.seq_lens_cpu[:nd]))
        if nd < meta.num_seqs:
            starts = [0]
            for n in meta.query_lens_cpu[nd:]:
                starts.append(starts[-1] + n)
            device = meta.slot_mapping.device
            meta.extras["prefill_query_start_loc"] = torch.tensor(starts, dtype=torch.int32, device=device)
            meta.extras["max_query_len"] = max(meta.query_lens_cpu[nd:])

    def prepare_static_decode(self, meta: AttentionMetadata, max_seq_len: int) -> None:
        """prepare() for a decode step captured in a CUDA graph: nothing may depend on this step's lengths."""
        meta.extras["num_splits"] = self._choose_num_splits(max_seq_len)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache,
                meta: AttentionMetadata, scale: float, sliding_window: Optional[int] = None,
                logits_soft_cap: Optional[float] = None) -> torch.Tensor:
        key_cache, value_cache = kv_cache
        self._store_kv_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        nd = meta.num_decodes
        parts = []
        if nd:
            parts.append(self._decode_attention(
                q[:nd], key_cache, value_cache, meta.block_tables[:nd], meta.seq_lens[:nd], scale,
                num_splits=meta.extras["num_splits"], sliding_window=sliding_window, soft_cap=logits_soft_cap))
        if nd < meta.num_seqs:
            parts.append(self._prefill_attention(
                q[nd:], key_cache, value_cache, meta.block_tables[nd:], meta.extras["prefill_query_start_loc"],
                meta.seq_lens[nd:], scale, max_query_len=meta.extras["max_query_len"],
                sliding_window=sliding_window, soft_cap=logits_soft_cap))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
