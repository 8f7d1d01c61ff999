"""nbllm's OpenAI-compatible server (vLLM's API): `nbllm serve` on the command line, or from a notebook:

    handle = serve_in_background(llm, port=8000)   # the live engine, from a daemon thread
    handle.url, handle.stop()

`build_app(llm)` gives the FastAPI app itself; `ServerOptions` holds the limits and
vLLM's frontend options that `nbllm serve`'s flags set. Needs the `server` extra; FastAPI and
uvicorn load on first use of these names, not when the package is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time __getattr__ loads them
    from nbllm.server.app import build_app
    from nbllm.server.background import ServerHandle, serve_in_background
    from nbllm.server.options import ServerOptions

_EXPORTS = {"build_app": "nbllm.server.app", "serve_in_background": "nbllm.server.background",
            "ServerHandle": "nbllm.server.background", "ServerOptions": "nbllm.server.options"}

__all__ = ["build_app", "serve_in_background", "ServerHandle", "ServerOptions"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nbllm.server' has no attribute {name!r}")
