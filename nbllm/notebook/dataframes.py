"""Batch generation with DataFrames: many prompts as one continuous batch, results as rows.

`run_batch` submits every prompt before reading any (so the engine batches them
all) and collects each prompt's final output with nbllm.batch's progress bar of rows
done and tokens/s. `generate_dataframe` turns a batch into one row per prompt and
completion. Sampling defaults are the engine's (`get_default_sampling_params`).

A completion that failed (finish_reason "error": a remote server refused the row,
cut its stream, or sent fewer choices than asked) is never passed off as text:
`run_batch` raises RowsFailed naming the rows, or, with errors="keep", returns them
for the caller to report; `generate_dataframe` puts the reason in an `error` column
and leaves the row's text missing. Token counts are missing (NaN) for an engine that
returns no token ids (a server that is not nbllm or vLLM): never a count of 0 that is wrong.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pandas as pd

from nbllm.batch import collect
from nbllm.notebook.requests import submit_prompts
from nbllm.notebook.session import resolve_engine
from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import RequestOutputKind, SamplingParams

COLUMNS = ["prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens", "cumulative_logprob",
           "latency_s", "error"]


class RowsFailed(RuntimeError):
    """Some rows got no complete text; `failures` maps each failed prompt to the reason."""

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = failures
        shown = "; ".join(f"{prompt[:40]!r}: {reason}" for prompt, reason in list(failures.items())[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} of {total} prompts failed: {shown}{more}")


def run_batch(llm: EngineClient, prompts: Sequence[str], params: SamplingParams, chat: bool = False,
              system: Optional[str] = None, rows_per_prompt: Optional[Sequence[int]] = None,
              use_tqdm: bool = True, errors: str = "raise") -> list[RequestOutput]:
    """Final outputs in prompt order; the bar counts `rows_per_prompt[i]` rows when prompt i is done.

    errors="raise": RowsFailed if any completion failed; "keep": failed completions are returned as they are.
    """
    if errors not in ("raise", "keep"):
        raise ValueError(f'errors must be "raise" or "keep", got {errors!r}')
    if not prompts:
        return []
    batch = submit_prompts(llm, prompts, params.updated(output_kind=RequestOutputKind.FINAL_ONLY), chat, system)
    outputs = collect(batch, use_tqdm, rows_per_prompt, desc="nbllm", unit="row")
    failures = {prompt: str(c.stop_reason) for prompt, output in zip(prompts, outputs) for c in output.outputs
                if c.finish_reason == "error"}
    if failures and errors == "raise":
        raise RowsFailed(failures, len(prompts))
    return outputs


def generate_dataframe(llm: Optional[EngineClient], prompts: Union[str, Sequence[str]],
                       sampling_params: Optional[SamplingParams] = None, use_tqdm: bool = True,
                       errors: str = "column") -> pd.DataFrame:
    """One row per prompt and completion: prompt, text, finish_reason, token counts, logprob, latency, error.

    A failed completion has no text and its reason in `error` (errors="column"), or raises RowsFailed
    (errors="raise").
    """
    if errors not in ("column", "raise"):
        raise ValueError(f'errors must be "column" or "raise", got {errors!r}')
    engine = resolve_engine(llm)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    params = sampling_params or engine.get_default_sampling_params()
    outputs = run_batch(engine, prompts, params, use_tqdm=use_tqdm, errors="raise" if errors == "raise" else "keep")
    counted = engine.capabilities.token_ids
    rows = [_row(prompt, output, c, counted) for prompt, output in zip(prompts, outputs) for c in output.outputs]
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(prompt: str, output: RequestOutput, completion: CompletionOutput, counted: bool) -> dict:
    failed = completion.finish_reason == "error"
    return {"prompt": prompt, "text": None if failed else completion.text, "finish_reason": completion.finish_reason,
            "prompt_tokens": len(output.prompt_token_ids or []) if counted else float("nan"),
            "completion_tokens": len(completion.token_ids) if counted else float("nan"),
            "cumulative_logprob": _or_nan(completion.cumulative_logprob),
            "latency_s": _or_nan(output.metrics.latency if output.metrics is not None else None),
            "error": str(completion.stop_reason) if failed else None}


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)
