"""RemoteLLM: the EngineClient contract over an OpenAI-compatible server (`nbllm serve`, or vLLM on a GPU cluster).

Connecting probes the server once (probe.py): its model, context window and what it
offers become `capabilities` and cached properties, so nothing here does network I/O
to answer what it is, and a dead URL or a wrong key raises RemoteError at once.
Each request is one HTTP call (n calls of one choice for a server that answers one
choice per call) from a pool shared by the whole RemoteLLM, so at most
`max_concurrency` run at once however many callers (a chat panel, a DataFrame job)
submit. Request ids are chosen here, so `abort` works from the moment `submit`
returns. generate/stream/chat are nbllm.batch's, over `submit`: a row that fails
for good comes back finished with finish_reason "error" and the message as
stop_reason, while a wrong key or model name, which would fail every row alike,
raises RemoteError. vLLM's extra sampling options sent to a server that is neither
vLLM nor nbllm are sent, with one warning per option; logprobs asked of a server that
offers none (`capabilities.logprobs`) warn once too, and outputs carry logprobs=None.
Imports neither torch nor the server.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterator, Optional, Sequence, Union

import httpx

from nbllm import batch
from nbllm.chat_utils import load_chat_template, validate_conversation
from nbllm.client.http import RetryingClient
from nbllm.client.probe import ServerInfo, probe
from nbllm.client.prometheus_text import snapshot_from_text
from nbllm.client.request import Call, RemoteRequest
from nbllm.client.usage_stats import UsageCounter
from nbllm.client.wire import OutputBuilder, request_fields, vllm_only_fields
from nbllm.inputs import ParamsType, PromptsType, PromptType, conversations_of, params_per_prompt, parse_prompt
from nbllm.metrics import MetricsSnapshot
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.protocol import Conversation, EngineCapabilities, Messages
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from nbllm.streams import Deliver, RequestStream

_COMPLETIONS, _CHAT = "/v1/completions", "/v1/chat/completions"


class RemoteLLM:
    """e.g. ``RemoteLLM("http://gpu-node:8000/v1")``; `model` defaults to the server's first model.

    Construction connects: RemoteError if the server cannot be reached or refuses the key.
    Calls that are not generation (the model list, /tokenize, /metrics) bypass the
    concurrency bound, so a monitor is never stuck behind long generations.
    """

    def __init__(self, base_url: str, model: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 60.0, max_concurrency: int = 8, max_retries: int = 3,
                 retry_backoff_s: float = 0.5, transport: Optional[httpx.BaseTransport] = None):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        root = base_url.rstrip("/")
        self.base_url = root[:-3] if root.endswith("/v1") else root
        self.max_concurrency = max_concurrency
        self._http = RetryingClient(self.base_url, api_key, timeout, max_retries, retry_backoff_s,
                                    max_connections=2 * max_concurrency + 4, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="nbllm-remote")
        self._requests: dict[str, RemoteRequest] = {}  # the unfinished, by id
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:8]
        self._last_scrape: Optional[tuple[float, int]] = None
        self._usage = UsageCounter()
        self._warned: set[str] = set()  # options already warned about (see _warn_unoffered)
        try:
            self.server: ServerInfo = probe(self._http, model)
        except BaseException:
            self._pool.shutdown(wait=False)
            self._http.close()
            raise

    # ----------------------------------------------------------------- what it is
    @property
    def model_name(self) -> str:
        return self.server.model

    @property
    def max_model_len(self) -> Optional[int]:
        return self.server.max_model_len

    @property
    def is_running(self) -> bool:
        return not self._closed

    @property
    def capabilities(self) -> EngineCapabilities:
        return self.server.capabilities

    def get_tokenizer(self) -> "RemoteTokenizer":
        if not self.capabilities.tokenizer:
            raise NotImplementedError(f"{self.base_url} has no /tokenize and /detokenize of vLLM's kind "
                                      f"(capabilities.tokenizer is False)")
        return RemoteTokenizer(self._http, self.model_name)

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's defaults: a server does not say what its model's generation_config holds."""
        return SamplingParams()

    # ----------------------------------------------------------------- requests
    def submit(self, prompt: PromptType, sampling_params: Optional[SamplingParams] = None,
               request_id: Optional[str] = None, deliver: Optional[Deliver] = None) -> RequestStream:
        """Start one completion now (bad input raises here); its outputs follow sampling_params.output_kind."""
        parsed = parse_prompt(prompt)
        params = self._params(sampling_params)
        payload = parsed.token_ids if parsed.token_ids is not None else parsed.text
        return self._start(_COMPLETIONS, {"prompt": payload}, parsed.text, params, request_id, deliver)

    def submit_chat(self, messages: Conversation, sampling_params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, deliver: Optional[Deliver] = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> RequestStream:
        """Start one chat reply now through /v1/chat/completions (the server renders its template)."""
        validate_conversation(messages)
        fields = _template_fields(chat_template, add_generation_prompt, continue_final_message, chat_template_kwargs,
                                  tools)
        return self._start(_CHAT, {"messages": list(messages), **fields}, None, self._params(sampling_params),
                           request_id, deliver)

    def abort(self, request_id: Union[str, Sequence[str]]) -> None:
        """Finish these requests now with finish_reason "abort" and close their HTTP streams (unknown ids are
        ignored); the server aborts a request whose stream closes. A non-streamed request (FINAL_ONLY) is
        dropped here but runs to its end on the server."""
        with self._lock:
            requests = [self._requests.pop(rid, None)
                        for rid in ([request_id] if isinstance(request_id, str) else request_id)]
        for request in requests:
            if request is not None:
                request.abort()

    def generate(self, prompts: PromptsType, sampling_params: ParamsType = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Completions for all prompts, in input order; failed rows have finish_reason "error"."""
        return batch.generate(self, prompts, sampling_params, use_tqdm)

    def stream(self, prompts: PromptsType, sampling_params: ParamsType = None) -> Iterator[RequestOutput]:
        """Outputs as they arrive (any order across prompts); closing it aborts on the server."""
        return batch.stream(self, prompts, sampling_params)

    def chat(self, messages: Messages, sampling_params: ParamsType = None, use_tqdm: bool = True,
             chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
             tools: Optional[list[dict]] = None) -> list[RequestOutput]:
        """Replies to one conversation or a list of them; the server renders its chat template."""
        started = self._submit_chats(messages, sampling_params, True, dict(
            chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, chat_template_kwargs=chat_template_kwargs, tools=tools))
        return batch.collect(started, use_tqdm)

    def stream_chat(self, messages: Messages, sampling_params: ParamsType = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None,
                    tools: Optional[list[dict]] = None) -> Iterator[RequestOutput]:
        """Like chat(), streamed as stream() is."""
        started = self._submit_chats(messages, sampling_params, False, dict(
            chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, chat_template_kwargs=chat_template_kwargs, tools=tools))
        return batch.outputs_of(batch.drain(started))

    def render_chat_prompts(self, messages: Messages, chat_template: Optional[str] = None,
                            add_generation_prompt: bool = True, continue_final_message: bool = False,
                            chat_template_kwargs: Optional[dict] = None,
                            tools: Optional[list[dict]] = None) -> list[dict]:
        """Conversations rendered by the server's chat template (its /tokenize), as prompt dicts for submit."""
        if not self.capabilities.tokenizer:
            raise NotImplementedError(f"{self.base_url} has no /tokenize to render chat templates with "
                                      f"(capabilities.tokenizer is False); use chat() or submit_chat()")
        fields = _template_fields(chat_template, add_generation_prompt, continue_final_message, chat_template_kwargs,
                                  tools)
        prompts = []
        for conversation in conversations_of(messages):
            validate_conversation(conversation)
            body = {"model": self.model_name, "messages": list(conversation), **fields}
            ids = self._http.call("POST", "/tokenize", body).json()["tokens"]
            prompts.append({"prompt_token_ids": ids, "prompt": self.get_tokenizer().decode(ids)})
        return prompts

    def beam_search(self, prompts: PromptsType, params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """Not offered: see `capabilities.beam_search`."""
        raise NotImplementedError(f"{self.base_url}: beam search is not offered over HTTP by RemoteLLM "
                                  "(capabilities.beam_search is False); run it with a local nbllm.LLM")

    def submit_beam_search(self, prompt: PromptType, params: BeamSearchParams, request_id: Optional[str] = None,
                           deliver: Optional[Deliver] = None) -> RequestStream:
        """Not offered: see `capabilities.beam_search`."""
        raise NotImplementedError(f"{self.base_url}: beam search is not offered over HTTP by RemoteLLM "
                                  "(capabilities.beam_search is False); run it with a local nbllm.LLM")

    # ----------------------------------------------------------------- stats and lifetime
    def get_stats(self) -> MetricsSnapshot:
        """The server's /metrics as a snapshot (per-block detail stays empty); tokens/s between two calls.

        A server without vLLM's /metrics (capabilities.metrics False): this client's own requests and
        the token counts of their `usage`, with the server-side fields left empty.
        """
        if not self.capabilities.metrics:
            with self._lock:
                running = len(self._requests)
            return self._usage.snapshot(running)
        snapshot = snapshot_from_text(self._http.call("GET", "/metrics").text)
        with self._lock:
            previous, self._last_scrape = self._last_scrape, (snapshot.timestamp, snapshot.generation_tokens_total)
        if previous is not None and snapshot.timestamp > previous[0]:
            rate = (snapshot.generation_tokens_total - previous[1]) / (snapshot.timestamp - previous[0])
            snapshot = replace(snapshot, tokens_per_second=max(rate, 0.0))
        return snapshot

    def shutdown(self) -> None:
        """Abort what is unfinished and close the connections."""
        with self._lock:
            self._closed = True
            unfinished = list(self._requests)
        self.abort(unfinished)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> "RemoteLLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ----------------------------------------------------------------- internals
    def _params(self, sampling_params: Optional[SamplingParams]) -> SamplingParams:
        if sampling_params is None:
            return self.get_default_sampling_params()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(sampling_params).__name__}")
        return sampling_params

    def _start(self, path: str, payload: dict[str, Any], prompt: Optional[str], params: SamplingParams,
               request_id: Optional[str], deliver: Optional[Deliver]) -> RequestStream:
        kind = params.output_kind
        streamed = kind != RequestOutputKind.FINAL_ONLY
        body = {"model": self.model_name, **payload, "stream": streamed, **request_fields(params, chat=path == _CHAT)}
        if streamed:
            body["stream_options"] = {"include_usage": True}
        self._warn_unoffered(body, params)
        calls = [Call(path, body)]
        if params.n > 1 and not self.server.multiple_choices:  # ask once per choice
            seed = params.seed
            calls = [Call(path, {**body, "n": 1, **({"seed": seed + i} if seed is not None else {})})
                     for i in range(params.n)]
        with self._lock:
            if self._closed:
                raise RuntimeError(f"this RemoteLLM for {self.base_url} is shut down")
            request_id = request_id or f"remote-{self._id_prefix}-{next(self._ids)}"
            if request_id in self._requests:
                raise ValueError(f"request id {request_id!r} is already running")
            stream = RequestStream(request_id, deliver, on_close=self.abort)
            builder = OutputBuilder(request_id, prompt, params.n,
                                    params.logprobs is not None and self.capabilities.logprobs)
            request = self._requests[request_id] = RemoteRequest(calls, builder, kind, stream, self._usage.record)
            self._pool.submit(self._run, request)
        return stream

    def _warn_unoffered(self, body: dict[str, Any], params: SamplingParams) -> None:
        """One warning per option this server will not honour: a vLLM-only option sent to a server that is
        neither vLLM nor nbllm, and logprobs asked of a server that returns none keyed by token id."""
        messages = {} if self.server.vllm_compatible else {
            name: f"{name} is a vLLM option; {self.base_url} (owned_by {self.server.owned_by!r}) is not vLLM "
                  f"or nbllm and may ignore it" for name in vllm_only_fields(body)}
        if params.logprobs is not None and not self.capabilities.logprobs:
            messages["logprobs"] = (f"logprobs are not offered by {self.base_url} (no logprobs keyed by token id: "
                                    f"capabilities.logprobs is False); outputs carry logprobs=None")
        with self._lock:
            new = [name for name in messages if name not in self._warned]
            self._warned.update(new)
        for name in new:
            warnings.warn(messages[name], UserWarning, stacklevel=4)

    def _run(self, request: RemoteRequest) -> None:
        try:
            request.run(self._http)
        finally:
            with self._lock:
                if self._requests.get(request.request_id) is request:
                    del self._requests[request.request_id]

    def _submit_chats(self, messages: Messages, sampling_params: ParamsType, final_only: bool,
                      template_options: dict[str, Any]) -> batch.Batch:
        conversations = conversations_of(messages)
        for conversation in conversations:
            validate_conversation(conversation)
        params = params_per_prompt(sampling_params, len(conversations), self.get_default_sampling_params)
        if final_only:
            params = [p.updated(output_kind=RequestOutputKind.FINAL_ONLY) for p in params]
        return batch.submit_all(self, len(conversations), lambda i, deliver: self.submit_chat(
            conversations[i], params[i], deliver=deliver, **template_options))


class RemoteTokenizer:
    """encode/decode through the server's /tokenize and /detokenize (vLLM and nbllm serve both have them)."""

    def __init__(self, http: RetryingClient, model: str):
        self._http, self._model = http, model

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": add_special_tokens}
        return self._http.call("POST", "/tokenize", body).json()["tokens"]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The server's detokenization (it decides about special tokens)."""
        body = {"model": self._model, "tokens": list(token_ids)}
        return self._http.call("POST", "/detokenize", body).json()["prompt"]


def _template_fields(chat_template: Optional[str], add_generation_prompt: bool, continue_final_message: bool,
                     chat_template_kwargs: Optional[dict], tools: Optional[list[dict]]) -> dict[str, Any]:
    """The chat-template fields of a request, beside their defaults only."""
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message=True and add_generation_prompt=True cannot be combined: "
                         "continuing the last message means no new assistant turn is opened")
    fields: dict[str, Any] = {}
    if chat_template is not None:  # sent inline, so shipped names and local files work with any server
        fields["chat_template"] = load_chat_template(chat_template)
    if not add_generation_prompt:
        fields["add_generation_prompt"] = False
    if continue_final_message:
        fields["continue_final_message"] = True
    if chat_template_kwargs:
        fields["chat_template_kwargs"] = chat_template_kwargs
    if tools:
        fields["tools"] = tools
    return fields

