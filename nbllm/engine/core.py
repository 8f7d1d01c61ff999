"""EngineCore: the scheduler, the block manager and a model runner, stepped in one thread.

One step is: schedule, run the model, post-process (the OutputProcessor turns sampled
tokens into outputs; beam groups select their next beams). The core is single-threaded
by contract: engine_loop.py feeds it requests and aborts from its queue between steps.
It takes any runner with ModelRunner's `execute`/`release` and sizes (`ModelExecutor`),
so tests drive it with a fake model and no weights.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence, Union

import torch

from nbllm.config import EngineConfig
from nbllm.engine.beam_search import BeamGroup, candidates_from_result
from nbllm.engine.block_manager import BlockManager
from nbllm.engine.grammar import SequenceGrammar
from nbllm.engine.input_processor import NewBeamSearch, NewRequest
from nbllm.engine.output_processor import OutputProcessor, UserRequest
from nbllm.engine.scheduler import Scheduler, SchedulerOutput
from nbllm.engine.sequence import Request, RequestStatus
from nbllm.engine.step_result import StepResult
from nbllm.layers.sampler import RowError, SamplingRow
from nbllm.metrics import MetricsRecorder, MetricsSnapshot, now
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.sampling_params import SamplingParams

EngineOutput = Union[RequestOutput, BeamSearchOutput]


class ModelExecutor(Protocol):
    """What the core needs of a model runner (engine/model_runner.py's ModelRunner)."""

    device: torch.device
    vocab_size: int
    num_blocks: int

    @property
    def is_sleeping(self) -> bool: ...

    def execute(self, out: SchedulerOutput, rows: dict[str, SamplingRow]) -> dict[str, StepResult]: ...

    def sleep(self, level: int) -> None: ...

    def wake_up(self, tags: Optional[list[str]]) -> None: ...

    def release(self) -> None: ...


class EngineCore:
    def __init__(self, config: EngineConfig, runner: ModelExecutor, tokenizer: Any, max_model_len: int,
                 eos_token_ids: frozenset[int]):
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.block_manager = BlockManager(runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   max_model_len, config.scheduling_policy)
        self.metrics = MetricsRecorder()
        self.output_processor = OutputProcessor(tokenizer, max_model_len, self.metrics)
        self._beam_groups: dict[str, BeamGroup] = {}
        self._num_forks = 0
        self._failures: list[tuple[str, Exception]] = []

    # ----------------------------------------------------------------- requests
    def add_request(self, new: NewRequest) -> None:
        """Fan the request out into its n sequences and queue them; ValueError for an id in use."""
        params = new.params
        child_ids = [new.request_id] if params.n == 1 else [f"{i}_{new.request_id}" for i in range(params.n)]
        self._check_ids_free([new.request_id, *child_ids])
        children = []
        for index, child_id in enumerate(child_ids):
            child = Request(request_id=child_id, prompt_token_ids=new.prompt_token_ids,
                            sampling_params=params.clone(), arrival_time=new.arrival_time,
                            eos_token_ids=self.eos_token_ids, prompt=new.prompt, parent_id=new.request_id,
                            index=index, generator=self._generator(params, index), priority=new.priority)
            child.bad_words_token_ids = new.bad_words_token_ids
            if new.grammar is not None:  # each sequence its own matcher; stop ids end the grammar
                child.grammar = SequenceGrammar(new.grammar, sorted(self.eos_token_ids | set(params.stop_token_ids)))
            children.append(child)
        self.output_processor.add_request(UserRequest(new.request_id, new.prompt, new.prompt_token_ids, params,
                                                      children))
        for child in children:
            self.scheduler.add_request(child)

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        """A seeded request's own RNG (completion i uses seed + i), made here in the engine's thread."""
        if params.seed is None:
            return None
        generator = torch.Generator(device=self.runner.device)
        generator.manual_seed(params.seed + index)
        return generator

    def _check_ids_free(self, request_ids: Sequence[str]) -> None:
        live = set(self.output_processor.requests) | set(self._beam_groups)
        live |= {r.request_id for r in self.scheduler.running} | {r.request_id for r in self.scheduler.waiting}
        taken = [rid for rid in request_ids if rid in live]
        if taken:
            raise ValueError(f"request id {taken[0]!r} is already in use")

    def add_beam_search(self, new: NewBeamSearch) -> None:
        """Queue a beam search; its single output (a BeamSearchOutput) comes when it ends."""
        first_id = f"{new.request_id}-beam0"
        self._check_ids_free([new.request_id, first_id])
        beam_params = SamplingParams(temperature=new.params.temperature, logprobs=2 * new.params.beam_width,
                                     max_tokens=None, ignore_eos=True, detokenize=False)
        group = BeamGroup(new.request_id, new.prompt, new.prompt_token_ids, new.params, self.eos_token_ids,
                          self.tokenizer, self.max_model_len)
        first = Request(request_id=first_id, prompt_token_ids=new.prompt_token_ids, sampling_params=beam_params,
                        arrival_time=new.arrival_time, eos_token_ids=self.eos_token_ids, prompt=new.prompt,
                        parent_id=new.request_id, beam_group_id=new.request_id)
        group.start(first)
        self._beam_groups[new.request_id] = group
        self.scheduler.add_request(first)
        self.metrics.prompt_tokens_total += len(new.prompt_token_ids)

    def abort_requests(self, request_ids: Sequence[str]) -> list[EngineOutput]:
        """Abort requests (unknown ids are ignored); returns their final outputs."""
        outputs: list[EngineOutput] = []
        for request_id in request_ids:
            group = self._beam_groups.pop(request_id, None)
            if group is not None:
                for request in group.requests:
                    self._drop_beam(request)
                outputs.append(group.output())
                continue
            user = self.output_processor.requests.get(request_id)
            if user is None:
                continue
            self.scheduler.abort_requests(user.children)
            outputs.append(self.output_processor.abort(request_id))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.output_processor.requests or self._beam_groups)

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.requests) + len(self._beam_groups)

    # ----------------------------------------------------------------- the step
    def step(self) -> list[EngineOutput]:
        """Schedule, run the model, post-process; returns the outputs of requests that made progress."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        t0 = now()
        for item in out.scheduled:
            if item.request.metrics.first_scheduled_time is None:
                item.request.metrics.first_scheduled_time = t0
        rows = {s.request.request_id: sampling_row(s.request) for s in out.scheduled if s.samples_this_step}
        try:
            results = self.runner.execute(out, rows)
        except RowError as exc:  # one request's own fault: it ends; the others' counts did not advance,
            failed = self.scheduler.find(exc.request_id)  # so the next step simply computes them again
            self._fail(failed.beam_group_id or failed.parent_id, exc.error)
            return []
        self.scheduler.update_after_step(out)
        self.metrics.iteration_tokens.observe(sum(item.num_new_tokens for item in out.scheduled))
        return self._post_process(out, results, now())

    def _post_process(self, out: SchedulerOutput, results: dict[str, StepResult], t: float) -> list[EngineOutput]:
        touched: dict[str, None] = {}  # user request ids in step order
        groups: dict[str, BeamGroup] = {}
        generated = 0
        failed: set[str] = set()
        for item in out.scheduled:
            request = item.request
            owner = request.beam_group_id or request.parent_id
            if owner in failed:
                continue
            try:
                generated += self._take_result(request, results[request.request_id], t, touched, groups)
            except Exception as exc:  # this request's own fault (e.g. an overflow in its scoring): it alone ends
                failed.add(owner)
                self._fail(owner, exc)
        outputs: list[EngineOutput] = []
        for group in groups.values():
            if group.request_id not in self._beam_groups or not group.ready():
                continue
            try:
                generated += group.expand(self._fork_beam, self._drop_beam)
                if group.finished:
                    outputs.append(group.output())
                    del self._beam_groups[group.request_id]
                    self.metrics.requests_finished_total += 1
                elif group.streams_progress:
                    outputs.append(group.snapshot())
            except Exception as exc:
                self._fail(group.request_id, exc)
        self.metrics.record_generated(generated, t)
        outputs += self.output_processor.outputs_for(
            [rid for rid in touched if rid in self.output_processor.requests], t)
        return outputs

    def _take_result(self, request: Request, result: StepResult, t: float, touched: dict[str, None],
                     groups: dict[str, BeamGroup]) -> int:
        """Apply one sequence's step result; returns the number of tokens it generated (0 or 1)."""
        if result.prompt_logprobs is not None:
            self.output_processor.add_prompt_logprobs(request, result.prompt_logprobs)
        if result.token_id is None:
            return 0
        if request.beam_group_id is not None:
            request.beam_candidates = candidates_from_result(result.token_id, result.logprob, result.top_logprobs)
            groups[request.beam_group_id] = self._beam_groups[request.beam_group_id]
            return 0
        touched[request.parent_id] = None
        status = self.output_processor.append_token(request, result, t)
        if status is not None:
            request.metrics.finished_time = t
            self.scheduler.finish_request(request, status)
        return 1

    def _fail(self, request_id: str, error: Exception) -> None:
        """End one user request (or beam search) after an error of its own, freeing its blocks."""
        group = self._beam_groups.pop(request_id, None)
        if group is not None:
            for request in group.requests:
                self._drop_beam(request)
        else:
            user = self.output_processor.requests.pop(request_id, None)
            if user is not None:
                self.scheduler.abort_requests(user.children)
        self._failures.append((request_id, error))

    def take_failures(self) -> list[tuple[str, Exception]]:
        """Requests that failed on their own since the last call, with their errors."""
        failures, self._failures = self._failures, []
        return failures

    # ----------------------------------------------------------------- beams
    def _fork_beam(self, parent: Request) -> Request:
        self._num_forks += 1
        child = parent.fork(f"{parent.beam_group_id}-beam{self._num_forks}")
        if parent.block_ids and parent.num_computed_tokens:
            self.block_manager.fork(parent, child)
            child.num_computed_tokens = parent.num_computed_tokens
            self.scheduler.add_running(child)
        else:  # the parent was preempted: the child recomputes as well
            self.scheduler.add_request(child)
        return child

    def _drop_beam(self, request: Request) -> None:
        if not request.is_finished:
            self.scheduler.finish_request(request, RequestStatus.FINISHED_ABORTED)

    # ----------------------------------------------------------------- memory
    def reset_prefix_cache(self) -> None:
        self.block_manager.reset_prefix_cache()

    def sleep(self, level: int) -> None:
        """Release the KV pool (and at level 2 the weights); only when no request is in flight."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 (free the KV cache) or 2 (also the weights), got {level!r}")
        if self.has_unfinished_requests():
            raise RuntimeError(f"cannot sleep with {self.get_num_unfinished_requests()} requests in flight; "
                               f"wait for them or abort them first")
        self.block_manager.reset_prefix_cache()  # the cached prefixes' KV is about to be dropped
        self.runner.sleep(level)

    def wake_up(self, tags: Optional[list[str]] = None) -> bool:
        """Restore what sleep released ("weights", "kv_cache"; None: both); True once fully awake."""
        unknown = set(tags or ()) - {"weights", "kv_cache"}
        if unknown:
            raise ValueError(f"wake_up tags must be 'weights' or 'kv_cache', got {sorted(unknown)}")
        self.runner.wake_up(tags)
        return not self.runner.is_sleeping

    # ----------------------------------------------------------------- introspection

    def get_stats(self) -> MetricsSnapshot:
        bm = self.block_manager
        t = now()
        running = {r.request_id: len(r.block_ids) for r in self.scheduler.running}
        return MetricsSnapshot(
            timestamp=t, kv_cache_usage_perc=bm.usage, num_blocks_total=bm.num_usable_blocks,
            num_blocks_used=bm.num_used_blocks, num_blocks_cached=bm.num_cached_blocks,
            block_size=bm.block_size, num_requests_running=len(self.scheduler.running),
            num_requests_waiting=len(self.scheduler.waiting), prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits, num_preemptions=self.scheduler.num_preemptions,
            prompt_tokens_total=self.metrics.prompt_tokens_total,
            generation_tokens_total=self.metrics.generation_tokens_total,
            requests_finished_total=self.metrics.requests_finished_total,
            tokens_per_second=self.metrics.tokens_per_second(t), running_request_blocks=running,
            block_states=bm.block_states(), time_to_first_token=self.metrics.time_to_first_token.copy(),
            inter_token_latency=self.metrics.inter_token_latency.copy(),
            e2e_request_latency=self.metrics.e2e_request_latency.copy(),
            request_blocks={r.request_id: [b - 1 for b in r.block_ids]  # block_states starts at block 1
                            for r in self.scheduler.running},
            iteration_tokens=self.metrics.iteration_tokens.copy())

    def shutdown(self) -> list[EngineOutput]:
        """Abort everything (returning the final outputs) and release the model and KV pool."""
        outputs = self.abort_requests(list(self.output_processor.requests) + list(self._beam_groups))
        self.runner.release()
        return outputs


def sampling_row(request: Request) -> SamplingRow:
    """What the sampler needs of one sequence; EOS and stop ids are masked until min_tokens, unless a
    grammar constrains it: a grammar decides where the output ends (min_tokens cannot hold it open)."""
    stop_ids = frozenset(request.eos_token_ids) | frozenset(request.sampling_params.stop_token_ids or ())
    stop_ids = stop_ids if request.grammar is None else frozenset()
    return SamplingRow(request.sampling_params, request.prompt_token_ids, request.output_token_ids,
                       request.generator, stop_ids, request.bad_words_token_ids, request.request_id,
                       request.grammar)
