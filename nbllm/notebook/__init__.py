"""nbllm in the notebook: magics, the chat panel, DataFrame generation and the KV-cache monitor.

Importing this package registers the `.llm` pandas accessors. Every tool here is
a client of the public facade (LLM or RemoteLLM) and uses the kernel's one engine
(session.py) unless handed another. What the tools show is drawn by nbllm.views
(`plot_kv_usage` is nbllm.views.kv_plot's, re-exported here). The widgets are
imported on first use, so `%load_ext nbllm` does not pay for ipywidgets or matplotlib.
"""

from __future__ import annotations

from typing import Any

from nbllm.notebook.accessor import LLMDataFrameAccessor, LLMSeriesAccessor
from nbllm.notebook.dataframes import generate_dataframe
from nbllm.notebook.session import EngineSession, current_session

_LAZY = {"ChatPanel": "nbllm.notebook.chat", "KVCacheMonitor": "nbllm.notebook.kv_monitor",
         "plot_kv_usage": "nbllm.views.kv_plot", "load_ipython_extension": "nbllm.notebook.magics"}

__all__ = ["ChatPanel", "KVCacheMonitor", "plot_kv_usage", "generate_dataframe", "EngineSession",
           "current_session", "load_ipython_extension", "LLMDataFrameAccessor", "LLMSeriesAccessor"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nbllm.notebook' has no attribute {name!r}")
