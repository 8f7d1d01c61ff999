"""nbllm on a Dask cluster: `ddf.llm.generate(...)` and `ddf.llm.extract(...)` on Dask frames, one engine per worker.

    import nbllm.dask                     # registers the .llm accessors on Dask frames
    from distributed import Client
    client = Client()                     # a LocalCluster; or the address of a cluster
    result = ddf.llm.generate("Review: {text}\\nSentiment:", out="label")  # the default model
    result.compute()

Each partition runs the pandas accessor on its worker's engine, built there once per
worker (engines.py), or on a RemoteLLM with `engine="http://host:port/v1"`. Needs the
`dask` extra (dask[dataframe] and distributed); imports no torch until a worker builds an LLM.
"""

from nbllm.dask.accessor import LLMDaskDataFrameAccessor, LLMDaskSeriesAccessor
from nbllm.dask.engines import EngineLoadError, EngineSpec, loaded_engines, release_engines

__all__ = ["LLMDaskDataFrameAccessor", "LLMDaskSeriesAccessor", "EngineLoadError", "EngineSpec",
           "loaded_engines", "release_engines"]
