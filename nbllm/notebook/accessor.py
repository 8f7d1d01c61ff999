"""`df.llm.generate(...)` and `s.llm.generate(...)`: a prompt template filled from each row.

Registered with pandas when nbllm.notebook is imported. The accessors keep no
engine state, check the template before anything is submitted, and return new
objects: the caller's frame is never mutated. All rows go to the engine as one batch; identical prompts are
generated once; a row with a missing value in a used column gets a missing result.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Optional

import pandas as pd

from nbllm.notebook.dataframes import run_batch
from nbllm.notebook.session import resolve_engine
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams


def template_fields(template: str) -> list[str]:
    """The variable names a template uses (`{name}`, `{name.attr}`, `{name:>10}` give "name")."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}; write {{{{ and }}}} for literal braces") from None
    return [re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields]


def generate_column(rows: list[Optional[str]], llm: Optional[EngineClient], sampling_params: Optional[SamplingParams],
                    chat: bool, system: Optional[str], n: int, use_tqdm: bool) -> list[Any]:
    """One result per row (None where the row's prompt is None); each distinct prompt runs once."""
    engine = resolve_engine(llm)
    params = (sampling_params or engine.get_default_sampling_params()).updated(n=n)
    counts = Counter(p for p in rows if p is not None)  # keeps first-seen order
    unique = list(counts)
    outputs = run_batch(engine, unique, params, chat, system, [counts[p] for p in unique], use_tqdm)
    texts = {p: [c.text for c in o.outputs] for p, o in zip(unique, outputs)}
    return [None if p is None else (texts[p][0] if n == 1 else texts[p]) for p in rows]


def _is_missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _fill(template: str, values: dict[str, Any]) -> Optional[str]:
    """The prompt for one row, or None when a value it uses is missing."""
    if any(_is_missing(v) for v in values.values()):
        return None
    return template.format_map(values)


@pd.api.extensions.register_dataframe_accessor("llm")
class LLMDataFrameAccessor:
    """`df.llm.generate(template, out=...)`: a new frame with a column of completions."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def generate(self, template: str, out: str = "completion", sampling_params: Optional[SamplingParams] = None,
                 chat: bool = False, system: Optional[str] = None, n: int = 1, llm: Optional[EngineClient] = None,
                 use_tqdm: bool = True) -> pd.DataFrame:
        """Fill `{column}` placeholders per row, generate, and return a copy with column `out`."""
        names = template_fields(template)
        columns = [str(c) for c in self._frame.columns]
        unknown = [name for name in names if name not in columns]
        if unknown or "" in names:
            bad = "{}" if "" in names else "{" + unknown[0] + "}"
            raise KeyError(f"the template's {bad} names no column; columns are {columns}")
        by_name = {str(c): c for c in self._frame.columns}
        records = self._frame.to_dict("records")
        rows = [_fill(template, {name: record[by_name[name]] for name in names}) for record in records]
        results = generate_column(rows, llm, sampling_params, chat, system, n, use_tqdm)
        frame = self._frame.copy()
        frame[out] = pd.Series(results, index=frame.index, dtype=object if n > 1 else None)
        return frame


@pd.api.extensions.register_series_accessor("llm")
class LLMSeriesAccessor:
    """`s.llm.generate("...{}...")`: a new Series of completions, one per value."""

    def __init__(self, series: pd.Series) -> None:
        self._series = series

    def generate(self, template: str, sampling_params: Optional[SamplingParams] = None, chat: bool = False,
                 system: Optional[str] = None, n: int = 1, llm: Optional[EngineClient] = None,
                 use_tqdm: bool = True) -> pd.Series:
        """Fill `{}` with each value, generate, and return the completions with the same index."""
        names = template_fields(template)
        if not names:
            raise ValueError(f"a Series template needs a {{}} for the value, got {template!r}")
        if any(name not in ("", "0") for name in names):
            raise KeyError(f"a Series template fills in the value with {{}}, got {template!r}")
        rows = [None if _is_missing(value) else template.format(value) for value in self._series]
        results = generate_column(rows, llm, sampling_params, chat, system, n, use_tqdm)
        return pd.Series(results, index=self._series.index, name=self._series.name, dtype=object if n > 1 else None)
