"""The threaded engine seen from asyncio: submit off the event loop, await outputs, abort on exit.

Calls into the engine take its lock, which a step holds, so they run in worker
threads. Each request's RequestStream is drained by a daemon thread into an
asyncio.Queue. Leaving `EngineRequests.outputs()` before every request finished
(an exception, a cancellation because the client disconnected, or closing the
iterator) aborts the unfinished requests, which frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Optional, TypeVar

import anyio
from starlette.requests import Request

from nbllm.outputs import RequestOutput
from nbllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # what llm.submit returns; the server uses the LLM facade only
    from nbllm.engine.engine_loop import RequestStream

T = TypeVar("T")


@dataclass
class PreparedPrompt:
    """A tokenized prompt with the SamplingParams it runs with."""

    text: Optional[str]
    token_ids: list[int]
    params: SamplingParams


class EngineRequests:
    """The requests of one HTTP call; `outputs()` yields (prompt index, RequestOutput)."""

    def __init__(self, llm: Any, streams: list[RequestStream]):
        self._llm = llm
        self._streams = streams
        self._unfinished = set(range(len(streams)))
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for index, stream in enumerate(streams):
            threading.Thread(target=_pump, args=(stream, index, loop, self._queue), daemon=True,
                             name=f"nbllm-http-{stream.request_id}").start()

    @classmethod
    async def submit(cls, llm: Any, prompts: list[PreparedPrompt], request_id: str) -> "EngineRequests":
        """Queue every prompt; the engine's ValueError/TypeError for bad input propagates."""
        streams = await anyio.to_thread.run_sync(_submit_all, llm, prompts, request_id)
        return cls(llm, streams)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        try:
            while self._unfinished:
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    self._unfinished.discard(index)
                yield index, item
        finally:
            self.abort()

    def abort(self) -> None:
        """Abort what is unfinished without waiting: safe inside a cancelled task."""
        request_ids = [self._streams[i].request_id for i in self._unfinished]
        self._unfinished.clear()
        if request_ids:
            threading.Thread(target=self._llm.abort, args=(request_ids,), daemon=True).start()


def _submit_all(llm: Any, prompts: list[PreparedPrompt], request_id: str) -> list[RequestStream]:
    streams: list[RequestStream] = []
    try:
        for index, prompt in enumerate(prompts):
            streams.append(llm.submit({"prompt": prompt.text, "prompt_token_ids": prompt.token_ids}, prompt.params,
                                      request_id=f"{request_id}-{index}"))
    except BaseException:
        if streams:
            llm.abort([s.request_id for s in streams])
        raise
    return streams


def _pump(stream: RequestStream, index: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    def deliver(item: Any) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (index, item))
        except RuntimeError:  # the event loop has closed: the server stopped and nobody is listening
            return False
        return True

    try:
        for output in stream:
            if not deliver(output):
                return
    except Exception as exc:  # the engine failed this request: the caller answers with the error
        deliver(exc)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> Optional[T]:
    """Await `work`, or cancel it when the client disconnects first (then return None)."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
    if not work_task.done() or work_task.cancelled():
        return None  # the cancelled work runs its finally-blocks (the abort) when the loop next runs it
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot report disconnects: never cancel the work
        await asyncio.Event().wait()
