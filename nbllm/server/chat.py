"""POST /v1/chat/completions: one conversation, rendered by the chat template, n replies.

Streams open each choice with a `{"role": "assistant"}` delta, then send content
deltas; the last delta of a choice carries finish_reason and stop_reason. Only
text content is supported; a request's chat_template must be inline Jinja or the
name of a shipped template (never a path: clients must not read server files).
"""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator, Optional

import jinja2
from fastapi import APIRouter, Request
from starlette.responses import Response

from nbllm.chat_utils import SHIPPED_TEMPLATES
from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.server.beam import run_beam_search
from nbllm.server.bridge import EngineRequests, PreparedPrompt, cancel_on_disconnect
from nbllm.server.errors import bad_request, invalid_value
from nbllm.server.logprobs import TokenNamer, chat_logprobs, prompt_logprobs
from nbllm.server.protocol import (ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
                                   ChatLogProbs, ChatMessage, ChatMessageParam, ChatStreamChoice, ChatTemplateFields, DeltaMessage,
                                   UsageInfo)
from nbllm.server.sampling import check_context_length, check_limits, output_kind_for, to_sampling_params
from nbllm.server.state import ServerState
from nbllm.server.streaming import sse_response

_FIELDS = tuple(ChatCompletionRequest.model_fields)
_ROLE = "assistant"


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        state.check_model(body.model)
        num_top = _num_top_logprobs(body)
        check_limits(body, num_top, "top_logprobs")
        prompt = await state.run(_prepare, state, body, num_top)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.use_beam_search:
            if body.stream:
                raise bad_request("use_beam_search cannot be combined with stream", "use_beam_search")
            finals = await run_beam_search(state, body, [prompt])
            return _json(_response(state, body, request_id, prompt, finals[0], num_top))
        requests = state.submit([prompt], request_id, _FIELDS)
        if body.stream:
            return sse_response(_stream(state, body, request_id, prompt, requests, num_top), requests.abort)
        final = await cancel_on_disconnect(request, _collect(requests))
        if final is None:
            return Response(status_code=499)  # the client is gone
        return _json(_response(state, body, request_id, prompt, final, num_top))

    return router


def _json(response: ChatCompletionResponse) -> Response:
    return Response(response.model_dump_json(), media_type="application/json")


def _num_top_logprobs(body: ChatCompletionRequest) -> Optional[int]:
    if body.top_logprobs is not None and body.top_logprobs < 0:
        raise bad_request(f"top_logprobs must be non-negative, got {body.top_logprobs}", "top_logprobs")
    if not body.logprobs:
        if body.top_logprobs:
            raise bad_request("top_logprobs needs logprobs to be true", "top_logprobs")
        return None
    return body.top_logprobs or 0


# ------------------------------------------------------------------------------------------- input
def message_dict(message: ChatMessageParam) -> dict[str, Any]:
    """A message as chat templates expect it: content as one string."""
    data = message.model_dump(exclude_none=True)
    content = message.content
    if content is None:
        data["content"] = ""
    elif not isinstance(content, str):
        unsupported = sorted({part.type for part in content if part.type != "text"})
        if unsupported:
            raise bad_request(f"only text content parts are supported, got {unsupported}", "messages")
        data["content"] = "\n".join(part.text or "" for part in content)
    return data


def render(state: ServerState, messages: list[ChatMessageParam], fields: ChatTemplateFields) -> dict[str, Any]:
    """The conversation rendered by the chat template: {"prompt", "prompt_token_ids"} (in a worker thread)."""
    template = fields.chat_template
    if template is not None and template not in SHIPPED_TEMPLATES and "{" not in template:
        raise bad_request(f"chat_template must be a Jinja template string or one of {SHIPPED_TEMPLATES}",
                          "chat_template")
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    conversation = [message_dict(m) for m in messages]
    try:
        [rendered] = state.llm.render_chat_prompts(conversation, template, fields.add_generation_prompt,
                                                   fields.continue_final_message, fields.chat_template_kwargs)
    except (ValueError, TypeError, jinja2.TemplateError) as exc:
        raise bad_request(f"the chat template could not render these messages: {exc}", "messages") from None
    return rendered


def _prepare(state: ServerState, body: ChatCompletionRequest, num_top: Optional[int]) -> PreparedPrompt:
    rendered = render(state, body.messages, body)
    ids = rendered["prompt_token_ids"]
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_context_length(len(ids), requested, state.max_model_len, "messages")
    try:
        params = to_sampling_params(body, defaults=state.defaults, requested_max_tokens=requested,
                                    prompt_len=len(ids), max_model_len=state.max_model_len, logprobs=num_top,
                                    output_kind=output_kind_for(body))
    except (ValueError, TypeError) as exc:
        raise invalid_value(exc, _FIELDS) from None
    return PreparedPrompt(rendered["prompt"], ids, params)


async def _collect(requests: EngineRequests) -> RequestOutput:
    final = None
    async for _, output in requests.outputs():
        final = output
    if final is None:
        raise RuntimeError("the engine ended the request without an output")
    return final


# ------------------------------------------------------------------------------------------- output
def _usage(prompt: PreparedPrompt, completion_tokens: int, cached: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=len(prompt.token_ids), completion_tokens=completion_tokens,
                     total_tokens=len(prompt.token_ids) + completion_tokens,
                     prompt_tokens_details={"cached_tokens": cached})


def _namer(state: ServerState, body: ChatCompletionRequest) -> TokenNamer:
    return TokenNamer(state.tokenizer, bool(body.return_tokens_as_token_ids))


def _logprobs(name: TokenNamer, completion: CompletionOutput, num_top: Optional[int]) -> Optional[ChatLogProbs]:
    if num_top is None:
        return None
    return chat_logprobs(completion.token_ids, completion.logprobs or [], num_top, name)


def _response(state: ServerState, body: ChatCompletionRequest, request_id: str, prompt: PreparedPrompt,
              final: RequestOutput, num_top: Optional[int]) -> ChatCompletionResponse:
    want_ids = bool(body.return_token_ids)
    name = _namer(state, body)
    choices = [ChatChoice(index=c.index, message=ChatMessage(role=_ROLE, content=c.text),
                          logprobs=_logprobs(name, c, num_top), finish_reason=c.finish_reason,
                          stop_reason=c.stop_reason, token_ids=list(c.token_ids) if want_ids else None)
               for c in final.outputs]
    generated = sum(len(c.token_ids) for c in final.outputs)
    return ChatCompletionResponse(id=request_id, model=state.model_name, choices=choices,
                                  usage=_usage(prompt, generated, final.num_cached_tokens),
                                  prompt_token_ids=prompt.token_ids if want_ids else None,
                                  prompt_logprobs=prompt_logprobs(final.prompt_logprobs, name)
                                  if body.prompt_logprobs is not None else None)


async def _stream(state: ServerState, body: ChatCompletionRequest, request_id: str, prompt: PreparedPrompt,
                  requests: EngineRequests, num_top: Optional[int]) -> AsyncIterator[ChatCompletionChunk]:
    n = prompt.params.n
    want_ids = bool(body.return_token_ids)
    detail = want_ids or num_top is not None  # tokens whose text is still incomplete are worth a chunk
    name = _namer(state, body)

    def chunk(choices: list[ChatStreamChoice], **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=request_id, model=state.model_name, choices=choices, **extra)

    finished = [False] * n
    generated = cached = 0
    yield chunk([ChatStreamChoice(index=i, delta=DeltaMessage(role=_ROLE, content="")) for i in range(n)],
                prompt_token_ids=prompt.token_ids if want_ids else None)
    async for _, output in requests.outputs():
        choices = []
        for c in output.outputs:
            generated += len(c.token_ids)
            if finished[c.index] or not (c.text or c.finish_reason or (c.token_ids and detail)):
                continue
            finished[c.index] = c.finish_reason is not None
            choices.append(ChatStreamChoice(index=c.index, delta=DeltaMessage(content=c.text),
                                            logprobs=_logprobs(name, c, num_top), finish_reason=c.finish_reason,
                                            stop_reason=c.stop_reason,
                                            token_ids=list(c.token_ids) if want_ids else None))
        if output.finished:
            cached = output.num_cached_tokens
        if choices:
            yield chunk(choices)
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=_usage(prompt, generated, cached))
