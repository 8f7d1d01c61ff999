"""HTTP for RemoteLLM: requests with retries, and the events of a server-sent stream.

Only what can succeed on a second try is retried, with exponential backoff (honouring
Retry-After): a connection that failed or broke (refused, reset, cut mid-response),
429 (too many requests) and the gateway's 502/503/504. A 500 or any other answer is
the server's deterministic reply to this request and is not retried; a timeout is not
either, since the server is probably still working. 401, 403 and 404 raise
RemoteError: the call itself is refused, so every request would fail alike. Any other
failure raises RowError, for the caller to report on that one request. `interrupt`
cuts an open stream from another thread.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator, Optional

import httpx

_MAX_RETRY_AFTER_S = 30.0
RETRIED_STATUSES = frozenset({429, 502, 503, 504})


class RemoteError(RuntimeError):
    """The server refused the call itself (wrong key, unknown model or route), or is unreachable."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class RowError(Exception):
    """One request failed for good; its row reports the message (`status`: the HTTP status, if one came)."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class RetryingClient:
    """An httpx.Client whose `send` retries as this module describes."""

    def __init__(self, base_url: str, api_key: Optional[str], timeout: float, max_retries: int,
                 retry_backoff_s: float, max_connections: int, transport: Optional[httpx.BaseTransport] = None):
        if max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {max_retries}")
        self.base_url, self.timeout = base_url, timeout
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport,
                                    limits=httpx.Limits(max_connections=max_connections))

    def send(self, method: str, path: str, body: Optional[dict] = None, stream: bool = False) -> httpx.Response:
        """A successful response (left open when streaming), after retries; RowError or RemoteError otherwise."""
        failure, status = "", None
        for attempt in range(self.max_retries + 1):
            delay = self.retry_backoff_s * 2 ** attempt
            try:
                response = self._client.send(self._client.build_request(method, path, json=body), stream=stream)
            except httpx.TimeoutException:
                raise RowError(f"{method} {path} timed out after {self.timeout}s") from None
            except httpx.TransportError as exc:  # refused, reset or cut: the server may be restarting
                failure, status = f"the connection failed or was cut off ({type(exc).__name__}: {exc})", None
            else:
                if response.status_code < 400:
                    return response
                message = _error_message(response)
                if response.status_code in (401, 403, 404):
                    raise RemoteError(f"{method} {self.base_url}{path}: {response.status_code} {message}",
                                      response.status_code)
                if response.status_code not in RETRIED_STATUSES:
                    raise RowError(f"{response.status_code} {message}", response.status_code)
                failure, status = f"{response.status_code} {message}", response.status_code
                delay = _retry_after(response) or delay
            if attempt < self.max_retries:
                time.sleep(delay)
        raise RowError(f"{method} {path} failed after {self.max_retries + 1} attempts: {failure}", status)

    def call(self, method: str, path: str, body: Optional[dict] = None) -> httpx.Response:
        """Like send, for calls that are not a row of a batch: every failure raises RemoteError."""
        try:
            return self.send(method, path, body)
        except RowError as exc:
            raise RemoteError(f"{self.base_url}: {exc}", exc.status) from None

    def close(self) -> None:
        self._client.close()


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON events of a stream until `data: [DONE]`; an error event raises RowError."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and "error" in event:
            raise RowError(error_text(event))
        yield event


def interrupt(response: httpx.Response) -> None:
    """Shut the response's socket: the thread reading it wakes now, and the server sees the client leave.

    Closing the response instead would wait for the reading thread (a blocked read is not
    woken by close). Transports without a socket (httpx.MockTransport) are left alone.
    """
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


def error_text(payload: Any) -> str:
    """The message of an error body: OpenAI's {"error": {"message"}} or vLLM's older flat shape."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        return str(error)
    return str(payload)


def _error_message(response: httpx.Response) -> str:
    """The error's message; closes the response (which may be a stream)."""
    try:
        response.read()
        return error_text(response.json())
    except ValueError:
        return response.text[:500]
    finally:
        response.close()


def _retry_after(response: httpx.Response) -> Optional[float]:
    try:
        return min(float(response.headers.get("retry-after", "")), _MAX_RETRY_AFTER_S)
    except ValueError:
        return None
