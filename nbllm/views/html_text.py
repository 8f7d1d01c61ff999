"""Text helpers shared by the views: visible token text, escaping, colours, unique element ids.

Token text is shown so that nothing in it is invisible or ambiguous: a space
becomes '␣' (unless spaces are kept), a newline '↵', a tab '⇥', other control
characters '\\xNN'; an empty token '∅'. `esc` is nbllm's one HTML-escaping helper:
every text that any view writes into HTML (element content or attribute value)
passes through it.
"""

from __future__ import annotations

import html
import math
import uuid

# Classes that stop MathJax (versions 2-3 and 4) typesetting "$...$" in token text as formulas,
# as JupyterLab and Notebook 7 would do in HTML outputs.
NO_MATH = "tex2jax_ignore mathjax_ignore"

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str, keep_spaces: bool = False) -> str:
    """Token text with whitespace (spaces too, unless kept) and control characters made visible."""
    if not text:
        return "∅"
    out = []
    for ch in text:
        if ch == " " and keep_spaces:
            out.append(ch)
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(text: str, width: int) -> str:
    """text cut to `width` characters, the last one an ellipsis when cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


def esc(text: str) -> str:
    """Text escaped for HTML: element content, or a double- or single-quoted attribute value."""
    return html.escape(text, quote=True)


def unique_id(prefix: str) -> str:
    """A fresh element id, so that two views in one notebook never share one."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def prob(logprob: float) -> float:
    """exp(logprob), 0 for -inf."""
    return math.exp(logprob) if logprob > -math.inf else 0.0


def mix(low: str, high: str, t: float) -> str:
    """The colour a fraction t (clipped to 0..1) of the way from `low` to `high` (#rrggbb)."""
    t = min(1.0, max(0.0, t))
    a = [int(low[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(high[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))
