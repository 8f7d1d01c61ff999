"""Serve a live engine from a daemon thread, so a notebook keeps using the engine while others call it.

The listening socket is bound before the thread starts (port 0 picks a free port,
known at once); the handle stops the server: new requests get 503 and closed
connections, in-flight ones have `options.shutdown_timeout` seconds to finish, then
are cancelled (which aborts them in the engine). uvicorn installs no signal handlers
off the main thread, so a kernel's interrupt stays the kernel's.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import uvicorn

from nbllm.protocol import EngineClient
from nbllm.server.app import build_app
from nbllm.server.options import ServerOptions
from nbllm.server.state import ServerState

_STARTUP_TIMEOUT_S = 30.0


@dataclass
class ServerHandle:
    """A running server: `.url` (without /v1), `.port`, `.stop()`."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _state: ServerState = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting requests, let open ones finish (up to options.shutdown_timeout), and wait."""
        self._state.draining = True
        self._server.should_exit = True
        self._thread.join(timeout if timeout is not None else self._state.options.shutdown_timeout + 10)
        if not self._thread.is_alive():
            self._state.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_background(llm: EngineClient, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None,
                        model_name: Optional[str] = None, log_level: str = "warning",
                        options: Optional[ServerOptions] = None) -> ServerHandle:
    """Start an OpenAI-compatible server for `llm` in a daemon thread and return once it accepts connections.

    `options` (ServerOptions) sets the limits and vLLM's frontend options, as `nbllm serve`'s flags do.
    """
    options = dataclasses.replace(options or ServerOptions(), bound_host=host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    app = build_app(llm, model_name, api_key, options)
    config = uvicorn.Config(app, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=options.shutdown_timeout)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="nbllm-server")
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            app.state.nbllm.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    return ServerHandle(host, bound_port, server, thread, app.state.nbllm)
