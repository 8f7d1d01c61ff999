"""POST /v1/completions: one or many prompts (text or token ids), n choices each, plain or streamed.

Choice `i * n + j` is the j-th completion of prompt i, as in OpenAI and vLLM. Streams
send deltas (RequestOutputKind.DELTA), one choice per chunk; with `echo` the first
delta of a choice carries the prompt. Usage in streams follows streaming.usage_policy.
A client that disconnects aborts its requests, beam searches included.
"""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator, Optional, Union

from fastapi import APIRouter, Request
from starlette.responses import Response

from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.server.beam import as_request_output, start_beam_search
from nbllm.server.bridge import EngineRequests, PreparedPrompt, cancel_on_disconnect
from nbllm.server.errors import bad_request, invalid_value
from nbllm.server.logprob_ids import RequestedLogprobs, requested_logprobs
from nbllm.server.logprobs import TokenNamer, completion_logprobs, prompt_logprobs
from nbllm.server.protocol import CompletionRequest
from nbllm.server.request_stats import timing_fields
from nbllm.server.responses import CompletionChoice, CompletionResponse
from nbllm.server.sampling import (check_context_length, check_request, output_kind_for, renamed_fields,
                                   to_sampling_params, truncate)
from nbllm.server.state import ServerState
from nbllm.server.streaming import sse_response, usage_policy
from nbllm.server.usage import usage_info

PromptInput = Union[str, list[int]]
_FIELDS = tuple(CompletionRequest.model_fields)
_EMPTY = "Either prompt or prompt_embeds must be provided and non-empty."  # vLLM's wording


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=CompletionResponse)
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await complete(state, body, request)

    return router


async def complete(state: ServerState, body: CompletionRequest, request: Request) -> Response:
    state.check_model(body.model)
    state.check_accepting()
    if body.suffix is not None:
        raise bad_request("suffix is not supported", "suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of is not supported (only best_of equal to n)", "best_of")
    check_request(body, state.max_model_len)
    inputs = _prompt_inputs(body.prompt)
    state.check_sequences(len(inputs) * max(body.n or 1, 1))
    for text in inputs:
        if isinstance(text, str):
            state.check_text(text, "prompt")
    wanted_ids = requested_logprobs(body.logprob_token_ids, body.logprobs is not None,
                                    lambda: len(state.tokenizer), "logprobs")
    prompts = await state.run(_prepare, state, body, inputs, wanted_ids)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    if body.use_beam_search:
        if body.stream:
            raise bad_request("use_beam_search cannot be combined with stream", "use_beam_search")
        searches = start_beam_search(state, prompts, request_id, _FIELDS, body.length_penalty)
        finals = await cancel_on_disconnect(request, _collect(state, searches, prompts, beam=True))
    else:
        requests = state.submit(prompts, request_id, _FIELDS, renamed_fields(body))
        if body.stream:
            return sse_response(_stream(state, body, request_id, prompts, requests, wanted_ids), requests.abort)
        finals = await cancel_on_disconnect(request, _collect(state, requests, prompts, beam=False))
    if finals is None:
        return Response(status_code=499)  # the client is gone
    response = _response(state, body, request_id, prompts, finals, wanted_ids)
    return Response(response.model_dump_json(), media_type="application/json")


def _prompt_inputs(prompt: Union[None, str, list[str], list[int], list[list[int]]]) -> list[PromptInput]:
    if prompt is None or (isinstance(prompt, list) and not prompt):
        raise bad_request(_EMPTY, "prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]
    return list(prompt)  # type: ignore[arg-type]


def _prepare(state: ServerState, body: CompletionRequest, inputs: list[PromptInput],
             wanted_ids: Optional[RequestedLogprobs]) -> list[PreparedPrompt]:
    """Tokenize, truncate, check lengths and build SamplingParams (runs in a worker thread)."""
    prepared = []
    for prompt in inputs:
        text = prompt if isinstance(prompt, str) else None
        ids = state.tokenizer.encode(prompt, add_special_tokens=body.add_special_tokens) if text is not None \
            else list(prompt)
        truncated = truncate(ids, body, state.max_model_len)
        if truncated is not ids:
            text, ids = None, truncated
        if not ids:
            raise bad_request(_EMPTY, "prompt")
        check_context_length(len(ids), body.max_tokens, state.max_model_len, "prompt")
        logprobs = 0 if wanted_ids is not None and body.logprobs is not None else body.logprobs
        try:
            params = to_sampling_params(body, defaults=state.defaults, requested_max_tokens=body.max_tokens,
                                        prompt_len=len(ids), max_model_len=state.max_model_len,
                                        logprobs=logprobs, output_kind=output_kind_for(body))
            if body.echo and body.logprobs is not None and params.prompt_logprobs is None:
                params = params.updated(prompt_logprobs=body.logprobs)
            if wanted_ids is not None:
                params = params.updated(logits_processors=[wanted_ids])
        except (ValueError, TypeError) as exc:
            raise invalid_value(exc, _FIELDS) from None
        prepared.append(PreparedPrompt(text, ids, params))
    return prepared


async def _collect(state: ServerState, requests: EngineRequests, prompts: list[PreparedPrompt],
                   beam: bool) -> dict[int, RequestOutput]:
    finals = {}
    async for index, output in requests.outputs():
        if output.finished:
            finals[index] = as_request_output(state, prompts[index], output) if beam else output
            state.observe(finals[index], prompts[index].params)
    return finals


# ------------------------------------------------------------------------------------------- building
class _ChoiceBuilder:
    """Turns outputs of one prompt into choices; remembers text offsets, tokens and what was sent."""

    def __init__(self, state: ServerState, body: CompletionRequest, prompt: PreparedPrompt, n: int,
                 wanted_ids: Optional[RequestedLogprobs]):
        self.state, self.body, self.prompt, self.n, self.wanted_ids = state, body, prompt, n, wanted_ids
        self.name = TokenNamer(state.tokenizer, bool(body.return_tokens_as_token_ids
                                                     or state.options.return_tokens_as_token_ids))
        self.offsets = [0] * n
        self.tokens: list[list[int]] = [[] for _ in range(n)]  # generated so far, per completion
        self.started = [False] * n
        self.finished = [False] * n

    def prompt_text(self) -> str:
        return self.prompt.text if self.prompt.text is not None else self.state.tokenizer.decode(self.prompt.token_ids)

    def choice(self, base: int, output: RequestOutput, completion: CompletionOutput) -> Optional[CompletionChoice]:
        j = completion.index
        if self.finished[j]:
            return None
        first = not self.started[j]
        start = len(self.tokens[j])
        self.tokens[j].extend(completion.token_ids)
        text, token_ids, entries = completion.text, list(completion.token_ids), list(completion.logprobs or [])
        if self.wanted_ids is not None and entries:
            entries = self.wanted_ids.extended(self.tokens[j], [None] * start + entries)[start:]
        if self.body.echo and first:
            text = self.prompt_text() + text
            token_ids = self.prompt.token_ids + token_ids
            entries = list(output.prompt_logprobs or [None] * len(self.prompt.token_ids)) + entries
        finished = completion.finish_reason is not None
        detail = self.body.logprobs is not None or bool(self.body.return_token_ids)
        if not (text or finished or (token_ids and detail)):
            return None  # tokens whose text is still incomplete: wait for the text
        self.started[j], self.finished[j] = True, finished
        logprobs = None
        if self.body.logprobs is not None:
            logprobs = completion_logprobs(token_ids, entries, self.body.logprobs, self.name, self.offsets[j])
        self.offsets[j] += len(text)
        want_ids = bool(self.body.return_token_ids)
        return CompletionChoice(index=base + j, text=text, logprobs=logprobs, finish_reason=completion.finish_reason,
                                stop_reason=completion.stop_reason,
                                token_ids=list(completion.token_ids) if want_ids else None,
                                prompt_token_ids=self.prompt.token_ids if want_ids and first else None,
                                prompt_logprobs=prompt_logprobs(output.prompt_logprobs, self.name)
                                if first and self.body.prompt_logprobs is not None else None)


def _per_request_metrics(state: ServerState, prompts: list[PreparedPrompt],
                         final: Optional[RequestOutput]) -> Optional[dict]:
    """vLLM's per-request timings: with --enable-per-request-metrics, for one prompt and one completion."""
    if not state.options.enable_per_request_metrics or len(prompts) != 1 or prompts[0].params.n != 1:
        return None
    return timing_fields(final.metrics if final else None, len(final.outputs[0].token_ids) if final else 0)


def _response(state: ServerState, body: CompletionRequest, request_id: str, prompts: list[PreparedPrompt],
              finals: dict[int, RequestOutput], wanted_ids: Optional[RequestedLogprobs]) -> CompletionResponse:
    choices = []
    for i, prompt in enumerate(prompts):
        n = prompt.params.n
        builder = _ChoiceBuilder(state, body, prompt, n, wanted_ids)
        for completion in finals[i].outputs:
            choices.append(builder.choice(i * n, finals[i], completion))
    generated = sum(len(c.token_ids) for output in finals.values() for c in output.outputs)
    cached = sum(output.num_cached_tokens for output in finals.values())
    return CompletionResponse(id=request_id, model=state.model_name, choices=[c for c in choices if c],
                              usage=usage_info(state, sum(len(p.token_ids) for p in prompts), generated, cached),
                              metrics=_per_request_metrics(state, prompts, finals.get(0)))


async def _stream(state: ServerState, body: CompletionRequest, request_id: str, prompts: list[PreparedPrompt],
                  requests: EngineRequests,
                  wanted_ids: Optional[RequestedLogprobs]) -> AsyncIterator[CompletionResponse]:
    include_usage, continuous = usage_policy(body.stream_options, state.options.enable_force_include_usage)
    builders = [_ChoiceBuilder(state, body, p, p.params.n, wanted_ids) for p in prompts]
    created = int(time.time())
    generated = cached = 0
    final: Optional[RequestOutput] = None
    async for i, output in requests.outputs():
        builder = builders[i]
        for c in output.outputs:
            generated += len(c.token_ids)
            choice = builder.choice(i * builder.n, output, c)
            if choice is None:
                continue
            usage = usage_info(state, len(prompts[i].token_ids), len(builder.tokens[c.index]), None) \
                if continuous else None
            yield CompletionResponse(id=request_id, created=created, model=state.model_name, choices=[choice],
                                     usage=usage)
        if output.finished:
            cached += output.num_cached_tokens
            final = output
            state.observe(output, prompts[i].params)
    if include_usage:
        yield CompletionResponse(id=request_id, created=created, model=state.model_name, choices=[],
                                 usage=usage_info(state, sum(len(p.token_ids) for p in prompts), generated, cached),
                                 metrics=_per_request_metrics(state, prompts, final))
