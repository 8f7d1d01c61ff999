"""Structured-output grammars applied to a batch of logits: one bitmask, one kernel call.

Each constrained row's grammar writes the tokens it allows next into its row of a packed
int32 bitmask on the CPU (bit j of word w allows token 32 * w + j); xgrammar's kernel then
sets every forbidden logit of those rows to -inf in place (C++ on the CPU, Triton on a
GPU). Unconstrained rows are neither filled nor touched, and a batch without grammars
pays one list comprehension.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch
import xgrammar as xgr


class GrammarConstraint(Protocol):
    """One sequence's grammar state (engine/grammar.py's SequenceGrammar)."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None: ...


def apply_grammars(logits: torch.Tensor, grammars: Sequence[Optional[GrammarConstraint]]) -> torch.Tensor:
    """Mask in place every token a row's grammar does not allow; logits: [N, V], grammars: N (None: free)."""
    rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
    if not rows:
        return logits
    vocab = logits.shape[1]
    bitmask = torch.full((len(grammars), (vocab + 31) // 32), -1, dtype=torch.int32)  # [N, W], -1: all allowed
    for i in rows:
        grammars[i].fill_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=vocab, indices=rows)
    return logits
