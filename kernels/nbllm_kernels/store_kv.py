"""Triton kernel that writes new tokens' keys and values into the paged KV cache.

One program per token: it reads the token's slot (block_id * block_size + offset),
skips it when the slot is negative (a padding token), and copies all kv heads of
the key and of the value into that slot (TorchAttentionBackend's index_copy_, plus
the skipping of padding tokens that CUDA graphs need).
"""

import torch
import triton
import triton.language as tl

from nbllm_kernels._checks import check_index, check_kv_cache, check_same_device


@triton.jit
def _store_kv_kernel(
    key_ptr,  # [T, Hkv, D]
    value_ptr,  # [T, Hkv, D]
    key_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    value_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    slot_mapping_ptr,  # [T] int64
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    num_kv_heads,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < head_dim)  # [BLOCK_H, BLOCK_D]

    key = tl.load(
        key_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :] * stride_kd,
        mask=mask,
    )
    value = tl.load(
        value_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :] * stride_vd,
        mask=mask,
    )
    cache_offsets = (
        block * stride_cb + offset * stride_cs + heads[:, None] * stride_ch + dims[None, :] * stride_cd
    )
    tl.store(key_cache_ptr + cache_offsets, key, mask=mask)
    tl.store(value_cache_ptr + cache_offsets, value, mask=mask)


def store_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64; slot = block_id * block_size + offset
) -> None:
    """Write token t's key and value into slot ``slot_mapping[t]``; a negative slot is skipped."""
    check_kv_cache(key_cache, value_cache)
    _, block_size, num_kv_heads, head_dim = key_cache.shape
    if key.dim() != 3 or key.shape[1:] != (num_kv_heads, head_dim):
        raise ValueError(
            f"key must be [tokens, {num_kv_heads}, {head_dim}] to fit the cache, "
            f"got {tuple(key.shape)}"
        )
    if value.shape != key.shape:
        raise ValueError(f"value {tuple(value.shape)} must match key {tuple(key.shape)}")
    if key.dtype != key_cache.dtype or value.dtype != key_cache.dtype:
        raise ValueError(
            f"key {key.dtype} and value {value.dtype} must have the cache's dtype {key_cache.dtype}"
        )
    check_index("slot_mapping", slot_mapping, (key.shape[0],), torch.int64)
    check_same_device(
        key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        *key.stride(), *value.stride(), *key_cache.stride(),
        num_kv_heads, head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
