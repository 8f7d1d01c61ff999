"""POST /v1/chat/completions: one conversation, rendered by the chat template, n replies.

Streams open each choice with a `{"role": "assistant"}` delta (then, with `echo`, the
final assistant message being continued), then send content deltas; the last delta
of a choice carries finish_reason and stop_reason. Only text content is supported.
A request's own `chat_template` is refused unless the server trusts request templates
(vLLM's --trust-request-chat-template); any template renders under a time and memory
limit (chat_render.py). Tools are shown to the template only with tool_choice "none":
this server parses no tool calls, so it refuses what would need it, as vLLM does
without a tool parser.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from starlette.responses import Response

from nbllm.chat_utils import SHIPPED_TEMPLATES
from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.server.beam import as_request_output, start_beam_search
from nbllm.server.bridge import EngineRequests, PreparedPrompt, cancel_on_disconnect
from nbllm.server.chat_render import RenderJob
from nbllm.server.errors import OpenAIError, bad_request, invalid_value
from nbllm.server.logprob_ids import RequestedLogprobs, requested_logprobs
from nbllm.server.logprobs import TokenNamer, chat_logprobs, prompt_logprobs
from nbllm.server.protocol import ChatCompletionRequest, ChatMessageParam, ChatTemplateFields
from nbllm.server.request_stats import timing_fields
from nbllm.server.responses import (ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChatLogProbs,
                                    ChatMessage, ChatStreamChoice, DeltaMessage)
from nbllm.server.sampling import (check_context_length, check_request, output_kind_for, renamed_fields,
                                   to_sampling_params, truncate)
from nbllm.server.state import ServerState
from nbllm.server.streaming import sse_response, usage_policy
from nbllm.server.usage import usage_info

_FIELDS = tuple(ChatCompletionRequest.model_fields)
_ROLE = "assistant"
_UNSUPPORTED = {"functions": "functions (use tools)", "function_call": "function_call (use tool_choice)",
                "audio": "audio output", "web_search_options": "web search"}


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat_completion(state, body, request)

    return router


async def chat_completion(state: ServerState, body: ChatCompletionRequest, request: Request) -> Response:
    state.check_model(body.model)
    state.check_accepting()
    _check_unsupported(body)
    check_request(body, state.max_model_len)
    num_top = _num_top_logprobs(body)
    state.check_sequences(max(body.n or 1, 1))
    wanted_ids = requested_logprobs(body.logprob_token_ids, bool(body.logprobs), lambda: len(state.tokenizer),
                                    "logprobs")
    text, ids = await render(state, body.messages, body)
    prompt = await state.run(_prepare, state, body, text, ids, num_top, wanted_ids)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.use_beam_search:
        if body.stream:
            raise bad_request("use_beam_search cannot be combined with stream", "use_beam_search")
        requests = start_beam_search(state, [prompt], request_id, _FIELDS, body.length_penalty)
    else:
        requests = state.submit([prompt], request_id, _FIELDS, {"logprobs": "top_logprobs", **renamed_fields(body)})
        if body.stream:
            return sse_response(_stream(state, body, request_id, prompt, requests, num_top, wanted_ids),
                                requests.abort)
    final = await cancel_on_disconnect(request, _collect(state, requests, prompt, body.use_beam_search))
    if final is None:
        return Response(status_code=499)  # the client is gone
    response = _response(state, body, request_id, prompt, final, num_top, wanted_ids)
    return Response(response.model_dump_json(), media_type="application/json")


def _check_unsupported(body: ChatCompletionRequest) -> None:
    for name, what in _UNSUPPORTED.items():
        if getattr(body, name) is not None:
            raise bad_request(f"{what} is not supported by this server", name)
    if body.modalities is not None and set(body.modalities) - {"text"}:
        raise bad_request(f"only text output is supported, got modalities {body.modalities}", "modalities")
    check_tools(body)


def check_tools(fields: ChatTemplateFields) -> None:
    """vLLM's rules without a tool parser: tools reach the template only with tool_choice "none"."""
    choice = fields.tool_choice
    if choice == "none":
        return
    if choice is not None and not fields.tools:
        raise bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if fields.tools:
        shown = choice if choice is not None else "auto"
        raise bad_request(f'tool_choice "{shown}" (the default when tools are given is "auto") needs a tool-call '
                          f'parser, which this server does not have; send tool_choice "none" to show the tools to '
                          f'the chat template without parsing calls', "tool_choice")


def _num_top_logprobs(body: ChatCompletionRequest) -> Optional[int]:
    if body.top_logprobs is not None and body.top_logprobs < -1:
        raise bad_request(f"top_logprobs must be non-negative, or -1 for the whole vocabulary, got "
                          f"{body.top_logprobs}", "top_logprobs")
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


async def render(state: ServerState, messages: list[ChatMessageParam],
                 fields: ChatTemplateFields) -> tuple[str, list[int]]:
    """The conversation rendered by the chat template, and its token ids (limits checked first)."""
    template = fields.chat_template
    kwargs = dict(fields.chat_template_kwargs or {})
    if "chat_template" in kwargs:
        if template is not None:
            raise bad_request("give chat_template once, not also in chat_template_kwargs", "chat_template")
        template = kwargs.pop("chat_template")
    if template is not None:
        if not isinstance(template, str) or (template not in SHIPPED_TEMPLATES and "{" not in template):
            raise bad_request(f"chat_template must be a Jinja template string or one of {SHIPPED_TEMPLATES}",
                              "chat_template")
        if template not in SHIPPED_TEMPLATES and not state.options.trust_request_chat_template:
            raise bad_request("Chat template is passed with request, but --trust-request-chat-template is not set. "
                              "Refused request with untrusted chat template.", "chat_template")
    if not messages:
        raise bad_request("messages must not be empty", "messages")
    if len(messages) > state.options.max_messages:
        raise bad_request(f"this request has {len(messages)} messages, more than the server's limit of "
                          f"{state.options.max_messages} (nbllm serve --max-messages)", "messages")
    conversation = [message_dict(m) for m in messages]
    state.check_text("".join(str(m["content"]) for m in conversation), "messages")
    job = RenderJob(conversation, template, fields.add_generation_prompt, fields.continue_final_message,
                    kwargs or None, fields.tools if fields.tool_choice == "none" else None)
    try:
        return await state.render_chat(job)
    except (ValueError, TypeError) as exc:  # the engine's own rendering (a remote engine): its checks
        raise bad_request(f"the chat template could not render these messages: {exc}", "messages") from None


def _prepare(state: ServerState, body: ChatCompletionRequest, text: str, ids: list[int], num_top: Optional[int],
             wanted_ids: Optional[RequestedLogprobs]) -> PreparedPrompt:
    truncated = truncate(ids, body, state.max_model_len)
    if truncated is not ids:
        text, ids = state.tokenizer.decode(truncated), truncated
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_context_length(len(ids), requested, state.max_model_len, "messages")
    try:
        params = to_sampling_params(body, defaults=state.defaults, requested_max_tokens=requested,
                                    prompt_len=len(ids), max_model_len=state.max_model_len,
                                    logprobs=0 if wanted_ids is not None else num_top,
                                    output_kind=output_kind_for(body))
        if wanted_ids is not None:
            params = params.updated(logits_processors=[wanted_ids])
    except (ValueError, TypeError) as exc:
        error = invalid_value(exc, _FIELDS)
        raise OpenAIError(400, error.message, "top_logprobs" if error.param == "logprobs" else error.param) from None
    return PreparedPrompt(text, ids, params)


async def _collect(state: ServerState, requests: EngineRequests, prompt: PreparedPrompt, beam: bool) -> RequestOutput:
    final = None
    async for _, output in requests.outputs():
        if output.finished:
            final = as_request_output(state, prompt, output) if beam else output
            state.observe(final, prompt.params)
    if final is None:
        raise RuntimeError("the engine ended the request without an output")
    return final


# ------------------------------------------------------------------------------------------- output
def _echo(body: ChatCompletionRequest) -> str:
    """vLLM's chat echo: the last message's content when it is the assistant's (continue_final_message)."""
    if not body.echo or not body.messages or body.messages[-1].role != _ROLE:
        return ""
    return message_dict(body.messages[-1])["content"]


def _namer(state: ServerState, body: ChatCompletionRequest) -> TokenNamer:
    as_ids = body.return_tokens_as_token_ids or state.options.return_tokens_as_token_ids
    return TokenNamer(state.tokenizer, bool(as_ids))


def _logprobs(name: TokenNamer, completion: CompletionOutput, num_top: Optional[int],
              wanted_ids: Optional[RequestedLogprobs], before: list[int]) -> Optional[ChatLogProbs]:
    """Logprobs of the completion's new tokens; `before`: the tokens it generated earlier (streams)."""
    if num_top is None:
        return None
    entries = list(completion.logprobs or [])
    if wanted_ids is not None:
        entries = wanted_ids.extended(before + list(completion.token_ids), [None] * len(before) + entries)[len(before):]
    return chat_logprobs(completion.token_ids, entries, num_top, name)


def _per_request_metrics(state: ServerState, prompt: PreparedPrompt, final: Optional[RequestOutput]) -> Optional[dict]:
    if not state.options.enable_per_request_metrics or prompt.params.n != 1:
        return None
    return timing_fields(final.metrics if final else None, len(final.outputs[0].token_ids) if final else 0)


def _response(state: ServerState, body: ChatCompletionRequest, request_id: str, prompt: PreparedPrompt,
              final: RequestOutput, num_top: Optional[int],
              wanted_ids: Optional[RequestedLogprobs]) -> ChatCompletionResponse:
    want_ids = bool(body.return_token_ids)
    name = _namer(state, body)
    echo = _echo(body)
    choices = [ChatChoice(index=c.index, message=ChatMessage(role=_ROLE, content=echo + c.text),
                          logprobs=_logprobs(name, c, num_top, wanted_ids, []), finish_reason=c.finish_reason,
                          stop_reason=c.stop_reason, token_ids=list(c.token_ids) if want_ids else None)
               for c in final.outputs]
    generated = sum(len(c.token_ids) for c in final.outputs)
    return ChatCompletionResponse(id=request_id, model=state.model_name, choices=choices,
                                  usage=usage_info(state, len(prompt.token_ids), generated, final.num_cached_tokens),
                                  prompt_token_ids=prompt.token_ids if want_ids else None,
                                  prompt_logprobs=prompt_logprobs(final.prompt_logprobs, name)
                                  if body.prompt_logprobs is not None else None,
                                  metrics=_per_request_metrics(state, prompt, final))


async def _stream(state: ServerState, body: ChatCompletionRequest, request_id: str, prompt: PreparedPrompt,
                  requests: EngineRequests, num_top: Optional[int],
                  wanted_ids: Optional[RequestedLogprobs]) -> AsyncIterator[ChatCompletionChunk]:
    n = prompt.params.n
    want_ids = bool(body.return_token_ids)
    detail = want_ids or num_top is not None  # tokens whose text is still incomplete are worth a chunk
    name = _namer(state, body)
    include_usage, continuous = usage_policy(body.stream_options, state.options.enable_force_include_usage)
    created = int(time.time())
    tokens: list[list[int]] = [[] for _ in range(n)]
    prompt_len = len(prompt.token_ids)

    def chunk(choices: list[ChatStreamChoice], completion_tokens: Optional[int] = None,
              **extra: Any) -> ChatCompletionChunk:
        usage = usage_info(state, prompt_len, completion_tokens, None) \
            if continuous and completion_tokens is not None else None
        return ChatCompletionChunk(id=request_id, created=created, model=state.model_name, choices=choices,
                                   usage=usage, **extra)

    for i in range(n):
        yield chunk([ChatStreamChoice(index=i, delta=DeltaMessage(role=_ROLE, content=""))], 0,
                    prompt_token_ids=prompt.token_ids if want_ids and i == 0 else None)
    echo = _echo(body)
    if echo:
        for i in range(n):
            yield chunk([ChatStreamChoice(index=i, delta=DeltaMessage(content=echo))], 0)
    finished = [False] * n
    generated = cached = 0
    final: Optional[RequestOutput] = None
    async for _, output in requests.outputs():
        for c in output.outputs:
            before = list(tokens[c.index])
            tokens[c.index].extend(c.token_ids)
            generated += len(c.token_ids)
            if finished[c.index] or not (c.text or c.finish_reason or (c.token_ids and detail)):
                continue
            finished[c.index] = c.finish_reason is not None
            choice = ChatStreamChoice(index=c.index, delta=DeltaMessage(content=c.text),
                                      logprobs=_logprobs(name, c, num_top, wanted_ids, before),
                                      finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                                      token_ids=list(c.token_ids) if want_ids else None)
            yield chunk([choice], len(tokens[c.index]))
        if output.finished:
            cached, final = output.num_cached_tokens, output
            state.observe(output, prompt.params)
    if include_usage:
        yield ChatCompletionChunk(id=request_id, created=created, model=state.model_name, choices=[],
                                  usage=usage_info(state, prompt_len, generated, cached),
                                  metrics=_per_request_metrics(state, prompt, final))
