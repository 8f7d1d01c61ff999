"""POST /v1/completions: one or many prompts (text or token ids), n choices each, plain or streamed.

Choice `i * n + j` is the j-th completion of prompt i, as in OpenAI and vLLM.
Streams send deltas (RequestOutputKind.DELTA); with `echo` the first delta of a
choice carries the prompt. A client that disconnects aborts its requests.
"""

from __future__ import annotations

import uuid
from typing import AsyncIterator, Optional, Union

from fastapi import APIRouter, Request
from starlette.responses import Response

from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.server.beam import run_beam_search
from nbllm.server.bridge import EngineRequests, PreparedPrompt, cancel_on_disconnect
from nbllm.server.errors import bad_request, invalid_value
from nbllm.server.logprobs import TokenNamer, completion_logprobs, prompt_logprobs
from nbllm.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse, UsageInfo
from nbllm.server.sampling import check_context_length, check_limits, output_kind_for, to_sampling_params
from nbllm.server.state import ServerState
from nbllm.server.streaming import sse_response

PromptInput = Union[str, list[int]]
_FIELDS = tuple(CompletionRequest.model_fields)


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", response_model=CompletionResponse)
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        state.check_model(body.model)
        if body.suffix is not None:
            raise bad_request("suffix is not supported", "suffix")
        check_limits(body, body.logprobs, "logprobs")
        prompts = await state.run(_prepare, state, body, _prompt_inputs(body.prompt))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if body.use_beam_search:
            if body.stream:
                raise bad_request("use_beam_search cannot be combined with stream", "use_beam_search")
            finals = await run_beam_search(state, body, prompts)
            return _json(_response(state, body, request_id, prompts, finals))
        requests = state.submit(prompts, request_id, _FIELDS)
        if body.stream:
            return sse_response(_stream(state, body, request_id, prompts, requests), requests.abort)
        finals = await cancel_on_disconnect(request, _collect(requests))
        if finals is None:
            return Response(status_code=499)  # the client is gone
        return _json(_response(state, body, request_id, prompts, finals))

    return router


def _json(response: CompletionResponse) -> Response:
    return Response(response.model_dump_json(), media_type="application/json")


def _prompt_inputs(prompt: Union[str, list[str], list[int], list[list[int]]]) -> list[PromptInput]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", "prompt")
    if isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]
    return list(prompt)  # type: ignore[arg-type]


def _prepare(state: ServerState, body: CompletionRequest, inputs: list[PromptInput]) -> list[PreparedPrompt]:
    """Tokenize, check lengths and build SamplingParams (runs in a worker thread)."""
    prepared = []
    for prompt in inputs:
        text = prompt if isinstance(prompt, str) else None
        ids = state.tokenizer.encode(prompt, add_special_tokens=body.add_special_tokens) if text is not None \
            else list(prompt)
        if not ids:
            raise bad_request("prompt is empty: it must contain at least one token", "prompt")
        check_context_length(len(ids), body.max_tokens, state.max_model_len, "prompt")
        try:
            params = to_sampling_params(body, defaults=state.defaults, requested_max_tokens=body.max_tokens,
                                        prompt_len=len(ids), max_model_len=state.max_model_len,
                                        logprobs=body.logprobs, output_kind=output_kind_for(body))
            if body.echo and body.logprobs is not None and params.prompt_logprobs is None:
                params = params.updated(prompt_logprobs=body.logprobs)
        except (ValueError, TypeError) as exc:
            raise invalid_value(exc, _FIELDS) from None
        prepared.append(PreparedPrompt(text, ids, params))
    return prepared


async def _collect(requests: EngineRequests) -> dict[int, RequestOutput]:
    finals = {}
    async for index, output in requests.outputs():
        if output.finished:
            finals[index] = output
    return finals


# ------------------------------------------------------------------------------------------- building
class _ChoiceBuilder:
    """Turns outputs of one prompt into choices; remembers text offsets and what was sent."""

    def __init__(self, state: ServerState, body: CompletionRequest, prompt: PreparedPrompt, n: int):
        self.state, self.body, self.prompt, self.n = state, body, prompt, n
        self.name = TokenNamer(state.tokenizer, bool(body.return_tokens_as_token_ids))
        self.offsets = [0] * n
        self.started = [False] * n
        self.finished = [False] * n

    def prompt_text(self) -> str:
        return self.prompt.text if self.prompt.text is not None else self.state.tokenizer.decode(self.prompt.token_ids)

    def choice(self, base: int, output: RequestOutput, completion: CompletionOutput) -> Optional[CompletionChoice]:
        j = completion.index
        if self.finished[j]:
            return None
        first = not self.started[j]
        text, token_ids, entries = completion.text, list(completion.token_ids), list(completion.logprobs or [])
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


def _usage(prompts: list[PreparedPrompt], completion_tokens: int, cached: int) -> UsageInfo:
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details={"cached_tokens": cached})


def _response(state: ServerState, body: CompletionRequest, request_id: str, prompts: list[PreparedPrompt],
              finals: dict[int, RequestOutput]) -> CompletionResponse:
    choices = []
    for i, prompt in enumerate(prompts):
        n = prompt.params.n
        builder = _ChoiceBuilder(state, body, prompt, n)
        for completion in finals[i].outputs:
            choices.append(builder.choice(i * n, finals[i], completion))
    generated = sum(len(c.token_ids) for output in finals.values() for c in output.outputs)
    cached = sum(output.num_cached_tokens for output in finals.values())
    return CompletionResponse(id=request_id, model=state.model_name, choices=[c for c in choices if c],
                              usage=_usage(prompts, generated, cached))


async def _stream(state: ServerState, body: CompletionRequest, request_id: str, prompts: list[PreparedPrompt],
                  requests: EngineRequests) -> AsyncIterator[CompletionResponse]:
    builders = [_ChoiceBuilder(state, body, p, p.params.n) for p in prompts]
    generated = cached = 0
    async for i, output in requests.outputs():
        choices = [builders[i].choice(i * builders[i].n, output, c) for c in output.outputs]
        generated += sum(len(c.token_ids) for c in output.outputs)
        if output.finished:
            cached += output.num_cached_tokens
        if any(choices):
            yield CompletionResponse(id=request_id, model=state.model_name, choices=[c for c in choices if c])
    if body.stream_options and body.stream_options.include_usage:
        yield CompletionResponse(id=request_id, model=state.model_name, choices=[],
                                 usage=_usage(prompts, generated, cached))
