"""The kernels' reference (TorchAttentionBackend, through paged_kv) against dense attention.

The kernels are held to the PyTorch backend, and the backend is held here to what
attention means: the dense side never touches the cache; it takes each sequence's
keys and values as built, and torch's scaled_dot_product_attention in float64 with
an explicit causal mask.
"""

import pytest
import torch
import torch.nn.functional as F

from paged_kv import (
    GQA,
    MHA,
    MQA,
    make_paged_context,
    query_start_loc,
    random_queries,
    reference_decode,
    reference_prefill,
)


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


@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("block_size", [8, 16])
def test_backend_decodes_match_dense_attention(layout, block_size):
    num_heads, num_kv_heads = layout
    head_dim, seq_lens = 32, [1, 16, 37, 64]
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, torch.float32)
    q = random_queries(len(seq_lens), num_heads, head_dim, torch.float32)

    out = reference_decode(q, ctx.key_cache, ctx.value_cache, ctx.block_tables, ctx.seq_lens, head_dim**-0.5)

    for b in range(len(seq_lens)):
        expected = dense_attention(q[b : b + 1], ctx.keys[b], ctx.values[b], head_dim**-0.5)
        torch.testing.assert_close(out[b : b + 1].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("block_size", [8, 16])
def test_backend_prefills_match_dense_attention(layout, block_size):
    num_heads, num_kv_heads = layout
    head_dim = 32
    # Fresh prompts, a prefix-cache hit (9 new of 40), a chunk, one decode-like token.
    seq_lens, query_lens = [13, 40, 64, 33, 16], [13, 9, 32, 1, 16]
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, torch.float32)
    q = random_queries(sum(query_lens), num_heads, head_dim, torch.float32)
    starts = query_start_loc(query_lens)

    out = reference_prefill(
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, starts, ctx.seq_lens, head_dim**-0.5
    )

    for b in range(len(seq_lens)):
        rows = slice(starts[b], starts[b + 1])
        expected = dense_attention(q[rows], ctx.keys[b], ctx.values[b], head_dim**-0.5)
        torch.testing.assert_close(out[rows].double(), expected, atol=1e-5, rtol=1e-5)
