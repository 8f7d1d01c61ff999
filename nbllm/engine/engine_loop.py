"""The engine's thread: many callers, one continuous batch, one queue in.

Callers never touch the engine. They put commands on a queue (add a request, abort,
run a read-only call such as a stats snapshot, stop) and return at once; the loop
thread drains the queue between steps, steps while work exists and blocks on the
queue otherwise. Each request's outputs go to its RequestStream, which only this
thread feeds. A notebook interrupt lands in the caller waiting on its stream, which
queues an abort: the loop frees the request's blocks before the next step.

An error that belongs to one request (raised while processing its result) ends that
request alone, with the error on its stream; an exception from the model step itself
fails the requests in flight and leaves the engine usable.

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
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from nbllm.engine.input_processor import NewBeamSearch, NewRequest
from nbllm.engine.llm_engine import LLMEngine
from nbllm.streams import RequestStream

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


@dataclass
class _Add:
    request: Union[NewRequest, NewBeamSearch]
    stream: RequestStream


@dataclass
class _Abort:
    request_ids: list[str]


@dataclass
class _Call:
    fn: Callable[[LLMEngine], Any]
    result: Future


class _Stop:
    pass


Command = Union[_Add, _Abort, _Call, _Stop]


class EngineLoop:
    def __init__(self, build_engine: Callable[[], LLMEngine]):
        """Start the loop thread, which builds the engine; returns once it is built.

        An error while building is raised here, in the caller's thread. An interrupt
        while waiting stops the loop as soon as the engine is built.
        """
        self._commands: "queue.SimpleQueue[Command]" = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # the loop thread's alone
        self._stopped = threading.Event()
        built: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(build_engine, built), name="nbllm-engine",
                                        daemon=True)
        self._thread.start()
        try:
            self.engine: LLMEngine = wait_for_future(built)
        except BaseException:
            self._stopped.set()
            self._commands.put(_Stop())
            raise

    # ----------------------------------------------------------------- callers
    def add(self, request: Union[NewRequest, NewBeamSearch], stream: RequestStream) -> None:
        """Queue a validated request; its outputs go to `stream` (an id in use fails the stream)."""
        if self._stopped.is_set():
            raise EngineDeadError("the engine has been shut down")
        self._commands.put(_Add(request, stream))

    def abort(self, request_ids: Union[str, Sequence[str]]) -> None:
        """Queue an abort; the requests' final outputs reach their streams after the current step."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        if ids and not self._stopped.is_set():
            self._commands.put(_Abort(ids))

    def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(engine) in the loop thread between two steps and return its result."""
        if self._stopped.is_set():
            raise EngineDeadError("the engine has been shut down")
        result: Future = Future()
        self._commands.put(_Call(fn, result))
        return wait_for_future(result)

    def shutdown(self) -> None:
        """Stop the loop: unfinished requests end aborted, and the weights and KV pool are released."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._commands.put(_Stop())
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self._refuse_queued()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    # ----------------------------------------------------------------- the loop
    def _run(self, build_engine: Callable[[], LLMEngine], built: Future) -> None:
        try:
            engine = build_engine()
        except BaseException as exc:  # raised again in the caller's thread
            self._stopped.set()
            built.set_exception(exc)
            return
        built.set_result(engine)
        core = engine.core
        running = True
        while running:
            running = self._handle(self._commands.get(), engine)  # idle: block until a command
            while running:  # then take everything queued before stepping
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                running = self._handle(command, engine)
            while running and core.has_unfinished_requests() and self._commands.empty():
                self._step(engine)
        self._deliver(core.shutdown())
        for stream in self._streams.values():
            stream.put(EngineDeadError("the engine has been shut down"))
        self._streams.clear()
        self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Answer commands that arrived after the stop, so that no caller waits forever."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                command.stream.put(EngineDeadError("the engine has been shut down"))
            elif isinstance(command, _Call) and command.result.set_running_or_notify_cancel():
                command.result.set_exception(EngineDeadError("the engine has been shut down"))

    def _handle(self, command: Command, engine: LLMEngine) -> bool:
        """Apply one command; False when the loop should stop."""
        if isinstance(command, _Stop):
            return False
        if isinstance(command, _Add):
            request_id = command.request.request_id
            if request_id in self._streams:
                command.stream.put(ValueError(f"request id {request_id!r} is already in use"))
                return True
            try:
                if isinstance(command.request, NewBeamSearch):
                    engine.core.add_beam_search(command.request)
                else:
                    engine.core.add_request(command.request)
            except Exception as exc:  # a bad request fails alone
                command.stream.put(exc)
                return True
            self._streams[request_id] = command.stream
        elif isinstance(command, _Abort):
            self._deliver(engine.core.abort_requests(command.request_ids))
        elif isinstance(command, _Call) and command.result.set_running_or_notify_cancel():
            try:
                command.result.set_result(command.fn(engine))
            except BaseException as exc:
                command.result.set_exception(exc)
        return True

    def _step(self, engine: LLMEngine) -> None:
        try:
            outputs = engine.core.step()
        except Exception as exc:  # a bug or resource error: fail the work in flight, keep serving
            logger.exception("engine step failed")
            request_ids = list(self._streams)
            engine.core.abort_requests(request_ids)
            error = RuntimeError(f"the engine step failed: {exc!r}")
            for request_id in request_ids:
                self._streams.pop(request_id).put(error)
            return
        self._deliver(outputs)
        for request_id, error in engine.core.take_failures():
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.put(error)

    def _deliver(self, outputs: list) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            stream.put(output)


def wait_for_future(future: Future) -> Any:
    """The future's result, waited for in short slices so a KeyboardInterrupt lands promptly."""
    while True:
        try:
            return future.result(timeout=0.05)
        except FutureTimeout:
            continue
