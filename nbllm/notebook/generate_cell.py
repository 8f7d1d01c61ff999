"""The work of a %%generate cell: prompts from the body, text streamed into the output.

The body is split at lines holding only `---` into prompts that run as one batch;
`{name}` fills in a variable from the user namespace and `{{`/`}}` are literal
braces. Text streams into one display that is updated in place; the result is a
str for one prompt and completion, a list per prompt otherwise (a list of lists
with n > 1). Beam search and the token-probability view are shown by the views
that the engine's outputs bring (`_repr_html_`, `nbllm.views`).
"""

from __future__ import annotations

import re
import string
import time
from typing import Any, Mapping, Optional, Sequence

from IPython.core.error import UsageError
from IPython.display import DisplayHandle, Markdown, display

from nbllm.batch import drain
from nbllm.notebook.requests import engine_prompts, submit_prompts
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import BeamSearchParams, SamplingParams

FORMATS = ("text", "markdown", "code")
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_FENCED_CODE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_UPDATE_INTERVAL_S = 0.1

# ----------------------------------------------------------------------------- prompts


def split_prompts(body: str) -> list[str]:
    """The prompts of a cell body, split at `---` lines; UsageError for an empty one."""
    prompts = [part.strip("\n") for part in _SEPARATOR.split(body)]
    for number, prompt in enumerate(prompts, 1):
        if not prompt.strip():
            where = "the cell is empty" if len(prompts) == 1 else f"prompt {number} of {len(prompts)} is empty"
            raise UsageError(f"%%generate: {where}; write the prompt below the %%generate line")
    return prompts


def interpolate(prompt: str, namespace: Mapping[str, Any]) -> str:
    """Fill `{name}` fields from namespace; `{{` and `}}` stay literal braces."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None]
    except ValueError as exc:
        raise UsageError(f"%%generate: {exc} in the prompt; write {{{{ and }}}} for literal braces") from None
    for field in fields:
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name.isdigit():
            raise UsageError(f"%%generate: {{{field}}} names no variable; write {{name}} to fill in a variable, "
                             f"or {{{{ and }}}} for literal braces")
        if name not in namespace:
            raise UsageError(f"%%generate: the prompt uses {{{field}}} but no variable named {name!r} is defined")
    try:
        return prompt.format_map(namespace)
    except Exception as exc:  # an attribute, index or format spec that does not fit the value
        raise UsageError(f"%%generate: could not fill in the prompt: {exc!r}") from None


# ----------------------------------------------------------------------------- streaming


class LiveOutput:
    """One display in the cell's output, updated in place (at most every 0.1 s while streaming)."""

    def __init__(self, fmt: str) -> None:
        self._markdown = fmt == "markdown"
        self._handle: Optional[DisplayHandle] = None
        self._last_update = 0.0

    def due(self) -> bool:
        """Whether an update now would be shown (callers skip building text that would not)."""
        return self._handle is None or time.monotonic() - self._last_update >= _UPDATE_INTERVAL_S

    def show(self, text: str) -> None:
        self._last_update = time.monotonic()
        obj, raw = (Markdown(text), False) if self._markdown else ({"text/plain": text}, True)
        if self._handle is None:
            self._handle = display(obj, raw=raw, display_id=True)
        else:
            self._handle.update(obj, raw=raw)


def stream_into_output(llm: EngineClient, prompts: Sequence[str], params: SamplingParams, fmt: str,
                       chat: bool = False, system: Optional[str] = None
                       ) -> tuple[list[RequestOutput], list[list[str]]]:
    """Run all prompts as one batch, streaming their text; returns the final outputs and texts.

    Leaving early (an interrupt, an error) aborts the prompts still running.
    """
    batch = submit_prompts(llm, prompts, params, chat, system)
    live = LiveOutput(fmt)
    texts = [[""] * params.n for _ in prompts]
    finals: list[Optional[RequestOutput]] = [None] * len(prompts)
    live.show("")
    for index, output in drain(batch):
        for completion in output.outputs:
            texts[index][completion.index] = completion.text
        if output.finished:
            finals[index] = output
        if live.due():
            live.show(render_texts(texts, fmt))
    live.show(render_texts(texts, fmt))
    return [f for f in finals if f is not None], texts


def render_texts(texts: list[list[str]], fmt: str) -> str:
    """All completions in one text, labelled when there is more than one."""
    if len(texts) == 1 and len(texts[0]) == 1:
        return texts[0][0]
    blocks = []
    for i, completions in enumerate(texts, 1):
        for j, text in enumerate(completions, 1):
            label = f"prompt {i}" + (f", completion {j}" if len(completions) > 1 else "")
            blocks.append(f"**[{label}]**\n\n{text}" if fmt == "markdown" else f"[{label}]\n{text}")
    return "\n\n".join(blocks)


def result_value(texts: list[list[str]]) -> Any:
    """A str for one prompt and completion; otherwise one entry (str, or list with n > 1) per prompt."""
    per_prompt = [completions[0] if len(completions) == 1 else completions for completions in texts]
    return per_prompt[0] if len(per_prompt) == 1 else per_prompt


def code_of(text: str) -> str:
    """The first fenced code block of text, or the whole text when it has none."""
    match = _FENCED_CODE.search(text)
    return (match.group(1) if match else text).strip("\n")


# ----------------------------------------------------------------------------- beams and logprobs


def run_beam_search(llm: EngineClient, prompts: Sequence[str], beam_width: int, max_tokens: int, chat: bool,
                    system: Optional[str]) -> list[BeamSearchOutput]:
    """Beam search over all prompts; each output is displayed with its own view (its tree, where the engine has one)."""
    if not llm.capabilities.beam_search:
        raise UsageError(f"%%generate --beams: this engine ({type(llm).__name__}) does not do beam search "
                         f"(its capabilities.beam_search is False)")
    params = BeamSearchParams(beam_width=beam_width, max_tokens=max_tokens)
    outputs = list(llm.beam_search(engine_prompts(llm, prompts, chat, system), params))
    if not llm.capabilities.beam_tree:
        print(f"(this engine ({type(llm).__name__}) reports no search tree: only the final beams are shown)")
    for output in outputs:
        display(output)
    return outputs


def show_token_probabilities(outputs: Sequence[RequestOutput]) -> None:
    """nbllm.views' token view when it is installed, else a plain table per completion."""
    try:
        from nbllm.views.token_view import token_view
    except ImportError:
        token_view = None
    for output in outputs:
        if token_view is not None:
            display(token_view(output))
        else:
            for completion in output.outputs:
                display(logprob_table(completion))


def logprob_table(completion: Any) -> Any:
    """A DataFrame: one row per generated token with its logprob and the top alternatives."""
    import pandas as pd

    rows = []
    for position, (token_id, entries) in enumerate(zip(completion.token_ids, completion.logprobs or [])):
        chosen = entries.get(token_id)
        ranked = sorted(entries.items(), key=lambda item: -item[1].logprob)
        rows.append({"position": position, "token": chosen.decoded_token if chosen else str(token_id),
                     "logprob": chosen.logprob if chosen else float("nan"),
                     "alternatives": ", ".join(f"{lp.decoded_token!r}: {lp.logprob:.2f}" for _, lp in ranked)})
    return pd.DataFrame(rows, columns=["position", "token", "logprob", "alternatives"])
