"""Triton kernels for nbllm's paged KV cache.

Their plain PyTorch twin is nbllm's TorchAttentionBackend (nbllm/layers/torch_attention.py):
the same cache contract, the CPU path, and what tests/kernels holds these kernels to.

The cache contract shared with the engine:

- Per layer, ``key_cache`` and ``value_cache`` are each a contiguous tensor of shape
  ``[num_blocks, block_size, num_kv_heads, head_dim]``; block_size is a power of two.
- A token's slot is ``block_id * block_size + offset_in_block``; ``slot_mapping`` is
  int64 ``[num_tokens]`` and a negative slot means "do not store this token".
- Block tables are int32 ``[num_seqs, max_blocks_per_seq]``; entries past a sequence's
  last block are never dereferenced but must hold a valid block id (0 will do).
- ``seq_lens`` (int32 ``[num_seqs]``) counts each sequence's cached tokens, including
  those written for the current step. Query head h uses kv head h // (Hq // Hkv).

Triton is optional: the kernels load on first access (``nbllm_kernels.store_kv_cache``),
so ``import nbllm_kernels`` works where Triton is not installed. Without a GPU, set
``TRITON_INTERPRET=1`` in the environment before that first access, or the kernels
cannot launch on CPU tensors.
"""

import importlib

_KERNEL_MODULES = {
    "store_kv_cache": "nbllm_kernels.store_kv",
    "paged_decode_attention": "nbllm_kernels.decode_attention",
    "paged_prefill_attention": "nbllm_kernels.prefill_attention",
    "choose_num_splits": "nbllm_kernels.decode_attention",
}


def __getattr__(name: str):
    if name in _KERNEL_MODULES:
        return getattr(importlib.import_module(_KERNEL_MODULES[name]), name)
    raise AttributeError(f"module 'nbllm_kernels' has no attribute {name!r}")


__all__ = ["choose_num_splits", "paged_decode_attention", "paged_prefill_attention", "store_kv_cache"]
