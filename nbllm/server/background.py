"""Serve a live engine from a daemon thread, so a notebook keeps using the engine while others call it.

The listening socket is bound before the thread starts (port 0 picks a free port,
known at once); the handle stops the server. uvicorn installs no signal handlers
off the main thread, so a kernel's interrupt stays the kernel's.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import uvicorn

from nbllm.protocol import EngineClient
from nbllm.server.app import build_app

_STARTUP_TIMEOUT_S = 30.0
_GRACEFUL_SHUTDOWN_S = 3


@dataclass
class ServerHandle:
    """A running server: `.url` (without /v1), `.port`, `.stop()`."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let open ones finish briefly (then cancel them), and wait."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_background(llm: EngineClient, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None,
                        model_name: Optional[str] = None, log_level: str = "warning") -> ServerHandle:
    """Start an OpenAI-compatible server for `llm` in a daemon thread and return once it accepts connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(build_app(llm, model_name, api_key), log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="nbllm-server")
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    return ServerHandle(host, bound_port, server, thread)
