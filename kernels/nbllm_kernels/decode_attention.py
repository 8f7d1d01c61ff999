"""Flash-decoding over the paged KV cache: one query token per sequence.

Each sequence's single query attends to its ``seq_lens[b]`` cached tokens, as the
decodes of TorchAttentionBackend do. A sequence's context is cut into
``num_splits`` runs of whole BLOCK_N-token tiles so that long contexts spread over
many programs even when the batch is small:

1. ``_decode_split_kernel``, grid (sequence, kv head, split): the program holds the
   queries of every query head that shares this kv head (GQA/MQA groups, padded to
   a tl.dot tile) and walks its run of the context in BLOCK_N-token tiles, finding
   each token's cache slot through the block table (BLOCK_N is free of block_size).
   Each key and value is therefore read once per kv head, not once per query head.
   It writes a normalized partial output and its log-sum-exp per query head.
2. ``_decode_reduce_kernel``, grid (sequence, query head): merges the splits,
   weighting each partial output by exp(its lse - the overall lse).

Runs are cut per sequence (a sequence of n tiles gives each split ceil(n / num_splits)
tiles), so a short sequence beside a long one leaves some of its splits empty; the
reduction skips those. Query head h reads kv head h // (Hq // Hkv). Scores, softmax
and sums are float32 whatever the cache dtype (float32 caches use exact float32
products). A sequence of length 0 (a padding entry) gets a zero output.

A sliding window of W tokens limits a sequence's context to its last W tokens (the
runs are cut over those tiles only); a soft cap c replaces each scaled score s by
c * tanh(s / c) before the softmax.
"""

import torch
import triton
import triton.language as tl

from nbllm_kernels._checks import check_index, check_kv_cache, check_query, check_same_device
from nbllm_kernels._math import soft_cap

LOG2_E = 1.4426950408889634
# Automatic split choice: a split below this many tokens costs more to merge than it saves.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64
BLOCK_N = 64  # context tokens per tile
MIN_DOT = 16  # tl.dot's smallest tile side: query groups are padded to it


@triton.jit
def _decode_split_kernel(
    q_ptr,  # [B, Hq, D]
    key_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    value_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    block_tables_ptr,  # [B, max_blocks_per_seq] int32
    seq_lens_ptr,  # [B] int32
    partial_out_ptr,  # [B, Hq, num_splits, D] float32, contiguous
    partial_lse_ptr,  # [B, Hq, num_splits] float32 (base 2), contiguous
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    sliding_window,  # tokens of context each query sees; 0: all of them
    cap,  # soft cap * log2(e), read when SOFT_CAP
    stride_qb, stride_qh, stride_qd,
    stride_cb, stride_cs, stride_ch, stride_cd,
    stride_table_b, stride_table_i,
    num_heads,
    num_splits,
    head_dim,
    group_size,  # Hq // Hkv
    SOFT_CAP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = tl.where(sliding_window > 0, tl.maximum(seq_len - sliding_window, 0), 0)
    window_tile = kv_start // BLOCK_N  # tiles before it hold no visible token
    num_tiles = tl.cdiv(seq_len, BLOCK_N) - window_tile
    tiles_per_split = tl.cdiv(num_tiles, num_splits)
    if split * tiles_per_split >= num_tiles:
        return
    first_tile = window_tile + split * tiles_per_split
    end_tile = tl.minimum(first_tile + tiles_per_split, window_tile + num_tiles)
    num_seq_blocks = tl.cdiv(seq_len, BLOCK_SIZE)

    groups = tl.arange(0, BLOCK_G)
    heads = kv_head * group_size + groups  # [BLOCK_G]
    group_mask = groups < group_size
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :] * stride_qd,
        mask=group_mask[:, None] & dim_mask[None, :], other=0.0,
    )  # [BLOCK_G, BLOCK_D]

    # Every tile in the run holds at least one token, so m_i is finite after the first.
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    tokens = tl.arange(0, BLOCK_N)
    for tile in range(first_tile, end_tile):
        positions = tile * BLOCK_N + tokens  # [BLOCK_N]
        token_mask = (positions < seq_len) & (positions >= kv_start)
        logical_blocks = positions // BLOCK_SIZE
        blocks = tl.load(
            block_tables_ptr + seq * stride_table_b + logical_blocks * stride_table_i,
            mask=logical_blocks < num_seq_blocks, other=0,
        ).to(tl.int64)
        rows = blocks * stride_cb + (positions % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        offsets = rows[:, None] + dims[None, :] * stride_cd  # [BLOCK_N, BLOCK_D]
        tile_mask = token_mask[:, None] & dim_mask[None, :]
        k = tl.load(key_cache_ptr + offsets, mask=tile_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        if SOFT_CAP:
            scores = soft_cap(scores, cap)
        scores = tl.where(token_mask[None, :], scores, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])  # [BLOCK_G, BLOCK_N]
        v = tl.load(value_cache_ptr + offsets, mask=tile_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

    partial = (seq * num_heads + heads) * num_splits + split  # [BLOCK_G]
    tl.store(partial_out_ptr + partial[:, None] * head_dim + dims[None, :], acc / l_i[:, None],
             mask=group_mask[:, None] & dim_mask[None, :])
    tl.store(partial_lse_ptr + partial, m_i + tl.log2(l_i), mask=group_mask)


@triton.jit
def _decode_reduce_kernel(
    partial_out_ptr,  # [B, Hq, num_splits, D] float32, contiguous
    partial_lse_ptr,  # [B, Hq, num_splits] float32 (base 2), contiguous
    seq_lens_ptr,  # [B] int32
    out_ptr,  # [B, Hq, D]
    sliding_window,  # as in _decode_split_kernel: the runs are cut the same way
    stride_ob, stride_oh, stride_od,
    num_heads,
    num_splits,
    head_dim,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)

    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = tl.where(sliding_window > 0, tl.maximum(seq_len - sliding_window, 0), 0)
    num_tiles = tl.cdiv(seq_len, BLOCK_N) - kv_start // BLOCK_N
    tiles_per_split = tl.maximum(tl.cdiv(num_tiles, num_splits), 1)
    used_splits = tl.cdiv(num_tiles, tiles_per_split)

    splits = tl.arange(0, BLOCK_S)
    split_mask = splits < used_splits
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    first = (seq * num_heads + head) * num_splits

    lse = tl.load(partial_lse_ptr + first + splits, mask=split_mask, other=float("-inf"))
    # Clamped so that a sequence with no splits (length 0) never computes -inf - -inf.
    lse_max = tl.maximum(tl.max(lse, axis=0), -1e30)
    weights = tl.exp2(lse - lse_max)  # [BLOCK_S], 0 for unused splits
    partial = tl.load(
        partial_out_ptr + (first + splits[:, None]) * head_dim + dims[None, :],
        mask=split_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )  # [BLOCK_S, BLOCK_D]
    total = tl.sum(weights, axis=0)
    out = tl.sum(weights[:, None] * partial, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(
        out_ptr + seq * stride_ob + head * stride_oh + dims * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=dim_mask,
    )


def choose_num_splits(max_seq_len: int) -> int:
    """Splits for the longest context: one per MIN_TOKENS_PER_SPLIT tokens, at most MAX_SPLITS."""
    return max(1, min(MAX_SPLITS, triton.cdiv(max_seq_len, MIN_TOKENS_PER_SPLIT)))


def paged_decode_attention(
    q: torch.Tensor,  # [B, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    num_splits: int | None = None,
    block_n: int = BLOCK_N,
    num_warps: int = 4,
    num_stages: int = 2,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    """Each sequence's single query attends to all of its ``seq_lens[b]`` cached tokens.

    ``sliding_window=W`` narrows that to the last W of them; ``soft_cap=c`` passes each
    scaled score s through c * tanh(s / c) first.

    ``num_splits=None`` picks the split count from the longest context, which reads
    ``seq_lens`` back to the host; pass it explicitly to avoid that synchronization
    (e.g. when capturing CUDA graphs). ``block_n``, ``num_warps`` and ``num_stages``
    are tuning knobs (tile length in tokens, a power of two >= 16; Triton launch options).
    """
    check_kv_cache(key_cache, value_cache)
    check_query(q, key_cache)
    batch, num_heads, head_dim = q.shape
    check_index("block_tables", block_tables, (batch, None), torch.int32)
    check_index("seq_lens", seq_lens, (batch,), torch.int32)
    check_same_device(
        q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables, seq_lens=seq_lens
    )
    if num_splits is None:
        num_splits = choose_num_splits(int(seq_lens.max()) if batch else 0)
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    if block_n < MIN_DOT or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= {MIN_DOT}, got {block_n}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be at least 1, got {sliding_window}")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap must be positive, got {soft_cap}")

    out = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    block_size, num_kv_heads = key_cache.shape[1:3]
    partial_out = torch.empty(
        (batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
    )
    partial_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = max(MIN_DOT, triton.next_power_of_2(head_dim))
    group_size = num_heads // num_kv_heads

    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_tables, seq_lens, partial_out, partial_lse,
        scale * LOG2_E, sliding_window or 0, (soft_cap or 0.0) * LOG2_E,
        *q.stride(), *key_cache.stride(), *block_tables.stride(),
        num_heads, num_splits, head_dim, group_size,
        SOFT_CAP=soft_cap is not None,
        BLOCK_SIZE=block_size,
        BLOCK_G=max(MIN_DOT, triton.next_power_of_2(group_size)),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    _decode_reduce_kernel[(batch, num_heads)](
        partial_out, partial_lse, seq_lens, out, sliding_window or 0,
        *out.stride(),
        num_heads, num_splits, head_dim,
        BLOCK_N=block_n,
        BLOCK_S=triton.next_power_of_2(num_splits),
        BLOCK_D=block_d,
    )
    return out
