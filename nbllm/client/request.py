"""One remote request's life: sent from RemoteLLM's shared pool, its outputs put on its RequestStream.

A request whose params ask for FINAL_ONLY is one plain POST; the others read the
server-sent events and put cumulative or delta outputs as they come. A request ends
exactly once, with a finished output: the server's last one; or, when it failed for
good, one whose unfinished completions have finish_reason "error" and the message as
stop_reason (a call the server refuses outright, RemoteError, is put as the stream's
exception instead); or, when aborted, one with finish_reason "abort", put at once by
the aborting thread, whose open stream is cut so that the server aborts too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional, Union

import httpx

from nbllm.client.http import RetryingClient, RowError, interrupt, sse_events
from nbllm.client.wire import OutputBuilder
from nbllm.outputs import RequestOutput
from nbllm.sampling_params import RequestOutputKind
from nbllm.streams import RequestStream


@dataclass(frozen=True)
class Call:
    """The HTTP side of a request: where it goes and what it sends (`stream` in the body says how it returns)."""

    path: str
    body: dict[str, Any]


class RemoteRequest:
    """A request on its way; `run` in a pool thread, `abort` from any thread."""

    def __init__(self, call: Call, builder: OutputBuilder, kind: RequestOutputKind, stream: RequestStream):
        self.call, self.builder, self.kind, self.stream = call, builder, kind, stream
        # Reentrant: a stream's deliver hook may abort its own request from inside `put`.
        self._lock = threading.RLock()
        self._done = False
        self._response: Optional[httpx.Response] = None  # the open event stream, for abort to cut

    @property
    def request_id(self) -> str:
        return self.stream.request_id

    def run(self, http: RetryingClient) -> None:
        """Send the call and put its outputs until the request ends (returns at once if aborted while queued)."""
        if self._done:
            return
        try:
            if self.call.body.get("stream"):
                self._read_events(http)
            else:
                self._read_response(http)
        except (RowError, httpx.HTTPError, ValueError) as exc:
            self._fail(str(exc) or type(exc).__name__)
        except Exception as exc:  # RemoteError, or a bug: whoever reads the stream gets it raised
            self._end(exc)

    def abort(self) -> None:
        """End the request now with finish_reason "abort" (no-op once ended) and cut its open stream."""
        with self._lock:
            if self._done:
                return
            self._end(self.builder.output(force_finish="abort", delta=self._delta))
            response = self._response
        if response is not None:
            interrupt(response)

    # ----------------------------------------------------------------- internals
    @property
    def _delta(self) -> bool:
        return self.kind == RequestOutputKind.DELTA

    def _read_response(self, http: RetryingClient) -> None:
        response = http.send("POST", self.call.path, self.call.body)
        with self._lock:
            self.builder.add(response.json())
            self._put(self.builder.output())
        self._fail("the response left a completion unfinished")

    def _read_events(self, http: RetryingClient) -> None:
        response = http.send("POST", self.call.path, self.call.body, stream=True)
        try:
            with self._lock:
                if self._done:
                    return
                self._response = response
            for event in sse_events(response):
                with self._lock:
                    if self._done:
                        return
                    self.builder.add(event)
                    if event.get("choices"):
                        self._put(self.builder.output(delta=self._delta))
        finally:
            response.close()  # mid-stream, this is what tells the server to abort
        self._fail("the stream ended before the request finished")

    def _put(self, output: RequestOutput) -> None:
        """Under the lock: one output, or the last one when it is finished."""
        if output.finished:
            self._end(output)
        elif not self._done:
            self.stream.put(output)

    def _fail(self, reason: str) -> None:
        """End an unfinished request as failed (no-op once ended)."""
        with self._lock:
            if not self._done:
                self._end(self.builder.output(force_finish="error", reason=reason, delta=self._delta))

    def _end(self, item: Union[RequestOutput, BaseException]) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                self.stream.put(item)
