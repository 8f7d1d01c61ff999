"""Test doubles for the notebook tests: an engine spy that can also slow streams down."""

from __future__ import annotations

import time
from typing import Any, Iterator


class SpyLLM:
    """Wraps a real engine; records submissions and reads, optionally sleeping per streamed output.

    Submissions go straight to the wrapped engine (so they are eager, like LLM.stream);
    everything not overridden here is the wrapped engine's own.
    """

    def __init__(self, llm: Any, delay: float = 0.0) -> None:
        self.llm = llm
        self.delay = delay
        self.events: list[tuple] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    @property
    def submitted(self) -> list[tuple]:
        return [e for e in self.events if e[0] in ("stream", "stream_chat")]

    def stream(self, prompts: Any, params: Any = None) -> Iterator:
        self.events.append(("stream", prompts, params))
        return self._wrap(self.llm.stream(prompts, params))

    def stream_chat(self, messages: Any, params: Any = None, **kwargs: Any) -> Iterator:
        self.events.append(("stream_chat", messages, params))
        return self._wrap(self.llm.stream_chat(messages, params, **kwargs))

    def _wrap(self, stream: Iterator) -> Iterator:
        try:
            for output in stream:
                self.events.append(("read", output.request_id))
                if self.delay and not output.finished:
                    time.sleep(self.delay)
                yield output
        finally:
            stream.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll predicate until it is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_engine_idle(llm: Any) -> None:
    """No request left in the engine and no block held by one."""
    m = llm.get_metrics()
    assert m.num_requests_running == 0 and m.num_requests_waiting == 0, m
    assert m.running_request_blocks == {}
    assert m.num_blocks_used == 0, f"{m.num_blocks_used} blocks still used"
