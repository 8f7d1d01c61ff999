"""`ddf.llm.generate(...)` and `ddf.llm.extract(...)` on dask.dataframe frames: the pandas accessor per partition.

Registered with Dask when nbllm.dask is imported. Lazy like every Dask operation: the
template (and schema) are checked now and a Dask frame comes back with the new columns
in its meta; nothing runs until it is computed. Each partition is one task, keyed
"nbllm-<method>-<token>" (so Dask's progress bar and dashboard show it), that runs the
pandas accessor's method of the same name with its worker's engine (partitions.py).
`stats=True` also returns a frame of one row per partition; compute the two together
(`dask.compute(result, stats)`) or the partitions are generated twice.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import dask
import dask.dataframe as dd
import pandas as pd
from dask import delayed
from dask.base import tokenize

from nbllm.dask.engines import EngineSpec
from nbllm.dask.partitions import Frame, run_partition, stats_meta, text_dtype
from nbllm.notebook.accessor import template_fields
from nbllm.sampling_params import SamplingParams

DaskFrame = Union[dd.DataFrame, dd.Series]
Lazy = Union[DaskFrame, tuple[DaskFrame, dd.DataFrame]]  # with stats=True: (result, stats)


def _lazy(frame: DaskFrame, method: str, kwargs: dict[str, Any], engine: Optional[str],
          engine_kwargs: Optional[dict[str, Any]], meta: Frame, stats: bool) -> Lazy:
    """One `run_partition` task per partition; the result (and the stats frame) built from them."""
    spec = EngineSpec.of(engine, engine_kwargs)
    name = f"nbllm-{method}-{tokenize(frame, method, kwargs, spec)}"
    tasks = [delayed(run_partition, nout=2)(part, number, method, kwargs, spec, meta, dask_key_name=(name, number))
             for number, part in enumerate(frame.to_delayed())]
    divisions = frame.divisions if frame.known_divisions else None
    with dask.config.set({"dataframe.convert-string": False}):  # meta is exact: a list column stays object
        result = dd.from_delayed([task[0] for task in tasks], meta=meta, divisions=divisions, verify_meta=False)
        if not stats:
            return result
        return result, dd.from_delayed([task[1] for task in tasks], meta=stats_meta(), verify_meta=False)


def _check_columns(template: str, frame: dd.DataFrame) -> None:
    names = template_fields(template)
    columns = [str(c) for c in frame.columns]
    unknown = [name for name in names if name not in columns]
    if unknown or "" in names:
        bad = "{}" if "" in names else "{" + unknown[0] + "}"
        raise KeyError(f"the template's {bad} names no column; columns are {columns}")


def _check_value_template(template: str) -> None:
    names = template_fields(template)
    if not names:
        raise ValueError(f"a Series template needs a {{}} for the value, got {template!r}")
    if any(name not in ("", "0") for name in names):
        raise KeyError(f"a Series template fills in the value with {{}}, got {template!r}")


def _generated(n: int, choice: Optional[Sequence[str]], index: pd.Index, name: Any = None) -> pd.Series:
    """The empty column the pandas path gives: text, a list per row with n > 1, categories with choice."""
    if choice is not None and n == 1:
        from nbllm.notebook.structured import choice_column

        return choice_column([], choice, index, name)
    return pd.Series(dtype=text_dtype() if n == 1 else object, index=index, name=name)


def _choice(choice: Optional[Sequence[str]]) -> dict[str, Any]:
    return {} if choice is None else {"choice": choice}  # the pandas path's default is no constraint


def _extracted(schema: Union[dict, type], index: pd.Index) -> dict[str, pd.Series]:
    """The empty typed columns the pandas path gives for `schema` (ValueError for a bad schema, now)."""
    from nbllm.notebook.structured import Extraction

    return Extraction(schema).columns([], index)


@dd.extensions.register_dataframe_accessor("llm")
class LLMDaskDataFrameAccessor:
    """`ddf.llm.generate(template, out=...)`, `ddf.llm.extract(template, schema)`: lazy Dask frames."""

    def __init__(self, frame: dd.DataFrame) -> None:
        self._frame = frame

    def generate(self, template: str, out: str = "completion", sampling_params: Optional[SamplingParams] = None,
                 chat: bool = False, system: Optional[str] = None, n: int = 1,
                 choice: Optional[Sequence[str]] = None, engine: Optional[str] = None,
                 engine_kwargs: Optional[dict[str, Any]] = None, stats: bool = False) -> Lazy:
        """`df.llm.generate` on every partition: a Dask frame with column `out` (and stats if asked).

        `engine` is what each worker builds: a model (None: the default model) with
        `engine_kwargs` for LLM, or an "http://host:port/v1" server with RemoteLLM's.
        """
        _check_columns(template, self._frame)
        meta = self._frame._meta.copy()
        meta[out] = _generated(n, choice, meta.index)
        kwargs = {"template": template, "out": out, "sampling_params": sampling_params, "chat": chat,
                  "system": system, "n": n, **_choice(choice)}
        return _lazy(self._frame, "generate", kwargs, engine, engine_kwargs, meta, stats)

    def extract(self, template: str, schema: Union[dict, type], sampling_params: Optional[SamplingParams] = None,
                chat: bool = False, system: Optional[str] = None, engine: Optional[str] = None,
                engine_kwargs: Optional[dict[str, Any]] = None, stats: bool = False) -> Lazy:
        """`df.llm.extract` on every partition: one typed column per property of `schema`."""
        _check_columns(template, self._frame)
        meta = self._frame._meta.copy()
        for name, column in _extracted(schema, meta.index).items():
            meta[name] = column
        kwargs = {"template": template, "schema": schema, "sampling_params": sampling_params, "chat": chat,
                  "system": system}
        return _lazy(self._frame, "extract", kwargs, engine, engine_kwargs, meta, stats)


@dd.extensions.register_series_accessor("llm")
class LLMDaskSeriesAccessor:
    """`ds.llm.generate("...{}...")`, `ds.llm.extract("...{}...", schema)`: lazy, one result per value."""

    def __init__(self, series: dd.Series) -> None:
        self._series = series

    def generate(self, template: str, sampling_params: Optional[SamplingParams] = None, chat: bool = False,
                 system: Optional[str] = None, n: int = 1, choice: Optional[Sequence[str]] = None,
                 engine: Optional[str] = None, engine_kwargs: Optional[dict[str, Any]] = None,
                 stats: bool = False) -> Lazy:
        """`s.llm.generate` on every partition: a Dask Series of completions with the same index and name."""
        _check_value_template(template)
        meta = _generated(n, choice, self._series._meta.index, self._series.name)
        kwargs = {"template": template, "sampling_params": sampling_params, "chat": chat, "system": system, "n": n,
                  **_choice(choice)}
        return _lazy(self._series, "generate", kwargs, engine, engine_kwargs, meta, stats)

    def extract(self, template: str, schema: Union[dict, type], sampling_params: Optional[SamplingParams] = None,
                chat: bool = False, system: Optional[str] = None, engine: Optional[str] = None,
                engine_kwargs: Optional[dict[str, Any]] = None, stats: bool = False) -> Lazy:
        """`s.llm.extract` on every partition: a Dask frame with one typed column per property."""
        _check_value_template(template)
        index = self._series._meta.index
        meta = pd.DataFrame(_extracted(schema, index), index=index)
        kwargs = {"template": template, "schema": schema, "sampling_params": sampling_params, "chat": chat,
                  "system": system}
        return _lazy(self._series, "extract", kwargs, engine, engine_kwargs, meta, stats)
