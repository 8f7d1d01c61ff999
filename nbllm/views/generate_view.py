"""What a %%generate cell shows under its text: one footer line per prompt.

A line reads "stop · 24 tokens in 1.9 s · 12.6 tokens/s · TTFT 0.41 s": the finish
reason of each completion, the tokens generated, the wall time since the prompt was
submitted, their ratio, and the time to the first token. The same lines come as
plain text and as small grey HTML (escaped with `esc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from nbllm.views.html_text import esc

EMPTY_COMPLETION = "(empty completion)"


@dataclass(frozen=True)
class GenerationSummary:
    """One prompt's generation as the notebook measured it.

    `tokens` is None for an engine that sends no token ids (`capabilities.token_ids` False: a
    server that is not nbllm or vLLM): the footer then counts `characters` instead of a wrong 0.
    """

    finish_reasons: list[str]  # one per completion
    tokens: Optional[int]
    seconds: float
    time_to_first_token: Optional[float]
    characters: int = 0


def footer_line(summary: GenerationSummary) -> str:
    reasons = ", ".join(summary.finish_reasons)
    ttft = f"{summary.time_to_first_token:.2f} s" if summary.time_to_first_token is not None else "none"
    if summary.tokens is None:
        return (f"{reasons} · {summary.characters} characters in {summary.seconds:.1f} s "
                f"(the server sends no token ids) · TTFT {ttft}")
    rate = summary.tokens / summary.seconds if summary.seconds > 0 else 0.0
    return (f"{reasons} · {summary.tokens} tokens in {summary.seconds:.1f} s · {rate:.1f} tokens/s · "
            f"TTFT {ttft}")


def footer_text(summaries: Sequence[GenerationSummary]) -> str:
    """The footer as text: one line, or one labelled line per prompt."""
    if len(summaries) == 1:
        return footer_line(summaries[0])
    return "\n".join(f"[prompt {i}] {footer_line(s)}" for i, s in enumerate(summaries, 1))


def footer_html(summaries: Sequence[GenerationSummary]) -> str:
    lines = footer_text(summaries).split("\n")
    return ('<div class="nbllm-footer" style="font-size: 11px; color: #777; font-family: monospace">'
            + "<br>".join(esc(line) for line in lines) + "</div>")
