"""The engine seen from asyncio: submit on the event loop, await outputs, abort on exit.

`EngineClient.submit` and `abort` only queue work for the engine, so the event loop
calls them directly: no thread per request, none per stream, none per abort. Each
request's outputs are handed over by its `deliver` function, which the engine's
thread calls; it moves them onto the event loop with `call_soon_threadsafe`.
Leaving `EngineRequests.outputs()` before every request finished (an exception, a
cancellation because the client disconnected, or closing the iterator) aborts the
unfinished requests, which frees their KV blocks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar

from starlette.requests import Request

from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams
from nbllm.streams import RequestStream, StreamItem

T = TypeVar("T")


@dataclass
class PreparedPrompt:
    """A tokenized prompt with the SamplingParams it runs with."""

    text: Optional[str]
    token_ids: list[int]
    params: SamplingParams


Submit = Callable[[int, str, Callable[[StreamItem], None]], RequestStream]


class EngineRequests:
    """The requests of one HTTP call; `outputs()` yields (prompt index, RequestOutput or BeamSearchOutput)."""

    def __init__(self, llm: EngineClient) -> None:
        self._llm = llm
        self._loop = asyncio.get_running_loop()
        self._queue: "asyncio.Queue[tuple[int, StreamItem]]" = asyncio.Queue()
        self._streams: list[RequestStream] = []
        self._unfinished: set[int] = set()

    @classmethod
    def submit(cls, llm: EngineClient, prompts: list[PreparedPrompt], request_id: str) -> "EngineRequests":
        """Queue every prompt (on the event loop); see `start`."""
        return cls.start(llm, len(prompts), request_id, lambda i, rid, deliver: llm.submit(
            {"prompt": prompts[i].text, "prompt_token_ids": prompts[i].token_ids}, prompts[i].params,
            request_id=rid, deliver=deliver))

    @classmethod
    def start(cls, llm: EngineClient, count: int, request_id: str, submit: Submit) -> "EngineRequests":
        """`submit(index, request id, deliver)` for each index; the engine's ValueError/TypeError for bad input
        propagates, and the requests already queued are aborted."""
        requests = cls(llm)
        try:
            for index in range(count):
                requests._streams.append(submit(index, f"{request_id}-{index}", requests._deliver_to(index)))
                requests._unfinished.add(index)
        except BaseException:
            requests.abort()
            raise
        return requests

    def _deliver_to(self, index: int) -> Callable[[StreamItem], None]:
        def deliver(item: StreamItem) -> None:  # runs in the engine's thread
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, item))
            except RuntimeError:  # the event loop has closed: the server stopped and nobody is listening
                pass
        return deliver

    async def outputs(self) -> AsyncIterator[tuple[int, Any]]:
        try:
            while self._unfinished:
                index, item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    self._unfinished.discard(index)
                yield index, item  # type: ignore[misc]
        finally:
            self.abort()

    def abort(self) -> None:
        """Abort what is unfinished; it only queues the aborts, so it is safe inside a cancelled task."""
        request_ids = [self._streams[i].request_id for i in sorted(self._unfinished)]
        self._unfinished.clear()
        if request_ids:
            self._llm.abort(request_ids)


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
