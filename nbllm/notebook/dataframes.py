"""Batch generation with DataFrames: many prompts as one continuous batch, results as rows.

`run_batch` submits every prompt before reading any (so the engine batches them
all) and collects each prompt's final output with nbllm.batch's progress bar of rows
done and tokens/s. `generate_dataframe` turns a batch into one row per prompt and
completion. Sampling defaults are the engine's (`get_default_sampling_params`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pandas as pd

from nbllm.batch import collect
from nbllm.notebook.requests import submit_prompts
from nbllm.notebook.session import resolve_engine
from nbllm.outputs import RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import RequestOutputKind, SamplingParams

COLUMNS = ["prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens", "cumulative_logprob",
           "latency_s"]


def run_batch(llm: EngineClient, prompts: Sequence[str], params: SamplingParams, chat: bool = False,
              system: Optional[str] = None, rows_per_prompt: Optional[Sequence[int]] = None,
              use_tqdm: bool = True) -> list[RequestOutput]:
    """Final outputs in prompt order; the bar counts `rows_per_prompt[i]` rows when prompt i is done."""
    if not prompts:
        return []
    batch = submit_prompts(llm, prompts, params.updated(output_kind=RequestOutputKind.FINAL_ONLY), chat, system)
    return collect(batch, use_tqdm, rows_per_prompt, desc="nbllm", unit="row")


def generate_dataframe(llm: Optional[EngineClient], prompts: Union[str, Sequence[str]],
                       sampling_params: Optional[SamplingParams] = None, use_tqdm: bool = True) -> pd.DataFrame:
    """One row per prompt and completion: prompt, text, finish_reason, token counts, logprob, latency."""
    engine = resolve_engine(llm)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    params = sampling_params or engine.get_default_sampling_params()
    outputs = run_batch(engine, prompts, params, use_tqdm=use_tqdm)
    rows = [{"prompt": prompt, "text": c.text, "finish_reason": c.finish_reason,
             "prompt_tokens": len(output.prompt_token_ids or []), "completion_tokens": len(c.token_ids),
             "cumulative_logprob": _or_nan(c.cumulative_logprob),
             "latency_s": _or_nan(output.metrics.latency if output.metrics is not None else None)}
            for prompt, output in zip(prompts, outputs) for c in output.outputs]
    return pd.DataFrame(rows, columns=COLUMNS)


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)
