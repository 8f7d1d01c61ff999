"""LLMEngine: add requests, step, abort. One step = schedule, run the model, post-process.

Single-threaded by contract: callers serialise add_request/abort_request/step
(engine_loop.py does so for the notebook's many callers). A user request with
n > 1 fans out into n sequences that share the prompt's KV blocks through the
prefix cache; outputs are gathered back per user request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from nbllm.config import EngineConfig
from nbllm.engine.beam_search import BeamGroup, candidates_from_result
from nbllm.engine.block_manager import BlockManager
from nbllm.engine.detokenizer import IncrementalDetokenizer
from nbllm.engine.model_runner import ModelRunner, StepResult, resolve_device, stop_ids_for_min_tokens
from nbllm.engine.scheduler import Scheduler
from nbllm.engine.sequence import Request, RequestStatus
from nbllm.layers.sampler import SamplingRow
from nbllm.loader import load_generation_config, load_hf_config, load_tokenizer, resolve_model_path, torch_dtype
from nbllm.metrics import MetricsRecorder, MetricsSnapshot, now
from nbllm.outputs import BeamSearchOutput, CompletionOutput, Logprob, RequestOutput
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)

GENERATION_CONFIG_FIELDS = {"repetition_penalty": "repetition_penalty", "temperature": "temperature",
                            "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "max_new_tokens": "max_tokens"}


@dataclass
class _UserRequest:
    """One request as the user made it, gathering its n sequences."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    sent_text_len: list[int] = field(default_factory=list)
    sent_token_len: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_path = resolve_model_path(config.model)
        self.hf_config = load_hf_config(self.model_path, config.trust_remote_code)
        self.tokenizer = load_tokenizer(
            resolve_model_path(config.tokenizer) if config.tokenizer else self.model_path, config.trust_remote_code)
        self.generation_config = load_generation_config(self.model_path)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        self.dtype = torch_dtype(config.dtype, self.hf_config, self.device)
        max_model_len = self._derive_max_model_len()
        self.runner = ModelRunner(config, self.hf_config, self.model_path, self.device, self.dtype, max_model_len)
        pool_tokens = (self.runner.num_blocks - 1) * config.block_size
        if pool_tokens < max_model_len:
            logger.warning("max_model_len lowered from %d to %d to fit the KV pool", max_model_len, pool_tokens)
            max_model_len = pool_tokens
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   max_model_len)
        self.eos_token_ids = self._eos_token_ids()
        self.metrics = MetricsRecorder()
        self._requests: dict[str, _UserRequest] = {}
        self._beam_groups: dict[str, BeamGroup] = {}
        self._num_forks = 0

    # ----------------------------------------------------------------- set-up helpers
    def _derive_max_model_len(self) -> int:
        limits = [getattr(self.hf_config, name) for name in
                  ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if isinstance(getattr(self.hf_config, name, None), int)]
        model_limit = min(limits) if limits else 2048
        if self.config.max_model_len is None:
            return model_limit
        if self.config.max_model_len > model_limit:
            raise ValueError(f"max_model_len={self.config.max_model_len} exceeds the model's "
                             f"maximum of {model_limit} positions")
        return self.config.max_model_len

    def _eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.generation_config.get("eos_token_id"), getattr(self.hf_config, "eos_token_id", None),
                       self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        return frozenset(ids)

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json defaults when mode is "auto"."""
        if self.config.generation_config == "vllm":
            return SamplingParams()
        overrides = {ours: self.generation_config[theirs] for theirs, ours in GENERATION_CONFIG_FIELDS.items()
                     if self.generation_config.get(theirs) is not None}
        return SamplingParams(**overrides)

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    # ----------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: Sequence[int],
                    params: SamplingParams, arrival_time: Optional[float] = None) -> None:
        """Queue a request; raises ValueError for bad input and leaves the engine untouched."""
        prompt_token_ids = self._validate_prompt(request_id, prompt_token_ids)
        params.validate_for_vocab(self.vocab_size)
        arrival = arrival_time if arrival_time is not None else now()
        bad_words = [self.tokenizer.encode(w, add_special_tokens=False) for w in params.bad_words] + \
                    [self.tokenizer.encode(" " + w, add_special_tokens=False) for w in params.bad_words]
        children = []
        for index in range(params.n):
            child_params = params.clone()
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(params.seed + index)
            child = Request(
                request_id=request_id if params.n == 1 else f"{index}_{request_id}",
                prompt_token_ids=prompt_token_ids, sampling_params=child_params, arrival_time=arrival,
                eos_token_ids=self.eos_token_ids, prompt=prompt, parent_id=request_id, index=index,
                generator=generator)
            child.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, child_params)
            child.bad_words_token_ids = [w for w in bad_words if w]
            children.append(child)
        user = _UserRequest(request_id, prompt, prompt_token_ids, params, children,
                            [0] * params.n, [0] * params.n)
        self._requests[request_id] = user
        for child in children:
            self.scheduler.add_request(child)
        self.metrics.prompt_tokens_total += len(prompt_token_ids) * params.n

    def _validate_prompt(self, request_id: str, prompt_token_ids: Sequence[int]) -> list[int]:
        if request_id in self._requests or request_id in self._beam_groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_token_ids = [int(t) for t in prompt_token_ids]
        if not prompt_token_ids:
            raise ValueError("the prompt is empty: it must contain at least one token")
        bad = [t for t in prompt_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt is {len(prompt_token_ids)} tokens long, but the maximum model length "
                             f"is {self.max_model_len} (including at least one generated token)")
        return prompt_token_ids

    def add_beam_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: Sequence[int],
                         params: BeamSearchParams) -> None:
        """Queue a beam search; its single output (a BeamSearchOutput) comes when it ends."""
        prompt_token_ids = self._validate_prompt(request_id, prompt_token_ids)
        beam_params = SamplingParams(temperature=params.temperature, logprobs=2 * params.beam_width,
                                     max_tokens=None, ignore_eos=True, detokenize=False)
        group = BeamGroup(request_id, prompt, prompt_token_ids, params, self.eos_token_ids, self.tokenizer,
                          self.max_model_len)
        first = Request(request_id=f"{request_id}-beam0", prompt_token_ids=prompt_token_ids,
                        sampling_params=beam_params, arrival_time=now(), eos_token_ids=self.eos_token_ids,
                        prompt=prompt, parent_id=request_id, beam_group_id=request_id)
        group.start(first)
        self._beam_groups[request_id] = group
        self.scheduler.add_request(first)
        self.metrics.prompt_tokens_total += len(prompt_token_ids)

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

    def abort_request(self, request_ids: str | Sequence[str]) -> list[RequestOutput | BeamSearchOutput]:
        """Abort requests (unknown ids are ignored); returns their final outputs."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs: list[RequestOutput | BeamSearchOutput] = []
        for request_id in request_ids:
            group = self._beam_groups.pop(request_id, None)
            if group is not None:
                for request in group.requests:
                    self._drop_beam(request)
                outputs.append(group.output())
                continue
            user = self._requests.pop(request_id, None)
            if user is None:
                continue
            self.scheduler.abort_requests(user.children)
            outputs.append(self._make_output(user, force=True))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests or self._beam_groups)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._requests) + len(self._beam_groups)

    # ----------------------------------------------------------------- the step
    def step(self) -> list[RequestOutput | BeamSearchOutput]:
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        t0 = now()
        rows = {id(s.request): self._sampling_row(s.request) for s in out.scheduled if s.samples_this_step}
        for item in out.scheduled:
            if item.request.metrics.first_scheduled_time is None:
                item.request.metrics.first_scheduled_time = t0
        results = self.runner.execute(out, rows)
        self.scheduler.update_after_step(out)
        t1 = now()
        touched: dict[str, _UserRequest] = {}
        groups: dict[str, BeamGroup] = {}
        generated = 0
        for item in out.scheduled:
            request = item.request
            result = results[id(request)]
            if result.prompt_logprobs is not None:
                self._add_prompt_logprobs(request, result.prompt_logprobs)
            if result.token_id is None:
                continue
            if request.beam_group_id is not None:
                request.beam_candidates = candidates_from_result(result.token_id, result.logprob,
                                                                 result.top_logprobs)
                groups[request.beam_group_id] = self._beam_groups[request.beam_group_id]
                continue
            generated += 1
            self._append_token(request, result, t1)
            touched[request.parent_id] = self._requests[request.parent_id]
        outputs: list[RequestOutput | BeamSearchOutput] = []
        for group in groups.values():
            if group.ready():
                generated += group.expand(self._fork_beam, self._drop_beam)
                if group.finished:
                    outputs.append(group.output())
                    del self._beam_groups[group.request_id]
                    self.metrics.requests_finished_total += 1
        self.metrics.record_generated(generated, t1)
        for user in touched.values():
            output = self._make_output(user)
            if output is not None:
                outputs.append(output)
            if user.finished:
                del self._requests[user.request_id]
                self.metrics.requests_finished_total += 1
                self.metrics.e2e_request_latency.observe(t1 - user.children[0].arrival_time)
        return outputs

    @staticmethod
    def _add_prompt_logprobs(request: Request, entries: list) -> None:
        """Keep entries for prompt positions not seen yet (a preempted request recomputes its prompt).

        A chunk's entries end at the last prompt position its logits predict:
        min(num_computed_tokens, num_prompt_tokens - 1), counts already advanced.
        """
        end = min(request.num_computed_tokens, request.num_prompt_tokens - 1) + 1
        first = end - len(entries)  # the prompt position of entries[0]
        have = len(request.prompt_logprobs)
        if have < end:
            request.prompt_logprobs.extend(entries[max(0, have - first):])

    def _sampling_row(self, request: Request) -> SamplingRow:
        return SamplingRow(request.sampling_params, request.prompt_token_ids, request.output_token_ids,
                           request.generator, stop_ids_for_min_tokens(request), request.bad_words_token_ids)

    def _append_token(self, request: Request, result: StepResult, t: float) -> None:
        params = request.sampling_params
        token = result.token_id
        request.append_output_token(token)
        request.cumulative_logprob += result.logprob
        if params.logprobs is not None:
            request.logprobs.append(self._logprob_entry(token, result))
        m = request.metrics
        if m.first_token_time is None:
            m.first_token_time = t
            self.metrics.time_to_first_token.observe(t - m.arrival_time)
        else:
            self.metrics.inter_token_latency.observe(t - m.last_token_time)
        m.last_token_time = t

        n_out = request.num_output_tokens
        stop_token = token in params.stop_token_ids or (token in request.eos_token_ids and not params.ignore_eos)
        if stop_token and n_out >= params.min_tokens:
            if params.include_stop_str_in_output and params.detokenize:
                request.detokenizer.add_token(token)
            request.stop_reason = token if token in params.stop_token_ids else None
            self._finish(request, RequestStatus.FINISHED_STOPPED, t)
            return
        if params.detokenize:
            delta = request.detokenizer.add_token(token)
            if n_out >= params.min_tokens:
                stop = request.detokenizer.check_stop_strings(len(delta))
                if stop is not None:
                    request.stop_reason = stop
                    self._finish(request, RequestStatus.FINISHED_STOPPED, t)
                    return
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len
        if n_out >= max_tokens or request.num_tokens >= self.max_model_len:
            self._finish(request, RequestStatus.FINISHED_LENGTH, t)

    def _logprob_entry(self, token: int, result: StepResult) -> dict[int, Logprob]:
        ids, values, rank = result.top_logprobs or ([], [], None)
        entry = {token: Logprob(result.logprob, rank, self.tokenizer.decode([token]))}
        for r, (tid, value) in enumerate(zip(ids, values)):
            entry.setdefault(tid, Logprob(value, r + 1, self.tokenizer.decode([tid])))
        return entry

    def _finish(self, request: Request, status: RequestStatus, t: float) -> None:
        request.metrics.finished_time = t
        self.scheduler.finish_request(request, status)

    # ----------------------------------------------------------------- outputs
    def _make_output(self, user: _UserRequest, force: bool = False) -> Optional[RequestOutput]:
        kind = user.params.output_kind
        finished = user.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished and not force:
            return None
        completions = []
        for i, child in enumerate(user.children):
            text = child.detokenizer.visible_text(child.is_finished)
            tokens = list(child.output_token_ids)
            logprobs = list(child.logprobs) if user.params.logprobs is not None else None
            if kind == RequestOutputKind.DELTA:
                text, tokens = text[user.sent_text_len[i]:], tokens[user.sent_token_len[i]:]
                if logprobs is not None:
                    logprobs = logprobs[user.sent_token_len[i]:]
                user.sent_text_len[i] += len(text)
                user.sent_token_len[i] += len(tokens)
            completions.append(CompletionOutput(
                index=i, text=text, token_ids=tokens, cumulative_logprob=child.cumulative_logprob,
                logprobs=logprobs, finish_reason=child.finish_reason, stop_reason=child.stop_reason))
        first = user.children[0]
        prompt_logprobs = list(first.prompt_logprobs) if user.params.prompt_logprobs is not None else None
        return RequestOutput(request_id=user.request_id, prompt=user.prompt,
                             prompt_token_ids=user.prompt_token_ids, prompt_logprobs=prompt_logprobs,
                             outputs=completions, finished=finished or force, metrics=first.metrics,
                             num_cached_tokens=first.num_cached_tokens)

    # ----------------------------------------------------------------- introspection
    def get_metrics(self) -> MetricsSnapshot:
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
            e2e_request_latency=self.metrics.e2e_request_latency.copy())

    def shutdown(self) -> None:
        self.abort_request(list(self._requests) + list(self._beam_groups))
        self.runner.release()

