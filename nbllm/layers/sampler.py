"""Turning a batch of logits into next tokens, each row with its own SamplingParams.

The pipeline, in order:
  1. raw log-probabilities of the model's logits (what logprobs report, as vLLM's
     default "raw_logprobs");
  2. constraints: allowed_token_ids, bad_words, logit_bias, and min_tokens (EOS and
     stop tokens masked until enough tokens exist), then the request's own
     logits_processors (vLLM's classic callables), row by row, then the grammars
     of structured outputs (layers/grammar_mask.py: one bitmask, one kernel call);
  3. penalties: repetition (prompt and output tokens, Hugging Face's rule), presence
     and frequency (output tokens only, OpenAI's rule);
  4. greedy rows take the argmax;
  5. other rows: temperature, then top-k, top-p and min-p filtering, then one draw
     per row by the exponential race (argmax of p / Exp(1)), using the row's own
     generator when it is seeded so its stream does not depend on its batch mates;
  6. logprobs report the engine's logprobs_mode (vLLM's): the raw logprobs of step 1
     (the default), the raw logits, or the processed logits (or their log-softmax) the
     token was drawn from (after steps 2-5; greedy rows: after step 3).
Rows without constraints or penalties pay nothing for steps 2-3.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from nbllm.config import LOGPROBS_MODES
from nbllm.layers.grammar_mask import GrammarConstraint, apply_grammars
from nbllm.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """What the sampler needs to know about one row."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: Optional[torch.Generator]
    stop_ids_until_min_tokens: frozenset[int] = frozenset()  # masked while output < min_tokens
    bad_words_token_ids: list[list[int]] = field(default_factory=list)
    request_id: str = ""  # named in a RowError
    grammar: Optional[GrammarConstraint] = None  # structured outputs: the sequence's grammar state


class RowError(Exception):
    """A failure that belongs to one row (its user-supplied logits processor raised)."""

    def __init__(self, request_id: str, error: Exception):
        super().__init__(f"request {request_id!r}: {error!r}")
        self.request_id = request_id
        self.error = error


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float]  # raw logprob of each sampled token
    top_logprobs: list[Optional[tuple[list[int], list[float], int]]]  # (ids, logprobs, sampled rank)


class Sampler:
    def __init__(self, default_generator: torch.Generator, logprobs_mode: str = "raw_logprobs"):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        self.default_generator = default_generator
        self.logprobs_mode = logprobs_mode  # what logprobs report (vLLM's): before or after processing

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        logits = logits.float()  # [N, V]
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        raw_logits = logits.clone() if self.logprobs_mode == "raw_logits" else None
        logits = self._apply_constraints(logits, rows)
        logits = self._apply_logits_processors(logits, rows)
        logits = apply_grammars(logits, [r.grammar for r in rows])
        logits = self._apply_penalties(logits, rows)

        sampled = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        token_ids = logits.argmax(dim=-1)  # greedy rows are done; sampled rows are overwritten below
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            sampled_rows = [rows[i] for i in sampled]
            processed = self._temper_and_filter(logits.index_select(0, index), sampled_rows)
            token_ids.index_copy_(0, index, self._draw(processed, sampled_rows))
            logits.index_copy_(0, index, processed)  # now what the sampled rows drew from

        reported = {"raw_logprobs": raw_logprobs, "raw_logits": raw_logits, "processed_logits": logits}.get(
            self.logprobs_mode)
        if reported is None:
            reported = torch.log_softmax(logits, dim=-1)  # processed_logprobs
        chosen = reported.gather(1, token_ids[:, None]).squeeze(1)
        top = self._top_logprobs(reported, token_ids, chosen, rows)
        return SamplerOutput(token_ids.tolist(), chosen.tolist(), top)

    # ----------------------------------------------------------------- step 2
    @staticmethod
    def _apply_constraints(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        for i, row in enumerate(rows):
            p = row.params
            if p.allowed_token_ids is not None:
                keep = torch.full_like(logits[i], float("-inf"))
                ids = torch.tensor(p.allowed_token_ids, device=logits.device)
                keep[ids] = 0.0
                logits[i] += keep
            for word in row.bad_words_token_ids:
                prefix = word[:-1]
                if not prefix or list(row.output_token_ids[-len(prefix):]) == prefix:
                    logits[i, word[-1]] = float("-inf")
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), device=logits.device)
                logits[i, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
            if row.stop_ids_until_min_tokens and len(row.output_token_ids) < p.min_tokens:
                logits[i, list(row.stop_ids_until_min_tokens)] = float("-inf")
        return logits

    @staticmethod
    def _apply_logits_processors(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        for i, row in enumerate(rows):
            for processor in row.params.logits_processors or ():
                try:
                    logits[i] = call_logits_processor(processor, row.prompt_token_ids, row.output_token_ids,
                                                      logits[i])
                except Exception as exc:  # user code: it fails its own request, not the batch
                    raise RowError(row.request_id, exc) from exc
        return logits

    # ----------------------------------------------------------------- step 3
    @staticmethod
    def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        vocab = logits.shape[1]
        for i, row in enumerate(rows):
            p = row.params
            if not p.needs_penalties:
                continue
            output = torch.tensor(list(row.output_token_ids), dtype=torch.long, device=logits.device)
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(list(row.prompt_token_ids) + list(row.output_token_ids),
                                    dtype=torch.long, device=logits.device).unique()
                values = logits[i, seen]
                logits[i, seen] = torch.where(values > 0, values / p.repetition_penalty,
                                              values * p.repetition_penalty)
            if output.numel() and (p.presence_penalty or p.frequency_penalty):
                counts = torch.bincount(output, minlength=vocab).to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        return logits

    # ----------------------------------------------------------------- step 5
    @staticmethod
    def _temper_and_filter(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        temperature = torch.tensor([r.params.temperature for r in rows], device=logits.device)
        return filter_logits(
            logits / temperature[:, None],
            top_k=[r.params.top_k for r in rows],
            top_p=[r.params.top_p for r in rows],
            min_p=[r.params.min_p for r in rows],
        )

    def _draw(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        device = logits.device
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [i for i, r in enumerate(rows) if r.generator is None]
        if unseeded:
            draws = torch.empty(len(unseeded), probs.shape[1], device=device).exponential_(
                generator=self.default_generator)
            noise.index_copy_(0, torch.tensor(unseeded, device=device), draws)
        for i, row in enumerate(rows):
            if row.generator is not None:
                noise[i] = torch.empty(probs.shape[1], device=device).exponential_(generator=row.generator)
        return (probs / noise).argmax(dim=-1)

    # ----------------------------------------------------------------- logprobs
    @staticmethod
    def _top_logprobs(raw: torch.Tensor, token_ids: torch.Tensor, chosen: torch.Tensor,
                      rows: list[SamplingRow]) -> list[Optional[tuple[list[int], list[float], int]]]:
        wanted = [r.params.logprobs for r in rows]
        if all(k is None for k in wanted):
            return [None] * len(rows)
        ranks = (raw > chosen[:, None]).sum(dim=-1) + 1
        wanted = [raw.shape[1] if k == -1 else k for k in wanted]  # -1: the whole vocabulary
        k_max = max(k or 0 for k in wanted)
        top_values, top_ids = raw.topk(k_max, dim=-1) if k_max else (None, None)
        result: list[Optional[tuple[list[int], list[float], int]]] = []
        for i, k in enumerate(wanted):
            if k is None:
                result.append(None)
            elif k == 0:
                result.append(([], [], int(ranks[i])))
            else:
                result.append((top_ids[i, :k].tolist(), top_values[i, :k].tolist(), int(ranks[i])))
        return result


def call_logits_processor(processor: Callable, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int],
                          logits: torch.Tensor) -> torch.Tensor:
    """vLLM's two forms: (output_ids, logits) -> logits, or (prompt_ids, output_ids, logits) -> logits."""
    try:
        arity = len(inspect.signature(processor).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        arity = 2
    args = (tuple(prompt_token_ids), tuple(output_token_ids), logits) if arity == 3 else (
        tuple(output_token_ids), logits)
    result = processor(*args)
    if not isinstance(result, torch.Tensor) or result.shape != logits.shape:
        raise ValueError(f"logits processor {processor!r} must return a tensor of shape {tuple(logits.shape)}, "
                         f"got {type(result).__name__}")
    return result


def filter_logits(logits: torch.Tensor, top_k: list[int], top_p: list[float],
                  min_p: list[float]) -> torch.Tensor:
    """Mask (set to -inf) tokens outside each row's top-k, top-p nucleus and min-p floor.

    logits: [N, V], already divided by temperature. top_k 0 and top_p 1 and min_p 0
    disable a filter. Ties at the k-th value are kept, as vLLM does.
    """
    device = logits.device
    neg_inf = float("-inf")
    if any(k > 0 for k in top_k):
        vocab = logits.shape[1]
        k = torch.tensor([min(kk, vocab) if kk > 0 else vocab for kk in top_k], device=device)
        sorted_desc = logits.sort(dim=-1, descending=True).values
        kth = sorted_desc.gather(1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, neg_inf)
    if any(p < 1.0 for p in top_p):
        p = torch.tensor(top_p, device=device, dtype=logits.dtype)
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - p)[:, None]
        remove_sorted[:, -1] = False  # always keep the most likely token
        remove = torch.zeros_like(remove_sorted).scatter(1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, neg_inf)
    if any(m > 0.0 for m in min_p):
        m = torch.tensor(min_p, device=device, dtype=logits.dtype)
        probs = logits.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * m[:, None]
        logits = logits.masked_fill(probs < floor, neg_inf)
    return logits
