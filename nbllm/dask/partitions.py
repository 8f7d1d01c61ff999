"""What one Dask task does: run a pandas `.llm` method on one partition with its worker's engine.

The partition goes through the pandas accessor itself (nbllm.notebook.accessor), so
rows, order, dedup within the partition and missing values are exactly the pandas
path's, and its rows reach the engine as one continuous batch. A task is a pure
function of its partition and arguments: when Dask reruns it (a worker died), the
rows come back once, with the same text under greedy decoding or a fixed seed.
Beside the result, each task returns one stats row: tokens, load time and latency.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional, Union

import pandas as pd

import nbllm.notebook.accessor  # noqa: F401  (registers the pandas .llm accessors in the worker)
from nbllm.dask.engines import EngineSpec, engine_for
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams
from nbllm.streams import Deliver, RequestStream

Frame = Union[pd.DataFrame, pd.Series]


def text_dtype() -> Any:
    """The dtype pandas gives a column of strings ("str" from pandas 3, object before)."""
    return pd.Series(["text"]).dtype


def stats_meta() -> pd.DataFrame:
    """The stats frame's columns, empty: one row per partition."""
    dtypes = {"partition": "int64", "worker": text_dtype(), "rows": "int64", "requests": "int64",
              "prompt_tokens": "int64", "completion_tokens": "int64", "load_s": "float64", "latency_s": "float64"}
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})


class TokenCounter:
    """An engine seen through a counter: requests submitted through it are counted with their tokens.

    Everything but `submit` is the engine's own. The pandas accessor submits every row
    through `submit` with a deliver hook (nbllm.batch), which is where the counting happens.
    """

    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine
        self._lock = threading.Lock()  # outputs arrive on the engine's thread
        self.requests = self.prompt_tokens = self.completion_tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit(self, prompt: Any, sampling_params: Optional[SamplingParams] = None,
               request_id: Optional[str] = None, deliver: Optional[Deliver] = None) -> RequestStream:
        if deliver is None:
            raise ValueError("TokenCounter.submit needs a deliver hook (nbllm.batch passes one)")
        return self._engine.submit(prompt, sampling_params, request_id, self._counting(deliver))

    def _counting(self, deliver: Deliver) -> Deliver:
        def count_then_deliver(item: Any) -> None:
            if not isinstance(item, BaseException) and item.finished:
                with self._lock:
                    self.requests += 1
                    self.prompt_tokens += len(item.prompt_token_ids or [])
                    self.completion_tokens += sum(len(c.token_ids) for c in item.outputs)
            deliver(item)

        return count_then_deliver


def conform(result: Frame, meta: Frame) -> Frame:
    """`result` with meta's dtype wherever a new column is all missing (or empty): pandas cannot infer those."""
    if isinstance(result, pd.Series):
        return result.astype(meta.dtype) if result.dtype != meta.dtype and result.isna().all() else result
    lost = {name: meta[name].dtype for name in meta.columns
            if result[name].dtype != meta[name].dtype and result[name].isna().all()}
    return result.astype(lost) if lost else result


def run_partition(part: Frame, number: int, method: str, kwargs: dict[str, Any], spec: EngineSpec,
                  meta: Frame) -> tuple[Frame, pd.DataFrame]:
    """`part.llm.<method>(**kwargs)` on this worker's engine, and the partition's stats row."""
    from distributed import get_worker

    started = time.perf_counter()
    counter = TokenCounter(engine_for(spec))
    loaded = time.perf_counter()
    result = getattr(part.llm, method)(llm=counter, use_tqdm=False, **kwargs)
    finished = time.perf_counter()
    stats = pd.DataFrame([{"partition": number, "worker": get_worker().address, "rows": len(part),
                           "requests": counter.requests, "prompt_tokens": counter.prompt_tokens,
                           "completion_tokens": counter.completion_tokens, "load_s": loaded - started,
                           "latency_s": finished - loaded}]).astype(stats_meta().dtypes.to_dict())
    return conform(result, meta), stats
