"""paged_decode_attention (Triton) against the decodes of TorchAttentionBackend (paged_kv.reference_decode).

Contexts mix a single token, whole blocks and a partly filled last block; blocks are
shuffled and unused cache slots are NaN (see paged_kv). Without a GPU these run
through the Triton interpreter, so shapes stay small.
"""

import pytest
import torch

from nbllm_kernels.decode_attention import MAX_SPLITS, choose_num_splits, paged_decode_attention
from paged_kv import (
    DEVICE,
    GQA,
    MHA,
    MQA,
    TOLERANCE,
    make_paged_context,
    random_queries,
    reference_decode,
    requires_gpu,
)

SEQ_LENS = [1, 16, 37, 64]


def check_against_reference(
    seq_lens, layout, head_dim, block_size, dtype, num_splits=None, q=None, **tuning
):
    num_heads, num_kv_heads = layout
    ctx = make_paged_context(seq_lens, num_kv_heads, head_dim, block_size, dtype)
    if q is None:
        q = random_queries(len(seq_lens), num_heads, head_dim, dtype)
    args = (q, ctx.key_cache, ctx.value_cache, ctx.block_tables, ctx.seq_lens, head_dim**-0.5)

    out = paged_decode_attention(*args, num_splits=num_splits, **tuning)

    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out, reference_decode(*args), **TOLERANCE[dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("layout", [MHA, GQA, MQA], ids=["mha", "gqa", "mqa"])
def test_decode_matches_reference(layout, head_dim, dtype):
    check_against_reference(SEQ_LENS, layout, head_dim, 16, dtype, num_splits=2)


@pytest.mark.parametrize("block_size", [8, 32])
def test_decode_block_sizes(block_size):
    check_against_reference([1, 8, 29, 64], GQA, 64, block_size, torch.float32)


@pytest.mark.parametrize("block_size, block_n", [(8, 32), (16, 16), (32, 16)])
def test_decode_tiles_spanning_several_blocks_or_part_of_one(block_size, block_n):
    check_against_reference([1, 8, 29, 64, 100], GQA, 64, block_size, torch.float32, num_splits=2, block_n=block_n)


@pytest.mark.parametrize("num_splits", [1, 3, 7])
def test_decode_splits_agree_including_more_splits_than_blocks(num_splits):
    check_against_reference([2, 40, 100], MQA, 64, 16, torch.float32, num_splits=num_splits)


@pytest.mark.parametrize("head_dim", [96, 128])
def test_decode_larger_head_dims(head_dim):
    check_against_reference([3, 20], (2, 1), head_dim, 16, torch.float32)


def test_decode_reads_a_strided_query_view():
    num_heads, num_kv_heads = GQA
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn((3, num_heads + 2 * num_kv_heads, 64), generator=generator).to(DEVICE)
    check_against_reference([5, 17, 33], GQA, 64, 16, torch.float32, q=qkv[:, :num_heads])


def test_decode_gives_zeros_for_a_padding_sequence_of_length_zero():
    out = check_against_reference([0, 9], MQA, 64, 8, torch.float32, num_splits=2)
    assert out[0].eq(0).all()


def test_choose_num_splits_grows_with_context_and_is_capped():
    assert choose_num_splits(1) == 1
    assert choose_num_splits(4096) > choose_num_splits(512) > 1
    assert choose_num_splits(10**7) == MAX_SPLITS


def _decode_args(**change):
    args = dict(
        q=torch.zeros(2, 4, 64),
        key_cache=torch.zeros(3, 16, 2, 64),
        value_cache=torch.zeros(3, 16, 2, 64),
        block_tables=torch.zeros(2, 3, dtype=torch.int32),
        seq_lens=torch.ones(2, dtype=torch.int32),
        scale=0.125,
    )
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=torch.zeros(2, 4, 80)), "head_dim"),
        (dict(q=torch.zeros(2, 3, 64)), "multiple"),
        (dict(q=torch.zeros(2, 4, 64, dtype=torch.float16)), "dtype"),
        (dict(block_tables=torch.zeros(2, 3, dtype=torch.int64)), "block_tables must be torch.int32"),
        (dict(block_tables=torch.zeros(3, 3, dtype=torch.int32)), "block_tables must have shape"),
        (dict(seq_lens=torch.ones(3, dtype=torch.int32)), "seq_lens must have shape"),
        (dict(num_splits=0), "num_splits"),
        (dict(block_n=24), "block_n"),
    ],
)
def test_decode_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        paged_decode_attention(**_decode_args(**change))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128])
@pytest.mark.parametrize("layout", [MHA, (8, 2), (8, 1)], ids=["mha", "gqa", "mqa"])
def test_decode_bf16_on_gpu(layout, head_dim):
    check_against_reference([1, 16, 333, 2000, 77], layout, head_dim, 16, torch.bfloat16)
