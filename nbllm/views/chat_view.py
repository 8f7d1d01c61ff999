"""HTML for the chat panel: one message bubble, the status line, and the panel's stylesheet.

User text is shown as escaped plain text, assistant text as Markdown
(markdown_view.py). Every string goes through `esc`; the styles are assets.CHAT_CSS,
scoped to PANEL_CLASS.
"""

from __future__ import annotations

from nbllm.outputs import RequestOutput
from nbllm.views.assets import CHAT_CSS
from nbllm.views.html_text import esc
from nbllm.views.markdown_view import render_markdown

PANEL_CLASS = "nbllm-chat"  # the class CHAT_CSS is scoped to
STYLESHEET = f"<style>{CHAT_CSS}</style>"
_CURSOR = "\u258d"


def message_html(role: str, content: str, streaming: bool = False, note: str = "", failed: bool = False) -> str:
    """One message bubble; `streaming` adds a cursor, `note` a small remark (e.g. "stopped");
    a `failed` message (never sent again) is crossed out, its note shown as an error."""
    text = content + _CURSOR if streaming else content  # inside the text, so it ends the last line
    body = render_markdown(text) if role == "assistant" else esc(text)
    remark = f'<div class="nbllm-note{" nbllm-error" if failed else ""}">{esc(note)}</div>' if note else ""
    state = " nbllm-failed" if failed else ""
    return (f'<div class="nbllm-msg nbllm-{esc(role)}{state}"><div class="nbllm-role">{esc(role)}</div>'
            f"{body}{remark}</div>")


def status_html(text: str, error: bool = False) -> str:
    """The status line under the panel's buttons."""
    css = "nbllm-status nbllm-error" if error else "nbllm-status"
    return f'<div class="{css}">{esc(text)}</div>'


def progress_text(output: RequestOutput, elapsed: float, state: str) -> str:
    """The status line's numbers: tokens generated, time, tokens/s and the prompt's length."""
    tokens = len(output.outputs[0].token_ids)
    rate = tokens / elapsed if elapsed > 0 else 0.0
    return (f"{state} · {tokens} tokens in {elapsed:.1f}s · {rate:.1f} tokens/s · "
            f"prompt {len(output.prompt_token_ids or [])} tokens")
