"""nbllm::paged_decode_attention (paged_attention.cpp): CPU decode attention read in place from the paged cache.

TorchAttentionBackend's decode path gathers every sequence's context into a padded copy and runs
SDPA on it: its cost grows with the longest context of the step times the number of sequences, and
the copy is written and read again. On the bench's mixed workload (64 sequences, contexts up to 768
tokens) that was most of a decode step. This kernel reads each key and value row once from its
block, for all the query heads that share its kv head (work items are whole sequences, or
(sequence, kv head) when there are few): one layer of 64 sequences with 446 tokens of context on
average, 2.4 against 33 ms (2-core AMD EPYC).

It takes float32 caches with head sizes a multiple of 16 and no logit soft cap; TorchAttentionBackend
uses it where `paged_attention_available()` (AVX-512, the build and a self-check against
`reference_decode_attention` passed) and keeps its own path otherwise. ``NBLLM_PAGED_ATTENTION=0``
turns it off. Built like nbllm's other kernels (nbllm.native), once per machine, when the first engine
with such caches loads (`load_for`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from nbllm import native

ENV_SWITCH = "NBLLM_PAGED_ATTENTION"  # "0" keeps decodes on the gathered SDPA path
_SOURCE = Path(__file__).with_name("paged_attention.cpp")


def _register_fake() -> None:
    @torch.library.register_fake("nbllm::paged_decode_attention")
    def _(q, key_cache, value_cache, block_tables, seq_lens, scale, window):
        return torch.empty_like(q)


def reference_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                               window: int) -> torch.Tensor:
    """The kernel's contract in plain torch, one sequence at a time (for the self-check and tests)."""
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = q.shape[1] // num_kv_heads
    out = torch.empty_like(q)
    for b, length in enumerate(seq_lens.tolist()):
        positions = torch.arange(max(0, length - window) if window > 0 else 0, length)
        blocks = block_tables[b, positions // block_size].long()
        keys = key_cache[blocks, positions % block_size].repeat_interleave(group, dim=1)  # [n, Hq, D]
        values = value_cache[blocks, positions % block_size].repeat_interleave(group, dim=1)
        probs = torch.softmax(scale * torch.einsum("hd,nhd->hn", q[b].double(), keys.double()), dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, values.double()).to(q.dtype)
    return out


def _self_check() -> Optional[str]:
    """None when the kernel matches reference_decode_attention on a random paged problem, else what differed."""
    generator = torch.Generator().manual_seed(0)
    sequences = 2 * torch.get_num_threads() + 1  # enough for whole-sequence work items, and one alone below
    key_cache, value_cache = (torch.randn(3 * sequences, 4, 2, 32, generator=generator) for _ in range(2))
    q = torch.randn(sequences, 6, 32, generator=generator)
    block_tables = torch.randperm(3 * sequences, generator=generator).view(sequences, 3).to(torch.int32)
    seq_lens = torch.randint(1, 13, (sequences,), generator=generator)
    for window in (0, 5):
        if window:  # one sequence: an item per kv head
            q, block_tables, seq_lens = q[:1].contiguous(), block_tables[:1].contiguous(), seq_lens[:1]
        expected = reference_decode_attention(q, key_cache, value_cache, block_tables, seq_lens, 0.3, window)
        got = torch.ops.nbllm.paged_decode_attention(q, key_cache, value_cache, block_tables, seq_lens, 0.3, window)
        error = (got - expected).abs().max().item()
        if error > 1e-5:
            return f"window {window}: largest difference {error:.3g}"
    return None


@lru_cache(maxsize=1)
def paged_attention_available() -> bool:
    """Whether nbllm::paged_decode_attention is loaded and checked in this process (built on first use per machine)."""
    return native.kernel_usable(ENV_SWITCH, native.library_path(_SOURCE), _SOURCE,
                                lambda: native.op_loaded("paged_decode_attention"), _register_fake, _self_check,
                                "the paged decode attention kernel is not used, decodes gather their context")


def _takes(tensor: torch.Tensor) -> bool:
    """Whether the kernel takes a q or cache like `tensor`: float32 on the CPU, head size a multiple of 16."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.shape[-1] % 16 == 0


def load_for(key_cache: torch.Tensor) -> bool:
    """Build (once per machine), load and check the kernel now if caches like `key_cache` suit it, so that an
    engine pays that at load rather than in its first large decode step; whether it is available for them."""
    return _takes(key_cache) and paged_attention_available()


def can_attend_in_place(q: torch.Tensor, key_cache: torch.Tensor, soft_cap: Optional[float]) -> bool:
    """Whether these operands are ones the kernel takes (and it is available)."""
    return soft_cap is None and _takes(q) and load_for(key_cache)
