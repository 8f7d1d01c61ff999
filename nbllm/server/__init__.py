"""nbllm's OpenAI-compatible server (vLLM's API): `nbllm serve` on the command line, or from a notebook:

    handle = serve_in_background(llm, port=8000)   # the live engine, from a daemon thread
    handle.url, handle.stop()

`build_app(llm)` gives the FastAPI app itself. Needs the `server` extra.
"""

from nbllm.server.app import build_app
from nbllm.server.background import ServerHandle, serve_in_background

__all__ = ["build_app", "serve_in_background", "ServerHandle"]
