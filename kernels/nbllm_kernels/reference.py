"""Plain PyTorch references for every kernel in nbllm_kernels.

Each function states the contract its Triton twin must meet, written for clarity
(one sequence at a time, the context gathered into a dense tensor) rather than speed.
They run anywhere torch runs and are what the kernels are tested against; the engine
may also use them as its CPU path. Attention accumulates in float32 and returns the
query's dtype.
"""

import torch


def store_kv_cache_ref(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64; slot = block_id * block_size + offset
) -> None:
    """Write token t's key and value into slot ``slot_mapping[t]``; a negative slot is skipped."""
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = key[keep].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[keep].to(value_cache.dtype)


def gather_context(
    cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_table: torch.Tensor,  # [max_blocks_per_seq] int32
    seq_len: int,
) -> torch.Tensor:  # [seq_len, Hkv, D]
    """The first ``seq_len`` cached tokens of one sequence, in logical order."""
    block_size = cache.shape[1]
    num_seq_blocks = -(-seq_len // block_size)
    blocks = block_table[:num_seq_blocks].long()
    return cache[blocks].flatten(0, 1)[:seq_len]


def _attend(
    q: torch.Tensor,  # [M, Hq, D]
    k: torch.Tensor,  # [L, Hkv, D]
    v: torch.Tensor,  # [L, Hkv, D]
    positions: torch.Tensor,  # [M] absolute position of each query
    scale: float,
) -> torch.Tensor:  # [M, Hq, D] float32
    """Causal attention of M queries over L keys, kv heads shared by groups of query heads."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # [L, Hq, D]
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("mhd,lhd->hml", q.float(), k) * scale  # [Hq, M, L]
    key_positions = torch.arange(k.shape[0], device=q.device)
    visible = key_positions[None, :] <= positions[:, None]  # [M, L]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hml,lhd->mhd", probs, v)


def paged_decode_attention_ref(
    q: torch.Tensor,  # [B, Hq, D], one query token per sequence
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32, cached tokens per sequence; 0 (padding) gives zeros
    scale: float,
) -> torch.Tensor:  # [B, Hq, D]
    """Each sequence's single query attends to all of its ``seq_lens[b]`` cached tokens."""
    out = torch.empty_like(q)
    for b, seq_len in enumerate(seq_lens.tolist()):
        k = gather_context(key_cache, block_tables[b], seq_len)
        v = gather_context(value_cache, block_tables[b], seq_len)
        position = torch.tensor([seq_len - 1], device=q.device)
        out[b] = _attend(q[b : b + 1], k, v, position, scale)[0].to(q.dtype)
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor,  # [T, Hq, D], the new tokens of all sequences, concatenated
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32, sequence b owns q[start[b]:start[b+1]]
    seq_lens: torch.Tensor,  # [B] int32, cached tokens per sequence, new ones included
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each sequence's new tokens over its whole cached context.

    Query i of a sequence with q_len new tokens and seq_len cached tokens sits at
    position seq_len - q_len + i and sees positions up to and including its own. This
    one rule covers a fresh prefill, a chunk of a long prompt and a prefix-cache hit.
    """
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[b], starts[b + 1]
        k = gather_context(key_cache, block_tables[b], seq_len)
        v = gather_context(value_cache, block_tables[b], seq_len)
        positions = torch.arange(seq_len - (end - start), seq_len, device=q.device)
        out[start:end] = _attend(q[start:end], k, v, positions, scale).to(q.dtype)
    return out


def fused_add_rms_norm_ref(
    x: torch.Tensor,  # [T, H]
    residual: torch.Tensor | None,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # normed [T, H], new_residual [T, H]
    """Add the residual, then RMS-normalize each row and scale it by ``weight``.

    Rounding follows Hugging Face's Llama: the sum is rounded to x's dtype, normalized
    in float32, rounded again, then scaled. With no residual, new_residual is x itself.
    """
    summed = x if residual is None else x + residual
    hidden = summed.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype), summed
