"""StepResult: what one sequence got out of a model step (the runner's answer to the core)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nbllm.outputs import Logprob


@dataclass
class StepResult:
    token_id: Optional[int] = None  # None: a prefill chunk that did not reach the end
    logprob: float = 0.0
    top_logprobs: Optional[tuple[list[int], list[float], int]] = None  # ids, logprobs, rank of the sampled one
    prompt_logprobs: Optional[list[Optional[dict[int, Logprob]]]] = None
