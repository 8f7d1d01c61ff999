"""paged_prefill_attention (Triton) against the prefills of TorchAttentionBackend (paged_kv.reference_prefill).

Each batch mixes a fresh prompt, a prefix-cache hit (a few new tokens over a long
cached context), a chunk of a long prompt, a single decode-like token and an empty
entry. Blocks are shuffled and unused cache slots are NaN (see paged_kv). Without a
GPU these run through the Triton interpreter, so shapes stay small.
"""

import pytest
import torch

from nbllm_kernels.prefill_attention import paged_prefill_attention
from paged_kv import (
    DEVICE,
    GQA,
    MHA,
    MQA,
    TOLERANCE,
    make_paged_context,
    query_start_loc,
    random_queries,
    reference_prefill,
    requires_gpu,
)

# (seq_len, q_len): fresh prompt, prefix hit, chunk, decode-like token, nothing new.
MIXED_BATCH = [(13, 13), (40, 9), (48, 16), (33, 1), (5, 0)]


def check_against_reference(batch, layout, head_dim, block_size, dtype, q=None, max_query_len=None):
    num_heads, num_kv_heads = layout
    seq_lens, query_lens = [s for s, _ in batch], [n for _, n in batch]
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, dtype)
    if q is None:
        q = random_queries(sum(query_lens), num_heads, head_dim, dtype)
    args = (
        q, ctx.key_cache, ctx.value_cache, ctx.block_tables, query_start_loc(query_lens),
        ctx.seq_lens, head_dim**-0.5,
    )

    out = paged_prefill_attention(*args, max_query_len=max_query_len)

    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out, reference_prefill(*args), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
def test_prefill_matches_reference(layout, head_dim, dtype):
    check_against_reference(MIXED_BATCH, layout, head_dim, 16, dtype)


@pytest.mark.parametrize("block_size", [8, 32])
def test_prefill_block_sizes(block_size):
    check_against_reference(MIXED_BATCH, GQA, 64, block_size, torch.float32)


def test_prefill_query_longer_than_one_tile():
    # 90 new tokens after a 20-token cached prefix: two query tiles of 64.
    check_against_reference([(110, 90), (7, 7)], (2, 1), 64, 16, torch.float32, max_query_len=90)


@pytest.mark.parametrize("head_dim", [96, 128])
def test_prefill_larger_head_dims(head_dim):
    check_against_reference([(20, 20), (30, 4)], (2, 1), head_dim, 16, torch.float32)


def test_prefill_reads_a_strided_query_view():
    num_heads, num_kv_heads = GQA
    num_tokens = sum(n for _, n in MIXED_BATCH)
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn((num_tokens, num_heads + 2 * num_kv_heads, 64), generator=generator)
    q = qkv.to(DEVICE)[:, :num_heads]
    check_against_reference(MIXED_BATCH, GQA, 64, 16, torch.float32, q=q)


def _prefill_args(**change):
    args = dict(
        q=torch.zeros(5, 4, 64),
        key_cache=torch.zeros(3, 16, 2, 64),
        value_cache=torch.zeros(3, 16, 2, 64),
        block_tables=torch.zeros(2, 3, dtype=torch.int32),
        query_start_loc=torch.tensor([0, 2, 5], dtype=torch.int32),
        seq_lens=torch.tensor([2, 3], dtype=torch.int32),
        scale=0.125,
    )
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=torch.zeros(5, 4, 32)), "head_dim"),
        (dict(q=torch.zeros(5, 64)), "q must be"),
        (dict(value_cache=torch.zeros(3, 16, 2, 64, dtype=torch.float16)), "value_cache"),
        (dict(query_start_loc=torch.tensor([0, 5], dtype=torch.int32)), "query_start_loc"),
        (dict(query_start_loc=torch.tensor([0, 2, 5])), "query_start_loc must be torch.int32"),
        (dict(block_tables=torch.zeros(1, 3, dtype=torch.int32)), "block_tables"),
        (dict(seq_lens=torch.tensor([2.0, 3.0])), "seq_lens must be torch.int32"),
        (dict(max_query_len=-1), "max_query_len"),
    ],
)
def test_prefill_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        paged_prefill_attention(**_prefill_args(**change))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128])
@pytest.mark.parametrize("layout", [MHA, (8, 2), (8, 1)], ids=["mha", "gqa", "mqa"])
def test_prefill_bf16_on_gpu(layout, head_dim):
    batch = [(700, 700), (1000, 37), (300, 128), (65, 1), (9, 0)]
    check_against_reference(batch, layout, head_dim, 16, torch.bfloat16)
