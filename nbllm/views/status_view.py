"""`%nbllm status` as HTML: a two-column table of (name, value) rows, every text escaped."""

from __future__ import annotations

from typing import Iterable

from nbllm.views.html_text import esc


def status_table_html(rows: Iterable[tuple[str, str]]) -> str:
    """A table with one row per (name, value), the names as row headers."""
    cells = "".join(f"<tr><th style='text-align:left'>{esc(name)}</th>"
                    f"<td style='text-align:left'>{esc(value)}</td></tr>" for name, value in rows)
    return f"<table class='nbllm-status'>{cells}</table>"
