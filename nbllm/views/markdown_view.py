"""Markdown to safe HTML for chat replies, with highlighted code blocks and tables.

markdown-it-py renders CommonMark plus tables and strikethrough. Raw HTML in the
text is escaped, never passed through, so a reply cannot inject markup or
scripts. Code is highlighted by Pygments with inline styles, so no stylesheet is
needed. An unclosed fence (a reply still streaming) renders as code to the end.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound


def highlight_code(code: str, language: str = "") -> str:
    """Code as HTML spans with inline colours (no wrapping <pre>); escaped plain text if the language is unknown."""
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(nowrap=True, noclasses=True))


def render_markdown(text: str) -> str:
    """Safe HTML for a Markdown text."""
    options = {"html": False, "highlight": lambda code, language, _attrs: highlight_code(code, language)}
    return MarkdownIt("commonmark", options).enable(["table", "strikethrough"]).render(text)
