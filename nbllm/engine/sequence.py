"""One request's state inside the engine.

A request is a token list (prompt then outputs) with `num_computed_tokens` of them
already in the KV cache; prefill and decode are the same thing to the scheduler:
a request simply has tokens not yet computed. Preemption resets the count to zero
and keeps the tokens, so recomputation continues where it stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from nbllm.outputs import Logprob, RequestMetrics
from nbllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED)


@dataclass(eq=False)  # identity semantics: queues find and remove a request by what it is
class Request:
    """A single sequence being generated (one completion of a user request)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    eos_token_ids: frozenset[int] = frozenset()
    prompt: Optional[str] = None
    parent_id: Optional[str] = None  # the user's request id when n > 1 fans out
    index: int = 0  # which completion of the parent this is
    generator: Optional[torch.Generator] = None  # per-request RNG when seeded
    priority: int = 0  # with the "priority" scheduling policy, lower is served first

    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first schedule
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: Optional[int | str] = None
    cumulative_logprob: float = 0.0
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    prompt_logprobs: list[Optional[dict[int, Logprob]]] = field(default_factory=list)
    metrics: RequestMetrics = None  # type: ignore[assignment]
    detokenizer: Optional[Any] = None  # engine/detokenizer.py's IncrementalDetokenizer
    bad_words_token_ids: list[list[int]] = field(default_factory=list)
    grammar: Optional[Any] = None  # structured outputs: engine/grammar.py's SequenceGrammar
    beam_group_id: Optional[str] = None  # set for beams of a beam search
    beam_candidates: Optional[list[tuple[int, float, int]]] = None  # a beam's proposals awaiting selection

    def __post_init__(self) -> None:
        self._all_token_ids = list(self.prompt_token_ids)
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time)

    @property
    def all_token_ids(self) -> list[int]:
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> Optional[str]:
        return self.status.value if self.status.is_finished else None

    @property
    def is_prefilling_prompt(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)

    def fork(self, request_id: str) -> "Request":
        """A new request with this one's tokens and parameters but no KV blocks yet."""
        child = Request(request_id=request_id, prompt_token_ids=self.prompt_token_ids,
                        sampling_params=self.sampling_params, arrival_time=self.arrival_time,
                        eos_token_ids=self.eos_token_ids, prompt=self.prompt, parent_id=self.parent_id,
                        index=self.index, beam_group_id=self.beam_group_id, priority=self.priority)
        child.output_token_ids = list(self.output_token_ids)
        child._all_token_ids = list(self._all_token_ids)
        child.cumulative_logprob = self.cumulative_logprob
        return child

    def reset_for_recompute(self) -> None:
        """After preemption: the tokens stay, the KV cache is gone."""
        self.num_computed_tokens = 0
        self.beam_candidates = None  # recomputation proposes them again
        self.status = RequestStatus.WAITING
        self.metrics.num_preemptions += 1
