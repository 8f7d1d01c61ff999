"""OutputProcessor: from sampled tokens to vLLM's RequestOutput.

For every token a step produced it appends the token to its sequence, records
logprobs and latency metrics, detokenizes incrementally and checks the stop
conditions (stop token, EOS, stop string, max_tokens, context length, a completed
structured-output grammar, whose matcher it advances). It reports a
finished sequence back to the core, which frees its blocks. It gathers a user
request's `n` sequences into one RequestOutput per its output kind (cumulative,
delta or final only). It never schedules and never touches tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from nbllm.engine.detokenizer import CONTEXT_TOKENS, IncrementalDetokenizer, decode_candidates
from nbllm.engine.sequence import Request, RequestStatus
from nbllm.engine.step_result import StepResult
from nbllm.metrics import MetricsRecorder
from nbllm.outputs import CompletionOutput, Logprob, RequestOutput
from nbllm.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class UserRequest:
    """One request as the user made it, gathering its n sequences."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    sent_text_len: list[int] = field(default_factory=list)
    sent_token_len: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sent_text_len = [0] * len(self.children)
        self.sent_token_len = [0] * len(self.children)

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


class OutputProcessor:
    def __init__(self, tokenizer: Any, max_model_len: int, metrics: MetricsRecorder):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.metrics = metrics
        self.requests: dict[str, UserRequest] = {}

    def add_request(self, user: UserRequest) -> None:
        for child in user.children:
            if child.sampling_params.detokenize:
                child.detokenizer = IncrementalDetokenizer(self.tokenizer, user.prompt_token_ids,
                                                           child.sampling_params)
        self.requests[user.request_id] = user
        self.metrics.prompt_tokens_total += len(user.prompt_token_ids) * len(user.children)

    # ----------------------------------------------------------------- per token
    def append_token(self, request: Request, result: StepResult, t: float) -> Optional[RequestStatus]:
        """Add a sampled token to its sequence; returns the status it finished with, if it did."""
        params = request.sampling_params
        token = result.token_id
        if request.grammar is not None and not request.grammar.accept(token):  # the sampler's mask forbids this
            raise RuntimeError(f"structured outputs: the sampled token {token} breaks the request's grammar; do "
                               f"allowed_token_ids, bad_words or logits_processors forbid all the grammar allows?")
        request.append_output_token(token)
        request.cumulative_logprob += result.logprob
        if params.logprobs is not None:
            request.logprobs.append(self._logprob_entry(request, token, result))
        self._record_latency(request, t)
        n_out = request.num_output_tokens
        stop_token = token in params.stop_token_ids or (token in request.eos_token_ids and not params.ignore_eos)
        grammar_done = request.grammar is not None and request.grammar.is_terminated  # a stop token ended it
        if grammar_done or (stop_token and n_out >= params.min_tokens):
            if params.include_stop_str_in_output and params.detokenize:
                request.detokenizer.add_token(token)
            request.stop_reason = token if token in params.stop_token_ids else None
            return RequestStatus.FINISHED_STOPPED
        if params.detokenize:
            delta = request.detokenizer.add_token(token)
            if n_out >= params.min_tokens:
                stop = request.detokenizer.check_stop_strings(len(delta))
                if stop is not None:
                    request.stop_reason = stop
                    return RequestStatus.FINISHED_STOPPED
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len
        if n_out >= max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _record_latency(self, request: Request, t: float) -> None:
        m = request.metrics
        if m.first_token_time is None:
            m.first_token_time = t
            self.metrics.time_to_first_token.observe(t - m.arrival_time)
        else:
            self.metrics.inter_token_latency.observe(t - m.last_token_time)
        m.last_token_time = t

    def _logprob_entry(self, request: Request, token: int, result: StepResult) -> dict[int, Logprob]:
        """The sampled token first, then the top alternatives, each decoded in context (or None)."""
        ids, values, rank = result.top_logprobs or ([], [], None)
        entry = {token: Logprob(result.logprob, rank)}
        for r, (tid, value) in enumerate(zip(ids, values)):
            entry.setdefault(tid, Logprob(value, r + 1))
        self._decode_entry(request, len(request.all_token_ids) - 1, entry)
        return entry

    def _decode_entry(self, request: Request, position: int, entry: dict[int, Logprob]) -> None:
        """Fill decoded_token for the candidates at `position` of the request's tokens (detokenize=True only)."""
        params = request.sampling_params
        if not params.detokenize:
            return
        context = request.all_token_ids[max(0, position - CONTEXT_TOKENS):position]
        texts = decode_candidates(self.tokenizer, context, list(entry), params.skip_special_tokens)
        for logprob, text in zip(entry.values(), texts):
            logprob.decoded_token = text

    def add_prompt_logprobs(self, request: Request, entries: list) -> None:
        """Keep entries for prompt positions not seen yet (a preempted request recomputes its prompt).

        A chunk's entries end at the last prompt position its logits predict:
        min(num_computed_tokens, num_prompt_tokens - 1), counts already advanced.
        """
        end = min(request.num_computed_tokens, request.num_prompt_tokens - 1) + 1
        first = end - len(entries)  # the prompt position of entries[0]
        have = len(request.prompt_logprobs)
        if have >= end:
            return
        for index in range(max(0, have - first), len(entries)):
            entry = entries[index]
            if entry is not None:  # position first + index holds the token these logprobs are about
                self._decode_entry(request, first + index, entry)
            request.prompt_logprobs.append(entry)

    # ----------------------------------------------------------------- outputs
    def outputs_for(self, request_ids: Iterable[str], t: float) -> list[RequestOutput]:
        """Outputs of these user requests after a step; finished ones are forgotten."""
        outputs = []
        for request_id in request_ids:
            user = self.requests[request_id]
            output = self._make_output(user)
            if output is not None:
                outputs.append(output)
            if user.finished:
                del self.requests[request_id]
                self.metrics.requests_finished_total += 1
                self.metrics.e2e_request_latency.observe(t - user.children[0].arrival_time)
        return outputs

    def abort(self, request_id: str) -> Optional[RequestOutput]:
        """The final output of an aborted request (None for an unknown id); the request is forgotten."""
        user = self.requests.pop(request_id, None)
        return None if user is None else self._make_output(user, force=True)

    def _make_output(self, user: UserRequest, force: bool = False) -> Optional[RequestOutput]:
        kind = user.params.output_kind
        finished = user.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished and not force:
            return None
        completions = []
        for i, child in enumerate(user.children):
            text = child.detokenizer.visible_text(child.is_finished) if child.detokenizer is not None else ""
            tokens = list(child.output_token_ids)
            logprobs = list(child.logprobs) if user.params.logprobs is not None else None
            if kind == RequestOutputKind.DELTA:
                text, tokens = text[user.sent_text_len[i]:], tokens[user.sent_token_len[i]:]
                if logprobs is not None:
                    logprobs = logprobs[user.sent_token_len[i]:]
                user.sent_text_len[i] += len(text)
                user.sent_token_len[i] += len(tokens)
            completions.append(CompletionOutput(
                index=i, text=text, token_ids=tokens,
                cumulative_logprob=child.cumulative_logprob if user.params.logprobs is not None else None,
                logprobs=logprobs, finish_reason=child.finish_reason, stop_reason=child.stop_reason))
        first = user.children[0]
        prompt_logprobs = list(first.prompt_logprobs) if user.params.prompt_logprobs is not None else None
        return RequestOutput(request_id=user.request_id, prompt=user.prompt,
                             prompt_token_ids=user.prompt_token_ids, prompt_logprobs=prompt_logprobs,
                             outputs=completions, finished=finished or force, metrics=first.metrics,
                             num_cached_tokens=first.num_cached_tokens)
