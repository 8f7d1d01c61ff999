"""The kernels' sliding window and logit soft cap against TorchAttentionBackend's (paged_kv's references).

Windows of one token, shorter than most contexts, and longer than all of them; soft
caps small enough to bend most scores. Decodes are split into several runs over
16-token tiles, so a window starts inside a tile, on its edge or several tiles in.
Prefills mix a fresh prompt, new tokens over cached context and a long chunk whose
later rows see nothing of the first tiles their program walks.
"""

import pytest
import torch

from nbllm_kernels.decode_attention import paged_decode_attention
from nbllm_kernels.prefill_attention import paged_prefill_attention
from paged_kv import (
    GQA,
    TOLERANCE,
    make_paged_context,
    query_start_loc,
    random_queries,
    reference_decode,
    reference_prefill,
)

HEAD_DIM = 32
WINDOWS = [1, 7, 16, 1000]
SOFT_CAPS = [None, 1.5]


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("soft_cap", SOFT_CAPS, ids=["no-cap", "cap"])
@pytest.mark.parametrize("window", WINDOWS)
def test_decode_window_and_soft_cap(window, soft_cap, num_splits):
    seq_lens = [0, 1, 16, 37, 64, 130]
    num_heads, num_kv_heads = GQA
    ctx = make_paged_context(seq_lens, num_kv_heads, HEAD_DIM, 16, torch.float32)
    q = random_queries(len(seq_lens), num_heads, HEAD_DIM, torch.float32)
    args = (q, ctx.key_cache, ctx.value_cache, ctx.block_tables, ctx.seq_lens, HEAD_DIM**-0.5)

    out = paged_decode_attention(*args, num_splits=num_splits, block_n=16, sliding_window=window, soft_cap=soft_cap)

    expected = reference_decode(*args, sliding_window=window, logits_soft_cap=soft_cap)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("soft_cap", SOFT_CAPS, ids=["no-cap", "cap"])
@pytest.mark.parametrize("window", WINDOWS)
def test_prefill_window_and_soft_cap(window, soft_cap):
    batch = [(13, 13), (40, 9), (90, 70), (33, 1), (5, 0)]  # (seq_len, q_len)
    num_heads, num_kv_heads = GQA
    seq_lens, query_lens = [s for s, _ in batch], [n for _, n in batch]
    ctx = make_paged_context(seq_lens, num_kv_heads, HEAD_DIM, 8, torch.float32)
    q = random_queries(sum(query_lens), num_heads, HEAD_DIM, torch.float32)
    args = (q, ctx.key_cache, ctx.value_cache, ctx.block_tables, query_start_loc(query_lens), ctx.seq_lens,
            HEAD_DIM**-0.5)

    out = paged_prefill_attention(*args, sliding_window=window, soft_cap=soft_cap)

    expected = reference_prefill(*args, sliding_window=window, logits_soft_cap=soft_cap)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("kernel", ["decode", "prefill"])
def test_bad_window_or_cap_is_refused(kernel):
    ctx = make_paged_context([4], 2, HEAD_DIM, 8, torch.float32)
    if kernel == "decode":
        q = random_queries(1, 4, HEAD_DIM, torch.float32)
        call = lambda **kw: paged_decode_attention(q, ctx.key_cache, ctx.value_cache, ctx.block_tables,  # noqa: E731
                                                   ctx.seq_lens, 1.0, **kw)
    else:
        q = random_queries(4, 4, HEAD_DIM, torch.float32)
        call = lambda **kw: paged_prefill_attention(q, ctx.key_cache, ctx.value_cache, ctx.block_tables,  # noqa: E731
                                                    query_start_loc([4]), ctx.seq_lens, 1.0, **kw)
    with pytest.raises(ValueError, match="sliding_window"):
        call(sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap"):
        call(soft_cap=-1.0)
