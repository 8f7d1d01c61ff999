"""The work of a %%generate cell: prompts from the body, text streamed into the output.

The body is split at lines holding only `---` into prompts that run as one batch;
`{name}` fills in a variable from the user namespace and `{{`/`}}` are literal
braces (`--raw` turns filling in off). Text streams into one display that is
updated in place; an empty completion shows as "(empty completion)"; a footer
under it gives each prompt's finish reason, tokens, tokens/s and time to first
token, measured here so that every engine reports alike. The result is a str for
one prompt and completion, a list per prompt otherwise (a list of lists with
n > 1). An interrupt aborts the requests and keeps the text so far: the cell ends
with one line, "interrupted after N tokens" (CellInterrupted). Beam search
displays its tree as it grows (the engine streams the search so far), and the
token-probability view is shown by nbllm.views.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from IPython.core.error import UsageError
from IPython.display import DisplayHandle, Markdown, display

from nbllm.batch import drain, submit_all
from nbllm.notebook.requests import engine_prompts, submit_prompts
from nbllm.outputs import BeamSearchOutput, RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from nbllm.views.generate_view import EMPTY_COMPLETION, GenerationSummary, footer_html, footer_text

FORMATS = ("text", "markdown", "code")
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_FENCED_CODE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_UPDATE_INTERVAL_S = 0.1
_BEAM_UPDATE_INTERVAL_S = 0.3  # a growing tree is redrawn whole: less often than text

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
        fields = [spec for _, spec, _, _ in string.Formatter().parse(prompt) if spec is not None]
    except ValueError as exc:
        raise UsageError(f"%%generate: {exc} in the prompt; write {{{{ and }}}} for literal braces") from None
    for spec in fields:
        name = re.split(r"[.\[]", spec, maxsplit=1)[0]
        if not name or name.isdigit():
            raise UsageError(f"%%generate: {{{spec}}} names no variable; write {{name}} to fill in a variable, "
                             f"or {{{{ and }}}} for literal braces")
        if name not in namespace:
            raise UsageError(f"%%generate: the prompt uses {{{spec}}} but no variable named {name!r} is defined")
    try:
        return prompt.format_map(namespace)
    except Exception as exc:  # an attribute, index or format spec that does not fit the value
        raise UsageError(f"%%generate: could not fill in the prompt: {exc!r}") from None


# ----------------------------------------------------------------------------- streaming


class CellInterrupted(KeyboardInterrupt):
    """The user interrupted a generating cell: IPython shows this one line instead of a traceback.

    It is still a KeyboardInterrupt, so the cell counts as failed and a Run All stops there.
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


@dataclass
class PromptProgress:
    """One prompt's timing as the cell saw it (monotonic seconds) and its completions' state."""

    started: float
    completions: int
    counts_tokens: bool = True  # the engine sends token ids (capabilities.token_ids); else characters are counted
    first_token: Optional[float] = None
    finished: Optional[float] = None
    tokens: list[int] = field(init=False)  # per completion, so far
    characters: list[int] = field(init=False)  # per completion, so far
    reasons: list[Optional[str]] = field(init=False)  # per completion; None while it runs

    def __post_init__(self) -> None:
        self.tokens = [0] * self.completions
        self.characters = [0] * self.completions
        self.reasons = [None] * self.completions

    def take(self, output: RequestOutput, now: float) -> None:
        for completion in output.outputs:
            self.tokens[completion.index] = len(completion.token_ids)
            self.characters[completion.index] = len(completion.text)
            self.reasons[completion.index] = completion.finish_reason
        # Text counts too: a server that sends no token ids (llama.cpp's) still sends text.
        if self.first_token is None and (any(self.tokens) or any(c.text for c in output.outputs)):
            self.first_token = now
        if output.finished:
            self.finished = now

    def summary(self) -> GenerationSummary:
        end = self.finished if self.finished is not None else time.monotonic()
        ttft = self.first_token - self.started if self.first_token is not None else None
        tokens = sum(self.tokens) if self.counts_tokens else None
        return GenerationSummary([r or "unfinished" for r in self.reasons], tokens, end - self.started, ttft,
                                 sum(self.characters))


@dataclass
class CellRun:
    """What a streamed cell produced: texts per prompt and completion, final outputs, progress."""

    texts: list[list[str]]
    finals: list[RequestOutput]
    progress: list[PromptProgress]
    interrupted: bool = False

    @property
    def tokens(self) -> int:
        return sum(sum(p.tokens) for p in self.progress)

    @property
    def generated(self) -> str:
        """What was generated, for the interrupt line: "N tokens", or characters where no token ids came."""
        if not all(p.counts_tokens for p in self.progress):
            return f"{sum(sum(p.characters) for p in self.progress)} characters"
        return f"{self.tokens} token{'' if self.tokens == 1 else 's'}"


class LiveOutput:
    """One display in the cell's output, updated in place (at most every `interval` seconds while streaming)."""

    def __init__(self, fmt: str = "text", interval: float = _UPDATE_INTERVAL_S) -> None:
        self._markdown = fmt == "markdown"
        self._interval = interval
        self._handle: Optional[DisplayHandle] = None
        self._last_update = 0.0

    def due(self) -> bool:
        """Whether an update now would be shown (callers skip building text that would not)."""
        return self._handle is None or time.monotonic() - self._last_update >= self._interval

    def show(self, text: str) -> None:
        obj, raw = (Markdown(text), False) if self._markdown else ({"text/plain": text}, True)
        self.show_object(obj, raw)

    def show_object(self, obj: Any, raw: bool = False) -> None:
        self._last_update = time.monotonic()
        if self._handle is None:
            self._handle = display(obj, raw=raw, display_id=True)
        else:
            self._handle.update(obj, raw=raw)


def stream_into_output(llm: EngineClient, prompts: Sequence[str], params: SamplingParams, fmt: str,
                       chat: bool = False, system: Optional[str] = None) -> CellRun:
    """Run all prompts as one batch, streaming their text, then a footer; an interrupt ends it early.

    Leaving early (an interrupt, an error) aborts the prompts still running.
    """
    batch = submit_prompts(llm, prompts, params, chat, system)
    started = time.monotonic()
    run = CellRun([[""] * params.n for _ in prompts], [], [PromptProgress(started, params.n, llm.capabilities.token_ids) for _ in prompts])
    finals: list[Optional[RequestOutput]] = [None] * len(prompts)
    live = LiveOutput(fmt)
    live.show("")
    pairs = drain(batch)
    try:
        for index, output in pairs:
            run.progress[index].take(output, time.monotonic())
            for completion in output.outputs:
                run.texts[index][completion.index] = completion.text
            if output.finished:
                finals[index] = output
            if live.due():
                live.show(render_texts(run.texts, fmt))
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        pairs.close()  # aborts what is unfinished (an interrupt may land outside the loop's wait)
    run.finals = [f for f in finals if f is not None]
    live.show(render_texts(run.texts, fmt, finished=True))
    if not run.interrupted:
        summaries = [p.summary() for p in run.progress]
        display({"text/plain": footer_text(summaries), "text/html": footer_html(summaries)}, raw=True)
    return run


def render_texts(texts: list[list[str]], fmt: str, finished: bool = False) -> str:
    """All completions in one text, labelled when there is more than one; once finished, an empty one
    shows as "(empty completion)"."""
    def shown(text: str) -> str:
        return EMPTY_COMPLETION if finished and not text else text

    if len(texts) == 1 and len(texts[0]) == 1:
        return shown(texts[0][0])
    blocks = []
    for i, completions in enumerate(texts, 1):
        for j, text in enumerate(completions, 1):
            label = f"prompt {i}" + (f", completion {j}" if len(completions) > 1 else "")
            blocks.append(f"**[{label}]**\n\n{shown(text)}" if fmt == "markdown" else f"[{label}]\n{shown(text)}")
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


@dataclass
class BeamRun:
    """The beam searches of a cell: the last output of each (final unless interrupted)."""

    outputs: list[BeamSearchOutput]
    interrupted: bool = False

    @property
    def steps(self) -> int:
        return max((o.tree.num_steps for o in self.outputs if o.tree is not None), default=0)


def run_beam_search(llm: EngineClient, prompts: Sequence[str], beam_width: int, max_tokens: int, chat: bool,
                    system: Optional[str]) -> BeamRun:
    """Beam search over all prompts, each shown in its own display: the tree grows while it searches
    (where the engine records one), then the final view. An interrupt keeps the search so far."""
    if not llm.capabilities.beam_search:
        raise UsageError(f"%%generate --beams: this engine ({type(llm).__name__}) does not do beam search "
                         f"(its capabilities.beam_search is False)")
    params = BeamSearchParams(beam_width=beam_width, max_tokens=max_tokens, output_kind=RequestOutputKind.CUMULATIVE)
    items = engine_prompts(llm, prompts, chat, system)
    batch = submit_all(llm, len(items), lambda i, deliver: llm.submit_beam_search(items[i], params, deliver=deliver))
    if not llm.capabilities.beam_tree:
        print(f"(this engine ({type(llm).__name__}) reports no search tree: only the final beams are shown)")
    views = [LiveOutput(interval=_BEAM_UPDATE_INTERVAL_S) for _ in items]
    for view in views:
        view.show(f"beam search (width {beam_width}): waiting for the first step...")
    latest: list[Optional[BeamSearchOutput]] = [None] * len(items)
    run = BeamRun([])
    pairs = drain(batch)
    try:
        for index, output in pairs:
            latest[index] = output
            if output.finished or views[index].due():
                views[index].show_object(output)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        pairs.close()
    run.outputs = [o for o in latest if o is not None]
    for view, output in zip(views, latest):
        if output is not None and not output.finished:
            view.show_object(output)  # the search so far, as it was when interrupted
    return run


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
