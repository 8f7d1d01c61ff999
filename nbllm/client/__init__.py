"""nbllm's thin client: RemoteLLM speaks the EngineClient contract to an OpenAI-compatible server.

    from nbllm.client import RemoteLLM
    llm = RemoteLLM("http://gpu-node:8000/v1")   # vLLM, or `nbllm serve`
    llm.generate("Once upon a time")

Needs httpx and prometheus_client (the `server` extra); imports neither torch nor
nbllm's engine or server, so a laptop can drive a GPU server without them.
"""

from nbllm.client.http import RemoteError
from nbllm.client.remote import RemoteLLM, RemoteTokenizer

__all__ = ["RemoteLLM", "RemoteError", "RemoteTokenizer"]
