"""Server-sent events as OpenAI streams them: `data: {json}` per chunk, then `data: [DONE]`.

Chunks leave out their unset fields (responses.chunk_json). An error after the stream
has started cannot change the status any more, so it is sent as one
`data: {"error": ...}` event before [DONE], as vLLM does. `on_close` runs however the
response ends, even when the client left before the first chunk. `usage_policy` is
vLLM's rule for usage in streams.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncGenerator, AsyncIterator, Callable, Optional

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from nbllm.server.errors import OpenAIError, error_body
from nbllm.server.protocol import StreamOptions
from nbllm.server.responses import chunk_json

logger = logging.getLogger(__name__)


async def _events(chunks: AsyncGenerator[BaseModel, None]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk_json(chunk)}\n\n"
    except OpenAIError as exc:
        yield f"data: {json.dumps(exc.to_dict())}\n\n"
    except Exception as exc:  # the engine failed mid-stream
        logger.exception("stream failed")
        yield f"data: {json.dumps(error_body(500, f'generation failed: {exc!r}'))}\n\n"
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


class _ClosingStreamingResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse_response(chunks: AsyncGenerator[BaseModel, None], on_close: Callable[[], None]) -> StreamingResponse:
    return _ClosingStreamingResponse(_events(chunks), on_close)


def usage_policy(options: Optional[StreamOptions], force: bool) -> tuple[bool, bool]:
    """(a usage chunk at the end, usage on every chunk): asked for in stream_options, or forced by the server."""
    if force:
        return True, True
    include = bool(options is not None and options.include_usage)
    return include, include and bool(options is not None and options.continuous_usage_stats)
