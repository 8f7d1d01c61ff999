"""One remote request's life: sent from RemoteLLM's shared pool, its outputs put on its RequestStream.

A request is one HTTP call, or n calls of one choice each when the server answers
only one choice per call (RemoteLLM's probe says so). A call whose params ask for
FINAL_ONLY is one plain POST; the others read the server-sent events and put
cumulative or delta outputs as they come. A request ends exactly once, with a
finished output where every completion is complete or carries an explicit error:
the server's last one; or, when it failed for good, one whose unfinished completions
have finish_reason "error" and the reason as stop_reason (choices the server never
sent, a stream cut off, a response that stopped short); a call the server refuses
outright (RemoteError) is put as the stream's exception instead; when aborted, one
with finish_reason "abort", put at once by the aborting thread, whose open stream is
cut so that the server aborts too. `on_end` sees the builder (usage counts) once the
last call is over: before the final output is put when the request completes (so
whoever sees the end sees the counts), and after it otherwise. A stream's final output
is put after the stream ends, since a usage chunk may follow the last choice's end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

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

    @property
    def num_choices(self) -> int:
        return int(self.body.get("n") or 1)


class RemoteRequest:
    """A request on its way; `run` in a pool thread, `abort` from any thread."""

    def __init__(self, calls: list[Call], builder: OutputBuilder, kind: RequestOutputKind, stream: RequestStream,
                 on_end: Optional[Callable[[OutputBuilder, bool], None]] = None):
        self.calls, self.builder, self.kind, self.stream = calls, builder, kind, stream
        self._on_end = on_end
        # Reentrant: a stream's deliver hook may abort its own request from inside `put`.
        self._lock = threading.RLock()
        self._done = False
        self._aborted = False
        self._response: Optional[httpx.Response] = None  # the open event stream, for abort to cut
        self._recorded = False  # on_end has seen the builder

    @property
    def request_id(self) -> str:
        return self.stream.request_id

    def run(self, http: RetryingClient) -> None:
        """Send the calls and put their outputs until the request ends (returns at once if aborted while queued)."""
        if self._done:
            return
        try:
            offset = 0
            for call in self.calls:
                self.builder.index_offset = offset
                if call.body.get("stream"):
                    self._read_events(http, call, offset)
                else:
                    self._read_response(http, call)
                self.builder.end_call(streamed=bool(call.body.get("stream")))
                if self._aborted:
                    return
                offset += call.num_choices
            self._finish()
        except (RowError, httpx.HTTPError, ValueError) as exc:
            self._fail(str(exc) or type(exc).__name__)
        except Exception as exc:  # RemoteError, or a bug: whoever reads the stream gets it raised
            self._end(exc)
        finally:
            self._record(False)

    def abort(self) -> None:
        """End the request now with finish_reason "abort" (no-op once ended) and cut its open stream."""
        with self._lock:
            if self._done:
                return
            self._aborted = True
            self._end(self.builder.output(force_finish="abort", delta=self._delta))
            response = self._response
        if response is not None:
            interrupt(response)

    # ----------------------------------------------------------------- internals
    @property
    def _delta(self) -> bool:
        return self.kind == RequestOutputKind.DELTA

    def _read_response(self, http: RetryingClient, call: Call) -> None:
        response = http.send("POST", call.path, call.body)
        with self._lock:
            self.builder.add(response.json())

    def _read_events(self, http: RetryingClient, call: Call, offset: int) -> None:
        response = http.send("POST", call.path, call.body, stream=True)
        ended = False
        try:
            with self._lock:
                if self._aborted:
                    return
                self._response = response
            for event in sse_events(response):
                with self._lock:
                    if self._aborted:
                        return
                    self.builder.add(event)
                    if event.get("choices") and not self._done and not self.builder.finished:  # the end: _finish
                        self._put(self.builder.output(delta=self._delta))
            ended = True
        except httpx.TransportError as exc:
            if not self._aborted:
                raise RowError(f"the server cut the stream off ({type(exc).__name__}: {exc})") from None
        finally:
            response.close()  # mid-stream, this is what tells the server to abort
        covered = self.builder.choices[offset:offset + call.num_choices]
        if not ended and not self._aborted and any(c.finish_reason is None for c in covered):
            raise RowError("the server cut the stream off before the request finished")

    def _finish(self) -> None:
        """After the last call: record it, then end with the final output or with errors for what the server left
        out."""
        n = len(self.builder.choices)
        missing = [i for i in range(n) if i not in self.builder.answered]
        self._record(not missing and self.builder.finished)
        if missing:
            self._fail(f"the server answered {n - len(missing)} of {n} choices (choices {missing} never came)")
        elif not self.builder.finished:
            self._fail("the server's response left a completion unfinished")
        else:
            self._put(self.builder.output(delta=self._delta))

    def _record(self, ok: bool) -> None:
        """Hand the builder to on_end, once."""
        if self._on_end is not None and not self._recorded:
            self._recorded = True
            self._on_end(self.builder, ok)

    def _put(self, output: RequestOutput) -> None:
        """Under the lock: one output, or the last one when it is finished (FINAL_ONLY: only that one)."""
        if output.finished:
            self._end(output)
        elif not self._done and self.kind != RequestOutputKind.FINAL_ONLY:
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
