"""Builds paged KV caches for the kernel tests, with the dense context kept beside them,
and runs the kernels' reference on them: nbllm's TorchAttentionBackend.

Blocks are handed out in a shuffled order so that no sequence's blocks are contiguous,
every block table keeps at least one unused trailing entry (holding block 0), and
every cache slot that no sequence owns is NaN: a kernel that reads past a sequence's
context, or outside its blocks, shows up as NaN in its output.
"""

from dataclasses import dataclass

import pytest
import torch

from nbllm.layers.attention_backend import AttentionMetadata
from nbllm.layers.torch_attention import TorchAttentionBackend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Head layouts as (num_heads, num_kv_heads).
MHA, GQA, MQA = (4, 4), (4, 2), (4, 1)
# Absolute and relative error allowed against the float32 reference.
TOLERANCE = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2),
}


@dataclass
class PagedContext:
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [B] int32
    keys: list[torch.Tensor]  # per sequence, [seq_len, Hkv, D]
    values: list[torch.Tensor]  # per sequence, [seq_len, Hkv, D]


def make_paged_context(
    seq_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> PagedContext:
    """Random keys and values for each sequence, scattered over shuffled cache blocks."""
    generator = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-seq_len // block_size) for seq_len in seq_lens]
    num_blocks = sum(blocks_needed) + 2  # spare blocks that stay NaN
    order = torch.randperm(num_blocks, generator=generator)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, float("nan"), dtype=dtype)
    value_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.zeros((len(seq_lens), max(blocks_needed) + 1), dtype=torch.int32)

    keys, values, next_block = [], [], 0
    for b, (seq_len, count) in enumerate(zip(seq_lens, blocks_needed)):
        blocks = order[next_block : next_block + count]
        next_block += count
        block_tables[b, :count] = blocks.int()
        key = torch.randn((seq_len, num_kv_heads, head_dim), generator=generator).to(dtype)
        value = torch.randn((seq_len, num_kv_heads, head_dim), generator=generator).to(dtype)
        positions = torch.arange(seq_len)
        key_cache[blocks[positions // block_size], positions % block_size] = key
        value_cache[blocks[positions // block_size], positions % block_size] = value
        keys.append(key.to(DEVICE))
        values.append(value.to(DEVICE))

    return PagedContext(
        key_cache=key_cache.to(DEVICE),
        value_cache=value_cache.to(DEVICE),
        block_tables=block_tables.to(DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        keys=keys,
        values=values,
    )


def random_queries(
    num_tokens: int, num_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 1
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((num_tokens, num_heads, head_dim), generator=generator).to(dtype).to(DEVICE)


def query_start_loc(query_lens: list[int]) -> torch.Tensor:  # [B + 1] int32
    starts = torch.tensor([0] + query_lens).cumsum(0)
    return starts.to(torch.int32).to(DEVICE)


def _torch_backend_attention(
    q: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    query_lens: list[int],
    seq_lens: list[int],
    scale: float,
    num_decodes: int,
    **options,  # sliding_window, logits_soft_cap
) -> torch.Tensor:  # [T, Hq, D] in q's dtype
    """One step of TorchAttentionBackend on float32 copies of the inputs.

    The backend stores the step's new keys and values before it attends; they are read
    back from their own slots, so storing them changes nothing. Its decode padding reads
    slot 0, which the engine keeps zeroed: its cache copy has NaN (unowned slots) set to
    zero, which changes no slot it attends to. The kernels' inputs are left untouched.
    """
    block_size, num_kv_heads, head_dim = key_cache.shape[1:]
    kv_cache = (key_cache.float().nan_to_num(), value_cache.float().nan_to_num())
    slots = []
    for b, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        positions = torch.arange(seq_len - q_len, seq_len, device=q.device)
        slots.append(block_tables[b, positions // block_size].long() * block_size + positions % block_size)
    slot_mapping = torch.cat(slots)
    backend = TorchAttentionBackend()
    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=query_start_loc(query_lens),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=q.device),
        block_tables=block_tables,
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
        num_decodes=num_decodes,
        block_size=block_size,
        backend=backend,
    )
    backend.prepare(meta)
    keys = kv_cache[0].view(-1, num_kv_heads, head_dim)[slot_mapping]
    values = kv_cache[1].view(-1, num_kv_heads, head_dim)[slot_mapping]
    return backend.forward(q.float(), keys, values, kv_cache, meta, scale, **options).to(q.dtype)


def reference_decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    **options,  # sliding_window, logits_soft_cap
) -> torch.Tensor:
    """What paged_decode_attention must return, for the same arguments: the backend's decodes.

    A sequence of length 0 is a padding entry (CUDA graphs use them) that the backend
    never sees; the kernel's contract gives it zeros.
    """
    lens = seq_lens.tolist()
    live = [b for b, seq_len in enumerate(lens) if seq_len > 0]
    out = torch.zeros_like(q)
    if live:
        rows = torch.tensor(live, dtype=torch.long, device=q.device)
        out[rows] = _torch_backend_attention(
            q[rows], key_cache, value_cache, block_tables[rows], [1] * len(live), [lens[b] for b in live],
            scale, num_decodes=len(live), **options,
        )
    return out


def reference_prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    starts: torch.Tensor,  # query_start_loc
    seq_lens: torch.Tensor,
    scale: float,
    **options,  # sliding_window, logits_soft_cap
) -> torch.Tensor:
    """What paged_prefill_attention must return, for the same arguments: the backend's prefills.

    A sequence with no new tokens owns no rows of q, so it is left out of the backend's batch.
    """
    bounds, lens = starts.tolist(), seq_lens.tolist()
    query_lens = [end - start for start, end in zip(bounds, bounds[1:])]
    live = [b for b, q_len in enumerate(query_lens) if q_len > 0]
    return _torch_backend_attention(
        q, key_cache, value_cache, block_tables[torch.tensor(live, dtype=torch.long, device=q.device)],
        [query_lens[b] for b in live], [lens[b] for b in live], scale, num_decodes=0, **options,
    )
