"""HTML for the chat panel: one message bubble, the status line, and the panel's stylesheet.

User text is shown as escaped plain text; assistant text as Markdown (see
markdown.py). Styles use JupyterLab's theme variables with light fallbacks, so the
panel follows the theme in Lab and still reads in Notebook 7 and VS Code.
"""

from __future__ import annotations

import html
from typing import Any

from nbllm.notebook.markdown import render_markdown

PANEL_CLASS = "nbllm-chat"
_CURSOR = "\u258d"

STYLESHEET = f"""<style>
.{PANEL_CLASS} .nbllm-msg {{ padding: 6px 10px; margin: 4px 0; border-radius: 8px; line-height: 1.45;
  max-width: 100%; overflow-x: auto; color: var(--jp-content-font-color1, #111); }}
.{PANEL_CLASS} .nbllm-user {{ background: var(--jp-brand-color3, #dbeafe); margin-left: 15%; white-space: pre-wrap; }}
.{PANEL_CLASS} .nbllm-assistant {{ background: var(--jp-layout-color2, #f1f1f1); margin-right: 5%; }}
.{PANEL_CLASS} .nbllm-role {{ font-size: 11px; font-weight: 600; opacity: 0.6; margin-bottom: 2px; }}
.{PANEL_CLASS} .nbllm-msg pre {{ background: var(--jp-cell-editor-background, #f7f7f7); padding: 6px 8px;
  border-radius: 4px; overflow-x: auto; }}
.{PANEL_CLASS} .nbllm-msg p {{ margin: 0.3em 0; }}
.{PANEL_CLASS} .nbllm-note {{ font-size: 11px; opacity: 0.6; font-style: italic; }}
.{PANEL_CLASS} .nbllm-status {{ font-size: 12px; opacity: 0.8; }}
.{PANEL_CLASS} .nbllm-error {{ color: var(--jp-error-color1, #b00020); }}
</style>"""


def message_html(role: str, content: str, streaming: bool = False, note: str = "") -> str:
    """One message bubble; `streaming` adds a cursor, `note` a small remark (e.g. "stopped")."""
    text = content + _CURSOR if streaming else content  # inside the text, so it ends the last line
    body = render_markdown(text) if role == "assistant" else html.escape(text)
    remark = f'<div class="nbllm-note">{html.escape(note)}</div>' if note else ""
    return (f'<div class="nbllm-msg nbllm-{html.escape(role)}"><div class="nbllm-role">{html.escape(role)}</div>'
            f"{body}{remark}</div>")


def status_html(text: str, error: bool = False) -> str:
    """The status line under the panel's buttons."""
    css = "nbllm-status nbllm-error" if error else "nbllm-status"
    return f'<div class="{css}">{html.escape(text)}</div>'


def progress_text(output: Any, elapsed: float, state: str) -> str:
    """The status line's numbers: tokens generated, time, tokens/s and the prompt's length."""
    tokens = len(output.outputs[0].token_ids)
    rate = tokens / elapsed if elapsed > 0 else 0.0
    return (f"{state} · {tokens} tokens in {elapsed:.1f}s · {rate:.1f} tokens/s · "
            f"prompt {len(output.prompt_token_ids or [])} tokens")
