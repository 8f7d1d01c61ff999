"""Continuous batching: which requests run this step, and how many tokens each.

Each step has a budget of `max_num_batched_tokens`. Running requests are served
first, in arrival order (a decode needs one token, an unfinished prefill takes a
chunk); then waiting requests are admitted while the budget, `max_num_seqs` and
the KV pool allow. When the pool runs dry the most recently admitted running
request is preempted: its blocks are freed and it is recomputed later. With the
"priority" policy (vLLM's), waiting requests are served by (priority, arrival), lower
first, and the least urgent running request is the one preempted. Pure Python.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Optional

from nbllm.engine.block_manager import BlockManager, SlotAllocation
from nbllm.engine.sequence import Request, RequestStatus

SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def samples_this_step(self) -> bool:
        """True when this chunk reaches the request's last token: a new token follows."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Owns the waiting and running queues and the block manager."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, policy: str = "fcfs"):
        if policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {SCHEDULING_POLICIES}, got {policy!r}")
        self.policy = policy
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # ----------------------------------------------------------------- queues
    def add_request(self, request: Request) -> None:
        if self.policy == "priority":
            self._insert_by_priority(request)
        else:
            self.waiting.append(request)

    def _insert_by_priority(self, request: Request) -> None:
        """Keep `waiting` ordered by (priority, arrival): lower values are served first, as in vLLM."""
        key = (request.priority, request.arrival_time)
        index = next((i for i, r in enumerate(self.waiting) if (r.priority, r.arrival_time) > key),
                     len(self.waiting))
        self.waiting.insert(index, request)

    def add_running(self, request: Request) -> None:
        """Admit a request that already holds its blocks (a forked beam)."""
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def find(self, request_id: str) -> Request:
        """The running or waiting sequence with this id (KeyError if none)."""
        for request in (*self.running, *self.waiting):
            if request.request_id == request_id:
                return request
        raise KeyError(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """Take a request out of whichever queue holds it and free its blocks."""
        request.status = status
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.block_manager.free(request)

    def abort_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            if not request.is_finished:
                self.finish_request(request, RequestStatus.FINISHED_ABORTED)

    # ----------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_ids: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new == 0:  # a beam waiting for its group's selection
                i += 1
                continue
            allocation = self._allocate_or_preempt(request, num_new, out, scheduled_ids)
            if allocation is None:
                break  # the request preempted itself; everything after it is gone too
            out.block_copies += allocation.block_copies
            out.scheduled.append(ScheduledRequest(request, num_new))
            scheduled_ids.add(request.request_id)
            budget -= num_new
            i += 1

        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _allocate_or_preempt(self, request: Request, num_new: int, out: SchedulerOutput,
                             scheduled_ids: set[str]) -> Optional[SlotAllocation]:
        """Allocate, preempting the newest unscheduled running requests until it fits (None: it did not)."""
        while True:
            allocation = self.block_manager.allocate_slots(request, num_new)
            if allocation is not None:
                return allocation
            victim = self._pick_victim(scheduled_ids)
            if victim is None:
                return None
            self._preempt(victim, out)
            if victim is request:
                return None

    def _pick_victim(self, scheduled_ids: set[str]) -> Optional[Request]:
        """The newest unscheduled running request (fcfs), or the least urgent one (priority)."""
        candidates = [r for r in reversed(self.running) if r.request_id not in scheduled_ids]
        if not candidates:
            return None
        if self.policy == "priority":
            return max(candidates, key=lambda r: (r.priority, r.arrival_time))
        return candidates[0]

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        request.reset_for_recompute()
        if self.policy == "priority":
            self._insert_by_priority(request)
        else:
            self.waiting.appendleft(request)
        self.num_preemptions += 1
        out.preempted.append(request)

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            computed_blocks: list[int] = []
            num_cached = 0
            if request.num_computed_tokens == 0 and not request.block_ids and not _wants_prompt_logprobs(request):
                computed_blocks, num_cached = bm.get_computed_blocks(request)
            num_new = min(request.num_tokens - request.num_computed_tokens - num_cached, budget)
            allocation = bm.allocate_slots(request, num_new, computed_blocks)
            if allocation is None:
                break
            self.waiting.popleft()
            if request.metrics.num_preemptions == 0 and request.num_computed_tokens == 0:
                request.num_cached_tokens = num_cached
                bm.record_prefix_lookup(request.num_tokens, num_cached)
            request.num_computed_tokens += num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.block_copies += allocation.block_copies
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new

    # ----------------------------------------------------------------- after the step
    def update_after_step(self, out: SchedulerOutput) -> None:
        """Advance computed-token counts and register newly full blocks in the prefix cache."""
        for item in out.scheduled:
            request = item.request
            if request.is_finished:
                continue
            request.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(request)


def _wants_prompt_logprobs(request: Request) -> bool:
    # Cached prefixes carry no logits, so such requests compute their whole prompt.
    return request.sampling_params.prompt_logprobs is not None
