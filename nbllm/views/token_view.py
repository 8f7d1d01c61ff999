"""Generated tokens coloured by their probability, with the top alternatives on hover.

token_view(output) takes a RequestOutput (every completion is shown, after the
prompt in grey) or one CompletionOutput, generated with SamplingParams(logprobs=k).
Each token's background runs from red (improbable) through yellow to green
(probable); its title lists its probability, logprob and rank and the top-k
alternatives at that position, the sampled one marked. Like the beam view it is a
self-contained HTML fragment: no URL, unique ids, readable without scripts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from nbllm.outputs import CompletionOutput, Logprob, RequestOutput
from nbllm.views.assets import TOKEN_CSS, TOOLTIP_CSS, TOOLTIP_JS
from nbllm.views.html_text import NO_MATH, esc, mix, prob, shorten, unique_id, visible

LOW, MID, HIGH = "#f4a3a3", "#fbe38e", "#b7e4b0"
PROMPT_CHARS = 300


@dataclass(frozen=True)
class TokenView:
    """The rendered view; notebooks display it through _repr_html_."""

    html: str

    def _repr_html_(self) -> str:
        return self.html


def token_view(output: Union[RequestOutput, CompletionOutput]) -> TokenView:
    """A displayable token-probability view of a generate() result."""
    return TokenView(token_view_html(output))


def token_view_html(output: Union[RequestOutput, CompletionOutput]) -> str:
    """The token-probability view as an HTML fragment."""
    completions = output.outputs if isinstance(output, RequestOutput) else [output]
    for completion in completions:
        if completion.logprobs is None:
            raise ValueError("this output has no logprobs: generate it with SamplingParams(logprobs=5) "
                             "(any number of alternatives >= 0)")
    prompt = output.prompt if isinstance(output, RequestOutput) else None
    chosen = [_chosen(c, i) for c in completions for i in range(len(c.token_ids))]
    known = [lp.logprob for lp in chosen if lp is not None]
    summary = f"<b>Token probabilities</b> · {len(chosen)} tokens"
    if known:
        mean_lp = sum(known) / len(known)
        summary += f" · mean logprob {mean_lp:.3f} · perplexity {math.exp(-mean_lp):.3g}"
    legend = (f'p(token): low <i class="nbt-sw" style="background:linear-gradient(90deg,{LOW},{MID},{HIGH})">'
              f'</i> high · hover a token for its alternatives')
    blocks = []
    for index, completion in enumerate(completions):
        label = f'<div class="nbt-head">completion {index}</div>' if len(completions) > 1 else ""
        context = ""
        if prompt:
            context = f'<span class="nbt-prompt">{esc(_inline(_tail(prompt)))}</span>'
        tokens = "".join(_token_span(completion, i) for i in range(len(completion.token_ids)))
        blocks.append(f'{label}<div class="nbt-text">{context}{tokens}</div>')
    element_id = unique_id("nbllm-tokens")
    script = f"(function (root) {{{TOOLTIP_JS}}})(document.getElementById(\"{element_id}\"));"
    return (f'<div class="nbt {NO_MATH}" id="{element_id}"><style>{TOOLTIP_CSS}{TOKEN_CSS}</style>'
            f'<div class="nbt-head">{summary}</div><div class="nbt-head">{legend}</div>'
            f'{"".join(blocks)}<script>{script}</script></div>')


def probability_colour(p: float) -> str:
    """Background for a token of probability p: red, through yellow at 0.5, to green."""
    return mix(LOW, MID, 2 * p) if p < 0.5 else mix(MID, HIGH, 2 * p - 1)


def _chosen(completion: CompletionOutput, i: int) -> Logprob | None:
    return completion.logprobs[i].get(completion.token_ids[i]) if i < len(completion.logprobs) else None


def _text(token_id: int, logprob: Logprob | None) -> str:
    return logprob.decoded_token if logprob is not None and logprob.decoded_token is not None else f"⟨{token_id}⟩"


def _inline(text: str) -> str:
    """Text as shown in the flow: spaces kept, newlines shown as '↵' and kept as line breaks."""
    return "↵\n".join(visible(part, keep_spaces=True) if part else "" for part in text.split("\n"))


def _tail(prompt: str) -> str:
    return prompt if len(prompt) <= PROMPT_CHARS else "…" + prompt[-(PROMPT_CHARS - 1):]


def _token_span(completion: CompletionOutput, i: int) -> str:
    token_id = completion.token_ids[i]
    chosen = _chosen(completion, i)
    text = _text(token_id, chosen)
    shown = _inline(text) if text else "∅"
    if chosen is None:
        return f'<span class="nbt-t" style="background:#e0e0e0" title="no logprob recorded">{esc(shown)}</span>'
    p = prob(chosen.logprob)
    lines = [f"'{visible(text)}'  p {p:.4f}  logprob {chosen.logprob:.4f}  rank {chosen.rank}", "top alternatives:"]
    ranked = sorted(completion.logprobs[i].items(),
                    key=lambda item: (item[1].rank is None, item[1].rank or 0, -item[1].logprob))
    top_p = max(prob(alt.logprob) for _, alt in ranked)
    for tid, alt in ranked:  # bars are relative to the most likely token at this position
        alt_p = prob(alt.logprob)
        mark = "▸" if tid == token_id else " "
        lines.append(f"{mark}{alt.rank!s:>3} {shorten(visible(_text(tid, alt)), 14):<14} {alt_p:.4f} "
                     f"{'█' * round(16 * alt_p / top_p) if top_p > 0 else ''}")
    return (f'<span class="nbt-t" style="background:{probability_colour(p)}" title="{esc(chr(10).join(lines))}">'
            f'{esc(shown)}</span>')
