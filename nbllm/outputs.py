"""What the engine hands back: vLLM's RequestOutput and CompletionOutput, and beam results.

These dataclasses are the only engine objects the notebook layer and the server
read. Logprobs follow vLLM: one dict per position mapping token id -> Logprob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Logprob:
    """A token's log probability, its rank in the distribution and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[Optional[dict[int, Logprob]]]


@dataclass
class CompletionOutput:
    """One completion of a request (vLLM's CompletionOutput)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[SampleLogprobs]
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | None while running
    stop_reason: Optional[int | str] = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic seconds) of one request's life."""

    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> Optional[float]:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def latency(self) -> Optional[float]:
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one request (vLLM's RequestOutput)."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    prompt_logprobs: Optional[PromptLogprobs]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Optional[RequestMetrics] = None
    num_cached_tokens: int = 0
    kv_transfer_params: Optional[dict] = None  # vLLM's field; always None here (no disaggregated serving)

    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: Optional[list[int]],
                 prompt_logprobs: Optional[PromptLogprobs], outputs: list[CompletionOutput], finished: bool,
                 metrics: Optional[RequestMetrics] = None, num_cached_tokens: int = 0,
                 kv_transfer_params: Optional[dict] = None, **unknown: object) -> None:
        """vLLM's signature; unknown keyword arguments are accepted and ignored, for forward compatibility."""
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics
        self.num_cached_tokens = num_cached_tokens
        self.kv_transfer_params = kv_transfer_params

    def __repr__(self) -> str:
        texts = [o.text for o in self.outputs]
        return (f"RequestOutput(request_id={self.request_id!r}, prompt={self.prompt!r}, "
                f"outputs={texts!r}, finished={self.finished})")


@dataclass
class BeamSearchSequence:
    """One finished or surviving beam (vLLM's BeamSearchSequence)."""

    tokens: list[int]
    logprobs: list[float]
    cum_logprob: float
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[int | str] = None


@dataclass
class BeamSearchOutput:
    """All ranked beams of one prompt, best first; `tree` records every candidate."""

    sequences: list[BeamSearchSequence]
    prompt: Optional[str] = None
    prompt_token_ids: list[int] = field(default_factory=list)
    tree: Optional[object] = None  # nbllm.beam_tree.BeamTree: every candidate of every step
    request_id: str = ""
    finished: bool = True
