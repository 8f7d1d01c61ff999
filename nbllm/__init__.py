"""nbllm: an LLM inference engine that lives in your Jupyter kernel.

    from nbllm import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct
    llm.generate("Once upon a time", SamplingParams(max_tokens=32))

Every name loads on first use: `import nbllm` imports no torch, and neither do the
plain data types, the EngineClient contract or RemoteLLM; `LLM` brings in the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nbllm.views.formatters import register_formatters

if TYPE_CHECKING:  # for type checkers and the API reference; at run time __getattr__ loads them
    from nbllm.chat_utils import load_chat_template
    from nbllm.client import RemoteError, RemoteLLM
    from nbllm.config import EngineConfig
    from nbllm.llm import LLM
    from nbllm.metrics import MetricsSnapshot
    from nbllm.notebook import ChatPanel, KVCacheMonitor, generate_dataframe, plot_kv_usage
    from nbllm.outputs import (BeamSearchOutput, BeamSearchSequence, CompletionOutput, Logprob, RequestMetrics,
                               RequestOutput)
    from nbllm.protocol import EngineCapabilities, EngineClient
    from nbllm.sampling_params import (BeamSearchParams, GuidedDecodingParams, RequestOutputKind, SamplingParams,
                                       StructuredOutputsParams)
    from nbllm.streams import RequestStream

__version__ = "0.1.0"

# Exported name -> the module that defines it.
_EXPORTS = {
    "LLM": "nbllm.llm",
    "RemoteLLM": "nbllm.client", "RemoteError": "nbllm.client",
    "EngineClient": "nbllm.protocol", "EngineCapabilities": "nbllm.protocol",
    "RequestStream": "nbllm.streams",
    "EngineConfig": "nbllm.config",
    "load_chat_template": "nbllm.chat_utils",
    "SamplingParams": "nbllm.sampling_params", "BeamSearchParams": "nbllm.sampling_params",
    "RequestOutputKind": "nbllm.sampling_params", "StructuredOutputsParams": "nbllm.sampling_params",
    "GuidedDecodingParams": "nbllm.sampling_params",
    "RequestOutput": "nbllm.outputs", "CompletionOutput": "nbllm.outputs", "Logprob": "nbllm.outputs",
    "RequestMetrics": "nbllm.outputs", "BeamSearchOutput": "nbllm.outputs", "BeamSearchSequence": "nbllm.outputs",
    "MetricsSnapshot": "nbllm.metrics",
    "ChatPanel": "nbllm.notebook", "KVCacheMonitor": "nbllm.notebook", "plot_kv_usage": "nbllm.notebook",
    "generate_dataframe": "nbllm.notebook",
}

__all__ = sorted(_EXPORTS)

register_formatters()  # in a running IPython, a BeamSearchOutput or BeamTree displays as the beam view


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nbllm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def load_ipython_extension(ipython: Any) -> None:  # pragma: no cover - exercised through IPython
    """`%load_ext nbllm`: the magics, the chat panel and the DataFrame accessor."""
    from nbllm.notebook.magics import load_ipython_extension as load

    register_formatters(ipython)
    load(ipython)
