"""Test doubles for the notebook tests: an engine spy that can slow outputs down or inject failures,
and a held engine that produces nothing until a request is aborted."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, Optional

from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.protocol import EngineCapabilities
from nbllm.sampling_params import SamplingParams
from nbllm.streams import RequestStream


class SpyLLM:
    """Wraps a real engine; records what is rendered, submitted and delivered.

    `submit` goes straight to the wrapped engine (so it is eager, as the engine's own is)
    with a deliver function of the spy's: it records each output, sleeps `delay` seconds
    per unfinished one (in the engine's thread: outputs then come about 1/delay per
    second) and hands it on. Subclasses change what is delivered through `on_output`.
    `capabilities` may be overridden with keyword arguments; everything else not
    defined here is the wrapped engine's own.
    """

    def __init__(self, llm: Any, delay: float = 0.0, **capabilities: bool) -> None:
        self.llm = llm
        self.delay = delay
        self.events: list[tuple] = []
        self._capabilities = replace(llm.capabilities, **capabilities)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    @property
    def capabilities(self) -> EngineCapabilities:
        return self._capabilities

    @property
    def submitted(self) -> list[tuple]:
        """("submit", prompt, params) per request, in submission order."""
        return [e for e in self.events if e[0] == "submit"]

    @property
    def rendered(self) -> list[Any]:
        """The messages of each render_chat_prompts call."""
        return [e[1] for e in self.events if e[0] == "render"]

    def render_chat_prompts(self, messages: Any, *args: Any, **kwargs: Any) -> list[dict]:
        self.events.append(("render", messages))
        return self.llm.render_chat_prompts(messages, *args, **kwargs)

    def submit(self, prompt: Any, sampling_params: Optional[SamplingParams] = None, request_id: Optional[str] = None,
               deliver: Any = None) -> RequestStream:
        self.events.append(("submit", prompt, sampling_params))
        request_id = request_id or f"spy-{uuid.uuid4().hex[:12]}"
        stream = RequestStream(request_id, deliver, on_close=self.llm.abort)
        count = sum(e[0] == "submit" for e in self.events)
        self.llm.submit(prompt, sampling_params, request_id=request_id,
                        deliver=lambda item: self.on_output(stream, item, count))
        return stream

    def submit_chat(self, messages: Any, sampling_params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, deliver: Any = None, **template: Any) -> RequestStream:
        """As LLM.submit_chat: render (recorded), then submit (recorded)."""
        [prompt] = self.render_chat_prompts(messages, **template)
        return self.submit(prompt, sampling_params, request_id, deliver)

    def on_output(self, stream: RequestStream, item: Any, submission: int) -> None:
        """Runs in the engine's thread for each output of the `submission`-th request (1-based)."""
        self.events.append(("output", stream.request_id))
        if self.delay and isinstance(item, RequestOutput) and not item.finished:
            time.sleep(self.delay)
        stream.put(item)


class FailingAfterFirstOutput(SpyLLM):
    """The chosen request gets its first output, then `error` in place of the rest (and is aborted)."""

    def __init__(self, llm: Any, error: BaseException, submission: int = 1) -> None:
        super().__init__(llm)
        self.error, self.submission = error, submission
        self._failed: set[str] = set()

    def on_output(self, stream: RequestStream, item: Any, submission: int) -> None:
        if stream.request_id in self._failed:
            return  # the request has failed: what the engine still sends is dropped
        super().on_output(stream, item, submission)
        if submission == self.submission and isinstance(item, RequestOutput) and not item.finished:
            self._failed.add(stream.request_id)
            stream.put(self.error)
            self.llm.abort(stream.request_id)


class HeldEngine:
    """An engine whose requests produce nothing until they are aborted; records the aborts."""

    model_name = "held"
    max_model_len = 256
    is_running = True
    capabilities = EngineCapabilities()

    def __init__(self) -> None:
        self.streams: dict[str, RequestStream] = {}
        self.aborted: list[str] = []

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams()

    def render_chat_prompts(self, messages: Any, *args: Any, **kwargs: Any) -> list[dict]:
        return [{"prompt": " ".join(m["content"] for m in messages)}]

    def submit(self, prompt: Any, sampling_params: Optional[SamplingParams] = None, request_id: Optional[str] = None,
               deliver: Any = None) -> RequestStream:
        request_id = request_id or f"held-{len(self.streams)}"
        self.streams[request_id] = RequestStream(request_id, deliver, on_close=self.abort)
        return self.streams[request_id]

    def submit_chat(self, messages: Any, sampling_params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, deliver: Any = None, **template: Any) -> RequestStream:
        [prompt] = self.render_chat_prompts(messages)
        return self.submit(prompt, sampling_params, request_id, deliver)

    def abort(self, request_id: Any) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            stream = self.streams.pop(rid, None)
            self.aborted.append(rid)
            if stream is not None:
                stream.put(RequestOutput(rid, None, [], None, [CompletionOutput(0, "", [], None, None, "abort")],
                                         finished=True))


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll predicate until it is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_engine_idle(llm: Any, timeout: float = 5.0) -> None:
    """No request left in the engine and no block held by one (aborts are queued: allow a few steps)."""
    def idle() -> bool:
        m = llm.get_stats()
        return (m.num_requests_running, m.num_requests_waiting, m.num_blocks_used, m.running_request_blocks) == \
            (0, 0, 0, {})

    assert wait_until(idle, timeout), llm.get_stats()
