"""The ASGI layers around the routes: errors that keep the connection, body size, Host check, API key.

All are plain ASGI middlewares (not BaseHTTPMiddleware), so streaming and disconnect
detection pass through untouched. `KeepAliveOnError` answers an unexpected exception
with a 500 instead of letting it reach uvicorn, which would close the keep-alive
connection. `BodyLimit` refuses a body over the limit with a 413 before reading it
all. `HostCheck` protects a server bound to loopback against DNS rebinding, as
Jupyter does: a web page whose name resolves to 127.0.0.1 still sends its own name
as Host. `RequireKey` asks for `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Collection, Optional

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nbllm.server.errors import error_body

logger = logging.getLogger(__name__)

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def route_path(scope: Scope) -> str:
    """The path the routes see: without the root_path a proxy may have left on it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _send_error(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                      headers: Optional[dict[str, str]] = None) -> None:
    await JSONResponse(error_body(status, message), status_code=status, headers=headers)(scope, receive, send)


class KeepAliveOnError:
    """A 500 in OpenAI's shape for an exception no handler took; the connection stays open."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.exception("unexpected error serving %s", scope.get("path"))
            if not started:
                await _send_error(scope, receive, send, 500, f"internal server error: {exc!r}")


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over `limit` bytes: by its Content-Length at once, or as soon as it grows past it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = (f"the request body is larger than the server's limit of {self.limit} bytes "
                   f"(nbllm serve --max-request-bytes)")
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await _send_error(scope, receive, send, 413, message)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            item = await receive()
            if item["type"] == "http.request":
                received += len(item.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return item

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await _send_error(scope, receive, send, 413, message)


def is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1", "a.b:80" -> "a.b")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """403 unless the Host header names an accepted host ("*" in `allowed` accepts any)."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]):
        self.app = app
        self.allowed = {name.lower().strip("[]") for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            name = host_name(Headers(scope=scope).get("host", ""))
            if name not in self.allowed:
                await _send_error(scope, receive, send, 403,
                                  f"Host {name!r} is not allowed: this server accepts {sorted(self.allowed)} "
                                  f"(add names with nbllm serve --allowed-hosts)")
                return
        await self.app(scope, receive, send)


class RequireKey:
    """401 unless `Authorization: Bearer <key>`, checked before the body is read; `open_paths` need none.

    CORS preflights (OPTIONS) pass, as in vLLM: browsers send them without credentials.
    """

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str]):
        self.app = app
        self._key = api_key.encode()
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") != "OPTIONS" and route_path(scope) not in self._open:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
                await _send_error(scope, receive, send, 401,
                                  "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                  headers={"WWW-Authenticate": 'Bearer realm="nbllm"'})
                return
        await self.app(scope, receive, send)
