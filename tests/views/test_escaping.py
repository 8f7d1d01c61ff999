"""One HTML-escaping helper: nbllm.views.html_text.esc is the only code in nbllm that calls html.escape."""

from __future__ import annotations

import ast
from pathlib import Path

import nbllm

PACKAGE = Path(nbllm.__file__).parent
HELPER = PACKAGE / "views" / "html_text.py"


def escaping_calls(path: Path) -> list[int]:
    """Lines that import or call an HTML escaper (html.escape, markupsafe)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr == "escape" and getattr(node.value, "id", "") == "html":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in ("html", "markupsafe"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Import) and any(alias.name == "markupsafe" for alias in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_helper_escapes_html():
    offenders = {str(p.relative_to(PACKAGE)): escaping_calls(p) for p in sorted(PACKAGE.rglob("*.py")) if p != HELPER}
    assert {path: lines for path, lines in offenders.items() if lines} == {}
    assert escaping_calls(HELPER), "the helper itself escapes with html.escape"
