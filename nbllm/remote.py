"""RemoteLLM: LLM's interface over an OpenAI-compatible server (`nbllm serve`, or vLLM on a GPU cluster).

`generate`/`chat` send one request per prompt, at most `max_concurrency` at once,
retrying 429, 5xx and refused connections with exponential backoff (honouring
Retry-After); a timeout is not retried. A row that still fails does not lose the
batch: it comes back finished, each completion with finish_reason "error", empty
text and the error message as `stop_reason`. A wrong key or model name would fail
every row alike, so it raises RemoteError. `stream`/`stream_chat` read server-sent
events and yield cumulative RequestOutputs as LLM.stream does; closing the iterator
closes the HTTP streams, and the server aborts those requests. Needs the `server` extra.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional, Sequence, Union

import httpx

from nbllm.chat_utils import is_single_conversation, load_chat_template, validate_conversation
from nbllm.metrics import MetricsSnapshot
from nbllm.outputs import RequestOutput
from nbllm.sampling_params import SamplingParams
from nbllm.server.client_http import RemoteError, RetryingClient, RowError, sse_events
from nbllm.server.client_protocol import OutputBuilder, request_fields
from nbllm.server.prometheus import snapshot_from_text

PromptType = Union[str, dict]
Params = Union[None, SamplingParams, Sequence[SamplingParams]]
_POLL_S = 0.05

__all__ = ["RemoteLLM", "RemoteError", "RemoteTokenizer"]


@dataclass
class _Row:
    path: str
    body: dict[str, Any]
    prompt: Optional[str]
    n: int
    want_logprobs: bool

    def builder(self) -> OutputBuilder:
        return OutputBuilder(self.prompt, self.n, self.want_logprobs)


class RemoteLLM:
    """e.g. ``RemoteLLM("http://gpu-node:8000/v1")``; `model` defaults to the server's first model."""

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
        self._model = model
        self._card: Optional[dict] = None
        self._aborts: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._last_scrape: Optional[tuple[float, int]] = None

    # ----------------------------------------------------------------- basics
    @property
    def model_name(self) -> str:
        return self._model or self._model_card()["id"]

    @property
    def max_model_len(self) -> Optional[int]:
        return self._model_card().get("max_model_len")

    def _model_card(self) -> dict:
        if self._card is None:
            cards = self._http.call("GET", "/v1/models").json().get("data") or []
            if not cards:
                raise RemoteError(f"{self.base_url}/v1/models lists no model")
            named = [c for c in cards if c.get("id") == self._model]
            self._card = named[0] if named else ({"id": self._model} if self._model else cards[0])
        return self._card

    def get_tokenizer(self) -> "RemoteTokenizer":
        return RemoteTokenizer(self._http, self.model_name)

    def get_metrics(self) -> MetricsSnapshot:
        """The server's /metrics as a snapshot (per-block detail stays empty); tokens/s between two calls."""
        try:
            text = self._http.call("GET", "/metrics").text
        except RemoteError as exc:
            if exc.status == 404:
                raise NotImplementedError(f"{self.base_url} serves no /metrics, so it reports no metrics") from None
            raise
        snapshot = snapshot_from_text(text)
        previous, self._last_scrape = self._last_scrape, (snapshot.timestamp, snapshot.generation_tokens_total)
        if previous is not None and snapshot.timestamp > previous[0]:
            rate = (snapshot.generation_tokens_total - previous[1]) / (snapshot.timestamp - previous[0])
            snapshot = replace(snapshot, tokens_per_second=max(rate, 0.0))
        return snapshot

    # ----------------------------------------------------------------- generation
    def generate(self, prompts: Union[PromptType, Sequence[PromptType]], sampling_params: Params = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Completions for all prompts, in input order; failed rows have finish_reason "error"."""
        return self._run_rows(self._completion_rows(prompts, sampling_params, stream=False), use_tqdm)

    def chat(self, messages: Union[list[dict], list[list[dict]]], sampling_params: Params = None,
             use_tqdm: bool = True, chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None
             ) -> list[RequestOutput]:
        """Replies to one conversation or a list of them; the server renders its chat template."""
        rows = self._chat_rows(messages, sampling_params, False, chat_template, add_generation_prompt,
                               continue_final_message, chat_template_kwargs)
        return self._run_rows(rows, use_tqdm)

    def stream(self, prompts: Union[PromptType, Sequence[PromptType]],
               sampling_params: Params = None) -> Iterator[RequestOutput]:
        """Cumulative outputs as they arrive (any order across prompts); closing it aborts on the server."""
        return self._stream_rows(self._completion_rows(prompts, sampling_params, stream=True))

    def stream_chat(self, messages: Union[list[dict], list[list[dict]]], sampling_params: Params = None,
                    chat_template: Optional[str] = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None
                    ) -> Iterator[RequestOutput]:
        rows = self._chat_rows(messages, sampling_params, True, chat_template, add_generation_prompt,
                               continue_final_message, chat_template_kwargs)
        return self._stream_rows(rows)

    def abort(self, request_id: Union[str, Sequence[str]]) -> None:
        """Best effort: close the local stream of these requests (the server then aborts them)."""
        with self._lock:
            events = [self._aborts.get(rid) for rid in ([request_id] if isinstance(request_id, str) else request_id)]
        for event in events:
            if event is not None:
                event.set()

    # ----------------------------------------------------------------- lifetime
    def shutdown(self) -> None:
        self._http.close()

    @property
    def is_running(self) -> bool:
        return not self._http.is_closed

    def __enter__(self) -> "RemoteLLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ----------------------------------------------------------------- requests
    def _completion_rows(self, prompts: Any, sampling_params: Params, stream: bool) -> list[_Row]:
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        rows = []
        for prompt, params in zip(prompts, _params_per_row(sampling_params, len(prompts))):
            if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
                payload, text = list(prompt["prompt_token_ids"]), prompt.get("prompt")
            elif isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
                payload = text = prompt["prompt"]
            elif isinstance(prompt, str):
                payload = text = prompt
            else:
                raise TypeError(f"a prompt must be a str or a dict with 'prompt' or 'prompt_token_ids', got {prompt!r}")
            body = {"model": self.model_name, "prompt": payload, "stream": stream, **request_fields(params, False)}
            rows.append(_Row("/v1/completions", body, text, params.n if params else 1,
                             params is not None and params.logprobs is not None))
        return rows

    def _chat_rows(self, messages: Any, sampling_params: Params, stream: bool, chat_template: Optional[str],
                   add_generation_prompt: bool, continue_final_message: bool,
                   chat_template_kwargs: Optional[dict]) -> list[_Row]:
        conversations = [messages] if is_single_conversation(messages) else list(messages)
        extras: dict[str, Any] = {}
        if chat_template is not None:  # sent inline, so shipped names and local files work with any server
            extras["chat_template"] = load_chat_template(chat_template)
        if not add_generation_prompt:
            extras["add_generation_prompt"] = False
        if continue_final_message:
            extras["continue_final_message"] = True
        if chat_template_kwargs:
            extras["chat_template_kwargs"] = chat_template_kwargs
        rows = []
        for conversation, params in zip(conversations, _params_per_row(sampling_params, len(conversations))):
            validate_conversation(conversation)
            body = {"model": self.model_name, "messages": list(conversation), "stream": stream, **extras,
                    **request_fields(params, True)}
            rows.append(_Row("/v1/chat/completions", body, None, params.n if params else 1,
                             params is not None and params.logprobs is not None))
        return rows

    def _run_row(self, row: _Row) -> RequestOutput:
        builder = row.builder()
        try:
            builder.add(self._http.send("POST", row.path, row.body).json())
        except (RowError, ValueError) as exc:
            return builder.output(force_finish="error", reason=str(exc))
        return builder.output()

    def _run_rows(self, rows: list[_Row], use_tqdm: bool) -> list[RequestOutput]:
        results: list[Optional[RequestOutput]] = [None] * len(rows)
        bar = _progress_bar(len(rows)) if use_tqdm else None
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(len(rows), 1)))
        try:
            futures = {pool.submit(self._run_row, row): i for i, row in enumerate(rows)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------------- streaming
    def _stream_rows(self, rows: list[_Row]) -> Iterator[RequestOutput]:
        events: "queue.Queue[Any]" = queue.Queue()
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(len(rows), 1)))
        for row in rows:
            pool.submit(self._stream_row, row, events, stop)
        return self._drain(events, len(rows), stop, pool)

    @staticmethod
    def _drain(events: queue.Queue, remaining: int, stop: threading.Event,
               pool: ThreadPoolExecutor) -> Iterator[RequestOutput]:
        try:
            while remaining:
                try:
                    item = events.get(timeout=_POLL_S)  # in slices, so an interrupt is seen promptly
                except queue.Empty:
                    continue
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _stream_row(self, row: _Row, events: queue.Queue, stop: threading.Event) -> None:
        builder, aborted = row.builder(), threading.Event()
        try:
            if stop.is_set():
                return
            response = self._http.send("POST", row.path, row.body, stream=True)
            try:
                for event in sse_events(response):
                    if stop.is_set():
                        return
                    if aborted.is_set():
                        events.put(builder.output(force_finish="abort"))
                        return
                    self._stream_event(event, builder, aborted, events)
            finally:
                response.close()  # mid-stream, this is what tells the server to abort
            if not builder.finished:
                events.put(builder.output(force_finish="error", reason="the stream ended before the request finished"))
        except (RowError, httpx.HTTPError, ValueError) as exc:
            if not stop.is_set():
                events.put(builder.output(force_finish="error", reason=str(exc) or type(exc).__name__))
        except Exception as exc:  # RemoteError, or a bug: the caller's iteration raises it
            events.put(exc)
        finally:
            with self._lock:
                self._aborts.pop(builder.request_id, None)
            events.put(None)

    def _stream_event(self, event: dict, builder: OutputBuilder, aborted: threading.Event,
                      events: queue.Queue) -> None:
        first = not builder.request_id
        builder.add(event)
        if first and builder.request_id:
            with self._lock:
                self._aborts[builder.request_id] = aborted
        if event.get("choices"):
            events.put(builder.output())


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


def _params_per_row(sampling_params: Params, count: int) -> list[Optional[SamplingParams]]:
    if count == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    if sampling_params is None or isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} SamplingParams for {count} prompts; pass one, or one per prompt")
    if not all(isinstance(p, SamplingParams) for p in params):
        raise TypeError("sampling_params must be SamplingParams or a list of them")
    return params


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Processed prompts", unit="req", dynamic_ncols=True)
