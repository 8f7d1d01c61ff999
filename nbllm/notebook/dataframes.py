"""Batch generation with DataFrames: many prompts as one continuous batch, results as rows.

`run_batch` submits every prompt before reading any (so the engine batches them
all), shows a progress bar of rows done and tokens/s, and returns each prompt's
final output. `generate_dataframe` turns a batch into one row per prompt and
completion. Sampling defaults are the engine's (vLLM's: 16 tokens).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import pandas as pd

from nbllm.notebook.requests import default_params, interleave, open_streams
from nbllm.notebook.session import resolve_engine
from nbllm.outputs import RequestOutput
from nbllm.sampling_params import RequestOutputKind, SamplingParams

COLUMNS = ["prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens", "cumulative_logprob",
           "latency_s"]


def run_batch(llm: Any, prompts: Sequence[str], params: SamplingParams, chat: bool = False,
              system: Optional[str] = None, rows_per_prompt: Optional[Sequence[int]] = None,
              use_tqdm: bool = True) -> list[RequestOutput]:
    """Final outputs in prompt order; the bar counts `rows_per_prompt[i]` rows when prompt i is done."""
    weights = list(rows_per_prompt) if rows_per_prompt is not None else [1] * len(prompts)
    results: list[Optional[RequestOutput]] = [None] * len(prompts)
    if not prompts:
        return []
    streams = open_streams(llm, prompts, params.updated(output_kind=RequestOutputKind.FINAL_ONLY), chat, system)
    bar = _progress_bar(sum(weights)) if use_tqdm else None
    start, generated = time.monotonic(), 0
    try:
        for index, output in interleave(streams):
            if not output.finished:
                continue
            results[index] = output
            generated += sum(len(c.token_ids) for c in output.outputs)
            if bar is not None:
                bar.update(weights[index])
                bar.set_postfix_str(f"{generated / max(time.monotonic() - start, 1e-9):.1f} tok/s", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]  # every stream ends with a finished output


def generate_dataframe(llm: Any, prompts: Union[str, Sequence[str]], sampling_params: Optional[SamplingParams] = None,
                       use_tqdm: bool = True) -> pd.DataFrame:
    """One row per prompt and completion: prompt, text, finish_reason, token counts, logprob, latency."""
    llm = resolve_engine(llm)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    outputs = run_batch(llm, prompts, sampling_params or default_params(llm), use_tqdm=use_tqdm)
    rows = [{"prompt": prompt, "text": c.text, "finish_reason": c.finish_reason,
             "prompt_tokens": len(output.prompt_token_ids or []), "completion_tokens": len(c.token_ids),
             "cumulative_logprob": _or_nan(c.cumulative_logprob),
             "latency_s": _or_nan(output.metrics.latency if output.metrics is not None else None)}
            for prompt, output in zip(prompts, outputs) for c in output.outputs]
    return pd.DataFrame(rows, columns=COLUMNS)


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="nbllm", unit="row", dynamic_ncols=True)
