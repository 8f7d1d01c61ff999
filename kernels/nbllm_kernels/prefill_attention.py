"""Varlen causal attention of new query tokens over the paged KV cache.

The prefills of TorchAttentionBackend, in one launch: sequence b owns the query tokens
``query_start_loc[b]:query_start_loc[b+1]``, its ``seq_lens[b]`` cached tokens
include them, and query i sits at position seq_len - q_len + i. One kernel therefore
serves a fresh prompt, the next chunk of a long prompt and a prompt whose prefix
came from the prefix cache.

Grid (query tile, sequence, query head). A program holds BLOCK_M queries and walks
the context in BLOCK_N-token tiles up to its last query's position, finding each
token's cache slot through the block table (so BLOCK_N is free of block_size),
with an online softmax in float32 (base 2). Query head h reads kv head
h // (Hq // Hkv): MHA, GQA and MQA alike. A sliding window of W tokens hides keys
more than W - 1 positions behind a query (the walk starts at the tile's first
visible key); a soft cap c replaces each scaled score s by c * tanh(s / c).
"""

import torch
import triton
import triton.language as tl

from nbllm_kernels._checks import check_index, check_kv_cache, check_query, check_same_device
from nbllm_kernels._math import soft_cap

LOG2_E = 1.4426950408889634
BLOCK_N = 32
MAX_BLOCK_M = 64
MIN_BLOCK = 16  # tl.dot's smallest tile side


@triton.jit
def _prefill_kernel(
    q_ptr,  # [T, Hq, D]
    key_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    value_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    block_tables_ptr,  # [B, max_blocks_per_seq] int32
    query_start_loc_ptr,  # [B + 1] int32
    seq_lens_ptr,  # [B] int32
    out_ptr,  # [T, Hq, D]
    qk_scale,  # softmax scale * log2(e)
    sliding_window,  # tokens of context each query sees; 0: all of them
    cap,  # soft cap * log2(e), read when SOFT_CAP
    stride_qt, stride_qh, stride_qd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    stride_table_b, stride_table_i,
    stride_ot, stride_oh, stride_od,
    head_dim,
    group_size,  # Hq // Hkv
    SOFT_CAP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // group_size

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    num_cached_before = seq_len - q_len

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the sequence
    row_mask = rows < q_len
    positions = num_cached_before + rows  # [BLOCK_M]
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    q = tl.load(
        q_ptr + (q_start + rows)[:, None] * stride_qt + head * stride_qh + dims[None, :] * stride_qd,
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]

    # Causality: no query of this tile sees past the tile's last position.
    kv_end = tl.minimum(seq_len, num_cached_before + (tile + 1) * BLOCK_M)
    # Nor before the first position its first query's window reaches.
    kv_first = tl.where(sliding_window > 0, tl.maximum(num_cached_before + tile * BLOCK_M - sliding_window + 1, 0), 0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for kv_start in range(kv_first // BLOCK_N * BLOCK_N, kv_end, BLOCK_N):
        cols = kv_start + tl.arange(0, BLOCK_N)  # context positions
        col_mask = cols < kv_end
        blocks = tl.load(
            block_tables_ptr + seq * stride_table_b + (cols // BLOCK_SIZE) * stride_table_i,
            mask=col_mask,
            other=0,
        ).to(tl.int64)
        slots = blocks * stride_cb + (cols % BLOCK_SIZE) * stride_cs + kv_head * stride_ch  # [BLOCK_N]
        k = tl.load(
            key_cache_ptr + slots[None, :] + dims[:, None] * stride_cd,
            mask=col_mask[None, :] & dim_mask[:, None],
            other=0.0,
        )  # [BLOCK_D, BLOCK_N]
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        if SOFT_CAP:
            scores = soft_cap(scores, cap)
        visible = (cols[None, :] <= positions[:, None]) & col_mask[None, :]
        visible = visible & ((sliding_window == 0) | (cols[None, :] > positions[:, None] - sliding_window))
        scores = tl.where(visible, scores, float("-inf"))

        # A row may see nothing in this tile (its window starts later): keep its max at -inf
        # and let exp2 give zeros rather than -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(scores - m_safe[:, None])  # [BLOCK_M, BLOCK_N]
        v = tl.load(
            value_cache_ptr + slots[:, None] + dims[None, :] * stride_cd,
            mask=col_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows past q_len may see no key at all
    tl.store(
        out_ptr + (q_start + rows)[:, None] * stride_ot + head * stride_oh + dims[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & dim_mask[None, :],
    )


def paged_prefill_attention(
    q: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    max_query_len: int | None = None,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each sequence's new tokens over its whole cached context.

    ``sliding_window=W`` lets a query at position p see keys p - W + 1 .. p only;
    ``soft_cap=c`` passes each scaled score s through c * tanh(s / c) first.

    ``max_query_len=None`` reads ``query_start_loc`` back to the host to size the
    grid; pass the longest q_len (the scheduler knows it) to avoid that.
    """
    check_kv_cache(key_cache, value_cache)
    check_query(q, key_cache)
    num_tokens, num_heads, head_dim = q.shape
    check_index("seq_lens", seq_lens, (None,), torch.int32)
    batch = seq_lens.shape[0]
    check_index("block_tables", block_tables, (batch, None), torch.int32)
    check_index("query_start_loc", query_start_loc, (batch + 1,), torch.int32)
    check_same_device(
        q=q,
        key_cache=key_cache,
        value_cache=value_cache,
        block_tables=block_tables,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
    )
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max()) if batch else 0
    if max_query_len < 0:
        raise ValueError(f"max_query_len must not be negative, got {max_query_len}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be at least 1, got {sliding_window}")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap must be positive, got {soft_cap}")

    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0 or max_query_len == 0:
        return out
    block_size, num_kv_heads = key_cache.shape[1:3]
    block_m = min(MAX_BLOCK_M, max(MIN_BLOCK, triton.next_power_of_2(max_query_len)))
    grid = (triton.cdiv(max_query_len, block_m), batch, num_heads)
    _prefill_kernel[grid](
        q, key_cache, value_cache, block_tables, query_start_loc, seq_lens, out,
        scale * LOG2_E, sliding_window or 0, (soft_cap or 0.0) * LOG2_E,
        *q.stride(), *key_cache.stride(), *block_tables.stride(), *out.stride(),
        head_dim, num_heads // num_kv_heads,
        SOFT_CAP=soft_cap is not None,
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_D=max(MIN_BLOCK, triton.next_power_of_2(head_dim)),
        # fp32 through plain tf32 would lose ~3 digits; "ieee" spills registers badly.
        DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
    )
    return out
