"""RequestStream: the outputs of one request, as the engine (local or remote) produces them.

A producer (the engine core's thread, or a RemoteLLM's HTTP reader) calls `put` with
each RequestOutput and ends with a finished one, or with an exception when the
request failed. A consumer iterates, calls `get`, or waits for `result()`. Where
outputs go is the stream's `deliver` function: by default its own queue; a caller
that waits on many requests at once (LLM.generate, the HTTP server's event loop)
passes one that forwards to its own queue. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import queue
from typing import Any, Callable, Iterator, Optional, Union

from nbllm.outputs import BeamSearchOutput, RequestOutput

StreamItem = Union[RequestOutput, BeamSearchOutput, BaseException]
Deliver = Callable[[StreamItem], None]

POLL_INTERVAL_S = 0.05  # waits are sliced so that a notebook interrupt is seen promptly


class RequestStream:
    """Outputs of one request; iterate, `get()` the next, or wait for `result()`."""

    def __init__(self, request_id: str, deliver: Optional[Deliver] = None,
                 on_close: Optional[Callable[[str], None]] = None):
        self.request_id = request_id
        self._queue: "queue.SimpleQueue[StreamItem]" = queue.SimpleQueue()
        self._deliver = deliver or self._queue.put
        self._on_close = on_close  # called with the request id when a consumer gives up early
        self.finished = False
        self.last: Optional[Union[RequestOutput, BeamSearchOutput]] = None

    def put(self, item: StreamItem) -> None:
        """Hand one output (or the request's error) to the consumer; producers only."""
        self._deliver(item)

    def get(self, timeout: Optional[float] = None) -> Union[RequestOutput, BeamSearchOutput]:
        """The next output; raises the request's error if it failed, queue.Empty on timeout."""
        item = wait_for(self._queue, timeout)
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.last = item
        self.finished = bool(item.finished)
        return item

    def __iter__(self) -> Iterator[Union[RequestOutput, BeamSearchOutput]]:
        try:
            while not self.finished:
                yield self.get()
        finally:
            if not self.finished:
                self.close()

    def result(self) -> Union[RequestOutput, BeamSearchOutput]:
        """Wait for the final output (an interrupt aborts the request)."""
        for _ in self:
            pass
        assert self.last is not None  # a stream always ends with a finished output or raises
        return self.last

    def close(self) -> None:
        """Stop listening: an unfinished request is aborted and its KV blocks freed."""
        if not self.finished and self._on_close is not None:
            self.finished = True
            self._on_close(self.request_id)


def wait_for(source: Any, timeout: Optional[float] = None) -> Any:
    """`source.get()` in short slices, so a KeyboardInterrupt lands promptly; queue.Empty on timeout."""
    if timeout is not None:
        return source.get(timeout=timeout)
    while True:
        try:
            return source.get(timeout=POLL_INTERVAL_S)
        except queue.Empty:
            continue
