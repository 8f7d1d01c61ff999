"""The engine's background step loop: many callers, one continuous batch.

Any thread may submit or abort; one daemon thread steps the engine while work
exists and sleeps otherwise. Each request gets a RequestStream, a queue its
caller reads outputs from. The caller's thread only waits on that queue, so a
KeyboardInterrupt (a notebook's interrupt) lands in the caller, which aborts its
requests: the loop frees their blocks and keeps serving. An exception inside a
step fails the requests of that step with the error and leaves the engine usable.

Callers get the engine between two steps, never later: Python's locks are not
fair, so the loop steps aside after a step whenever a caller is waiting.

The loop thread also builds the engine, so every tensor operation of the engine runs
in that one thread. On CPUs this matters: each thread that runs parallel torch ops
gets its own OpenMP team, and with two teams on a machine with few cores OpenMP
stops spinning between parallel regions (it sees more threads than cores), which
made every step about twice as slow on the 2-core benchmark VM.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence

from nbllm.engine.llm_engine import LLMEngine
from nbllm.outputs import RequestOutput
from nbllm.sampling_params import BeamSearchParams, SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class RequestStream:
    """Outputs of one request as they are produced; iterate, or wait for the last."""

    def __init__(self, request_id: str, sink: Optional[queue.Queue] = None, sink_key: object = None):
        self.request_id = request_id
        self._queue: "queue.Queue[RequestOutput | BaseException]" = queue.Queue()
        self._sink = sink  # when given, items go there as (sink_key, item) instead
        self._sink_key = sink_key
        self.finished = False
        self.last: Optional[RequestOutput] = None

    def put(self, item: "RequestOutput | BaseException") -> None:
        if self._sink is not None:
            self._sink.put((self._sink_key, item))
        else:
            self._queue.put(item)

    def get(self, timeout: Optional[float] = None) -> RequestOutput:
        """The next output; raises the engine's error if the request failed."""
        item = self._queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.last = item
        self.finished = item.finished
        return item

    def __iter__(self) -> Iterator[RequestOutput]:
        while not self.finished:
            yield self.get()

    def result(self) -> RequestOutput:
        for _ in self:
            pass
        assert self.last is not None
        return self.last


class EngineLoop:
    def __init__(self, build_engine: Callable[[], LLMEngine]):
        """Start the loop thread, which builds the engine; returns once it is built.

        An error while building is raised here, in the caller's thread. An interrupt
        while waiting stops the loop as soon as the engine is built.
        """
        self.engine: Optional[LLMEngine] = None
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._callers_waiting = 0  # callers queued for the lock; the loop yields to them
        self._callers_lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._stopped = False
        self._counter = 0
        self._built = threading.Event()
        self._build_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(build_engine,), name="nbllm-engine", daemon=True)
        self._thread.start()
        try:
            while not self._built.wait(0.05):
                pass
        except BaseException:
            self._stopped = True
            raise
        if self._build_error is not None:
            raise self._build_error

    # ----------------------------------------------------------------- callers
    def submit(self, prompt: Optional[str], prompt_token_ids: Sequence[int], params: SamplingParams,
               request_id: Optional[str] = None, sink: Optional[queue.Queue] = None,
               sink_key: object = None) -> RequestStream:
        """Queue a request; bad input raises here, in the caller's thread.

        With a sink, outputs of this request are put there as (sink_key, item), so
        one caller can wait on many requests at once.
        """
        return self._register(lambda engine, rid: engine.add_request(rid, prompt, prompt_token_ids, params),
                              request_id, sink, sink_key)

    def submit_beam_search(self, prompt: Optional[str], prompt_token_ids: Sequence[int], params: BeamSearchParams,
                           sink: Optional[queue.Queue] = None, sink_key: object = None) -> RequestStream:
        """Queue a beam search; its stream receives one BeamSearchOutput."""
        return self._register(lambda engine, rid: engine.add_beam_request(rid, prompt, prompt_token_ids, params),
                              None, sink, sink_key)

    def _register(self, add, request_id: Optional[str], sink: Optional[queue.Queue],
                  sink_key: object) -> RequestStream:
        with self._turn():
            if self._stopped:
                raise EngineDeadError("the engine has been shut down")
            if request_id is None:
                self._counter += 1
                request_id = str(self._counter)
            add(self.engine, request_id)
            stream = RequestStream(request_id, sink, sink_key)
            self._streams[request_id] = stream
            self._work.notify()
        return stream

    def abort(self, request_ids: str | Sequence[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        with self._turn():
            outputs = self.engine.abort_request(list(request_ids))
            streams = [self._streams.pop(o.request_id, None) for o in outputs]
        for stream, output in zip(streams, outputs):
            if stream is not None:
                stream.put(output)

    def call(self, fn, *args, **kwargs):
        """Run fn(engine, ...) between steps, under the engine's lock."""
        with self._turn():
            return fn(self.engine, *args, **kwargs)

    def shutdown(self) -> None:
        with self._turn():
            self._stopped = True
            self._work.notify()
        self._thread.join(timeout=30)
        with self._turn():
            request_ids = list(self._streams)
        self.abort(request_ids)
        self.engine.shutdown()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @contextmanager
    def _turn(self):
        """The engine's lock for a caller, granted at the next step boundary."""
        with self._callers_lock:
            self._callers_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._callers_lock:
                self._callers_waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _yield_to_callers(self) -> None:
        while self._callers_waiting:
            time.sleep(0.0002)

    # ----------------------------------------------------------------- the loop
    def _run(self, build_engine: Callable[[], LLMEngine]) -> None:
        try:
            self.engine = build_engine()
        except BaseException as exc:  # raised again in the caller's thread
            self._build_error = exc
            self._stopped = True
            self._built.set()
            return
        self._built.set()
        if self._stopped:  # the caller was interrupted while the engine loaded
            self.engine.shutdown()
            return
        while True:
            with self._work:
                while not self._stopped and not self.engine.has_unfinished_requests():
                    self._work.wait()
                if self._stopped:
                    return
                try:
                    outputs = self.engine.step()
                    failed: list[tuple[RequestStream, BaseException]] = []
                except Exception as exc:  # a bug or resource error: fail this work, keep serving
                    logger.exception("engine step failed")
                    outputs = []
                    failed = self._fail_all(exc)
                deliveries = []
                for output in outputs:
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        deliveries.append((stream, output))
                        if output.finished:
                            del self._streams[output.request_id]
            for stream, output in deliveries:
                stream.put(output)
            for stream, exc in failed:
                stream.put(exc)
            self._yield_to_callers()

    def _fail_all(self, exc: Exception) -> list[tuple[RequestStream, BaseException]]:
        request_ids = list(self._streams)
        self.engine.abort_request(request_ids)
        failed = [(self._streams.pop(rid), RuntimeError(f"the engine step failed: {exc!r}")) for rid in request_ids]
        return failed
