"""`df.llm.generate(...)`, `df.llm.extract(...)` and the same on a Series: a prompt template per row.

Registered with pandas when nbllm.notebook is imported. The accessors keep no
engine state, check the template before anything is submitted, and return new
objects: the caller's frame is never mutated. All rows go to the engine as one batch; identical prompts are
generated once; a row with a missing value in a used column gets a missing result.
`choice=[...]` gives a categorical column; `extract` gives typed columns from a JSON
schema (nbllm/notebook/structured.py).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Optional, Sequence, Union

import pandas as pd

from nbllm.notebook.dataframes import run_batch
from nbllm.notebook.session import resolve_engine
from nbllm.notebook.structured import Extraction, choice_column, with_choice
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
                    chat: bool, system: Optional[str], n: int, use_tqdm: bool,
                    errors: str = "raise") -> tuple[list[Any], list[Optional[str]]]:
    """One result per row (None where the row's prompt is None) and one error per row; each distinct prompt
    runs once.

    errors="raise": RowsFailed if a completion failed (every error is None); "column": a failed row's result
    is None and its error the reason (with n > 1, the reasons of its failed completions, joined).
    """
    if errors not in ("raise", "column"):
        raise ValueError(f'errors must be "raise" or "column", got {errors!r}')
    engine = resolve_engine(llm)
    params = (sampling_params or engine.get_default_sampling_params()).updated(n=n)
    counts = Counter(p for p in rows if p is not None)  # keeps first-seen order
    unique = list(counts)
    outputs = run_batch(engine, unique, params, chat, system, [counts[p] for p in unique], use_tqdm,
                        errors="raise" if errors == "raise" else "keep")
    texts, reasons = {}, {}
    for prompt, output in zip(unique, outputs):
        failed = [str(c.stop_reason) for c in output.outputs if c.finish_reason == "error"]
        reasons[prompt] = "; ".join(failed) if failed else None
        texts[prompt] = None if failed and n == 1 else [None if c.finish_reason == "error" else c.text
                                                         for c in output.outputs]
    results = [None if p is None or texts[p] is None else (texts[p][0] if n == 1 else texts[p]) for p in rows]
    return results, [None if p is None else reasons[p] for p in rows]


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
                 use_tqdm: bool = True, choice: Optional[Sequence[str]] = None,
                 errors: str = "raise") -> pd.DataFrame:
        """Fill `{column}` placeholders per row, generate, and return a copy with column `out`.

        With `choice`, each completion is one of those labels and the column is categorical. A row whose
        completion failed (a remote server refused it or cut it off) raises RowsFailed (errors="raise"), or
        (errors="column") gets a missing result and its reason in a column `{out}_error`.
        """
        rows = self._prompts(template)
        params = with_choice(sampling_params, choice, llm) if choice is not None else sampling_params
        results, reasons = generate_column(rows, llm, params, chat, system, n, use_tqdm, errors)
        frame = self._frame.copy()
        if choice is not None and n == 1:
            frame[out] = choice_column(results, choice, frame.index)
        else:
            frame[out] = pd.Series(results, index=frame.index, dtype=object if n > 1 else None)
        if errors == "column":
            frame[f"{out}_error"] = pd.Series(reasons, index=frame.index, dtype=object)
        return frame

    def extract(self, template: str, schema: Union[dict, type], sampling_params: Optional[SamplingParams] = None,
                chat: bool = False, system: Optional[str] = None, llm: Optional[EngineClient] = None,
                use_tqdm: bool = True) -> pd.DataFrame:
        """Fill the template per row, generate JSON matching `schema` (a JSON-schema dict or a pydantic model),
        and return a copy with one typed column per property (replacing columns of the same name)."""
        extraction = Extraction(schema)
        rows = self._prompts(template)
        texts, _ = generate_column(rows, llm, extraction.sampling_params(sampling_params, llm), chat, system, 1,
                                   use_tqdm)
        frame = self._frame.copy()
        for name, column in extraction.columns(texts, frame.index).items():
            frame[name] = column
        return frame

    def _prompts(self, template: str) -> list[Optional[str]]:
        """Each row's prompt (None where a value it uses is missing); KeyError for a placeholder naming no column."""
        names = template_fields(template)
        columns = [str(c) for c in self._frame.columns]
        unknown = [name for name in names if name not in columns]
        if unknown or "" in names:
            bad = "{}" if "" in names else "{" + unknown[0] + "}"
            raise KeyError(f"the template's {bad} names no column; columns are {columns}")
        by_name = {str(c): c for c in self._frame.columns}
        records = self._frame.to_dict("records")
        return [_fill(template, {name: record[by_name[name]] for name in names}) for record in records]


@pd.api.extensions.register_series_accessor("llm")
class LLMSeriesAccessor:
    """`s.llm.generate("...{}...")`: a new Series of completions, one per value."""

    def __init__(self, series: pd.Series) -> None:
        self._series = series

    def generate(self, template: str, sampling_params: Optional[SamplingParams] = None, chat: bool = False,
                 system: Optional[str] = None, n: int = 1, llm: Optional[EngineClient] = None,
                 use_tqdm: bool = True, choice: Optional[Sequence[str]] = None) -> pd.Series:
        """Fill `{}` with each value, generate, and return the completions with the same index.

        With `choice`, each completion is one of those labels and the Series is categorical. A failed
        completion raises RowsFailed (`s.to_frame().llm.generate(..., errors="column")` keeps the reasons).
        """
        rows = self._prompts(template)
        params = with_choice(sampling_params, choice, llm) if choice is not None else sampling_params
        results, _ = generate_column(rows, llm, params, chat, system, n, use_tqdm)
        if choice is not None and n == 1:
            return choice_column(results, choice, self._series.index, self._series.name)
        return pd.Series(results, index=self._series.index, name=self._series.name, dtype=object if n > 1 else None)

    def extract(self, template: str, schema: Union[dict, type], sampling_params: Optional[SamplingParams] = None,
                chat: bool = False, system: Optional[str] = None, llm: Optional[EngineClient] = None,
                use_tqdm: bool = True) -> pd.DataFrame:
        """Fill `{}` with each value, generate JSON matching `schema` (a JSON-schema dict or a pydantic
        model), and return a frame with the same index and one typed column per property."""
        extraction = Extraction(schema)
        rows = self._prompts(template)
        texts, _ = generate_column(rows, llm, extraction.sampling_params(sampling_params, llm), chat, system, 1,
                                   use_tqdm)
        return pd.DataFrame(extraction.columns(texts, self._series.index), index=self._series.index)

    def _prompts(self, template: str) -> list[Optional[str]]:
        """Each value's prompt (None for a missing value)."""
        names = template_fields(template)
        if not names:
            raise ValueError(f"a Series template needs a {{}} for the value, got {template!r}")
        if any(name not in ("", "0") for name in names):
            raise KeyError(f"a Series template fills in the value with {{}}, got {template!r}")
        return [None if _is_missing(value) else template.format(value) for value in self._series]
