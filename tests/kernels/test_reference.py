"""The PyTorch references against dense attention: they are what the kernels are held to.

The dense side never touches the cache: it takes each sequence's keys and values as
built, and torch's scaled_dot_product_attention in float64 with an explicit mask.
"""

import pytest
import torch
import torch.nn.functional as F

from nbllm_kernels.reference import (
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    store_kv_cache_ref,
)
from paged_kv import DEVICE, GQA, MHA, MQA, make_paged_context, query_start_loc, random_queries


def dense_attention(
    q: torch.Tensor,  # [M, Hq, D]
    keys: torch.Tensor,  # [L, Hkv, D]
    values: torch.Tensor,  # [L, Hkv, D]
    scale: float,
) -> torch.Tensor:  # [M, Hq, D] float64
    """The M queries are the last M positions of the L-token context, causally masked."""
    num_queries, context_len = q.shape[0], keys.shape[0]
    positions = torch.arange(context_len - num_queries, context_len, device=q.device)
    mask = torch.arange(context_len, device=q.device)[None, :] <= positions[:, None]  # [M, L]
    out = F.scaled_dot_product_attention(
        q.double().transpose(0, 1),
        keys.double().transpose(0, 1),
        values.double().transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(0, 1)


def test_store_ref_writes_each_token_to_its_slot_and_skips_negative_slots():
    num_blocks, block_size, num_kv_heads, head_dim = 6, 8, 2, 16
    key_cache = torch.zeros((num_blocks, block_size, num_kv_heads, head_dim))
    value_cache = torch.zeros_like(key_cache)
    key = torch.randn(5, num_kv_heads, head_dim)
    value = torch.randn(5, num_kv_heads, head_dim)
    slots = torch.tensor([17, -1, 0, 47, 9])

    store_kv_cache_ref(key, value, key_cache, value_cache, slots)

    flat_keys = key_cache.view(-1, num_kv_heads, head_dim)
    flat_values = value_cache.view(-1, num_kv_heads, head_dim)
    for token, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_keys[slot], key[token])
            assert torch.equal(flat_values[slot], value[token])
    written = (slots[slots >= 0]).tolist()
    untouched = [s for s in range(num_blocks * block_size) if s not in written]
    assert flat_keys[untouched].eq(0).all() and flat_values[untouched].eq(0).all()


@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("block_size", [8, 16])
def test_decode_ref_matches_dense_attention(layout, block_size):
    num_heads, num_kv_heads = layout
    head_dim, seq_lens = 32, [1, 16, 37, 64]
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, torch.float32)
    q = random_queries(len(seq_lens), num_heads, head_dim, torch.float32)

    out = paged_decode_attention_ref(
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, ctx.seq_lens, head_dim**-0.5
    )

    for b in range(len(seq_lens)):
        expected = dense_attention(q[b : b + 1], ctx.keys[b], ctx.values[b], head_dim**-0.5)
        torch.testing.assert_close(out[b : b + 1].double(), expected, atol=1e-5, rtol=1e-5)


def test_decode_ref_gives_zeros_for_an_empty_sequence():
    ctx = make_paged_context([0, 5], 1, 16, 8, torch.float32)
    q = random_queries(2, 2, 16, torch.float32)
    out = paged_decode_attention_ref(
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, ctx.seq_lens, 0.25
    )
    assert out[0].eq(0).all() and out[1].isfinite().all()


@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("block_size", [8, 16])
def test_prefill_ref_matches_dense_attention(layout, block_size):
    num_heads, num_kv_heads = layout
    head_dim = 32
    # Fresh prompts, a prefix-cache hit (9 new of 40), a chunk, one decode-like token.
    seq_lens, query_lens = [13, 40, 64, 33, 16], [13, 9, 32, 1, 16]
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, torch.float32)
    q = random_queries(sum(query_lens), num_heads, head_dim, torch.float32)
    starts = query_start_loc(query_lens)

    out = paged_prefill_attention_ref(
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, starts, ctx.seq_lens, head_dim**-0.5
    )

    for b in range(len(seq_lens)):
        rows = slice(starts[b], starts[b + 1])
        expected = dense_attention(q[rows], ctx.keys[b], ctx.values[b], head_dim**-0.5)
        torch.testing.assert_close(out[rows].double(), expected, atol=1e-5, rtol=1e-5)


def test_prefill_ref_returns_the_query_dtype():
    ctx = make_paged_context([10], 2, 16, 8, torch.float16)
    q = random_queries(10, 2, 16, torch.float16)
    out = paged_prefill_attention_ref(
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, query_start_loc([10]), ctx.seq_lens, 0.25
    )
    assert out.dtype == torch.float16 and out.device.type == DEVICE
