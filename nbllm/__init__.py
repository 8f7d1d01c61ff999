"""nbllm: an LLM inference engine that lives in your Jupyter kernel.

    from nbllm import LLM, SamplingParams
    llm = LLM()  # the embedded SmolLM2-135M-Instruct
    llm.generate("Once upon a time", SamplingParams(max_tokens=32))
"""

from nbllm.chat_utils import load_chat_template
from nbllm.config import EngineConfig
from nbllm.llm import LLM
from nbllm.outputs import (BeamSearchOutput, BeamSearchSequence, CompletionOutput, Logprob, RequestMetrics,
                           RequestOutput)
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "load_chat_template", "RemoteLLM", "ChatPanel", "KVCacheMonitor", "plot_kv_usage",
           "generate_dataframe", "EngineConfig", "SamplingParams", "BeamSearchParams", "RequestOutputKind", "RequestOutput",
           "CompletionOutput", "Logprob", "RequestMetrics", "BeamSearchOutput", "BeamSearchSequence"]


def __getattr__(name: str):
    """Optional parts load on first use, so `import nbllm` needs neither httpx nor ipywidgets."""
    if name in ("RemoteLLM", "RemoteError"):
        from nbllm import remote

        return getattr(remote, name)
    if name in ("ChatPanel", "KVCacheMonitor", "plot_kv_usage", "generate_dataframe"):
        from nbllm import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'nbllm' has no attribute {name!r}")


def load_ipython_extension(ipython):  # pragma: no cover - exercised through IPython
    from nbllm.notebook.magics import load_ipython_extension as load

    load(ipython)
