"""Markdown to safe HTML for chat replies, with highlighted code blocks.

Raw HTML in the text is escaped, never passed through, so a reply cannot inject
markup or scripts. markdown-it-py (CommonMark) renders when it is installed;
otherwise a small renderer handles fenced code, inline code, headings, lists,
emphasis and paragraphs. Code is highlighted by Pygments with inline styles, so
no stylesheet is needed. Unclosed fences (a reply still streaming) render too.
"""

from __future__ import annotations

import html
import re
from typing import Callable, Optional

_FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_EMPHASIS = [
    (re.compile(r"\*\*(\S(?:.*?\S)?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])"), r"<em>\1</em>"),
]
_BULLET = re.compile(r"^\s*[-*+]\s+")
_NUMBER = re.compile(r"^\s*\d+[.)]\s+")


def highlight_code(code: str, language: str = "") -> str:
    """Code as HTML spans with inline colours (no wrapping <pre>); escaped text if unknown."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(nowrap=True, noclasses=True))


def render_markdown(text: str) -> str:
    """Safe HTML for a Markdown text."""
    renderer = _markdown_it_renderer()
    return renderer(text) if renderer is not None else render_markdown_basic(text)


def _markdown_it_renderer() -> Optional[Callable[[str], str]]:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return None
    md = MarkdownIt("commonmark", {"html": False, "highlight": lambda code, lang, _attrs: highlight_code(code, lang)})
    return md.render


def render_markdown_basic(text: str) -> str:
    """The fallback renderer: fenced code blocks, then block and inline Markdown on the rest."""
    parts, position = [], 0
    for match in _FENCE.finditer(text):
        parts.append(_render_blocks(text[position:match.start()]))
        language = html.escape(match.group(1), quote=True)
        parts.append(f'<pre><code class="language-{language}">{highlight_code(match.group(2), match.group(1))}'
                     f"</code></pre>")
        position = match.end()
    parts.append(_render_blocks(text[position:]))
    return "".join(parts)


def _render_blocks(text: str) -> str:
    out = []
    for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", lines[0])
        if heading and len(lines) == 1:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif all(_BULLET.match(line) for line in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(_BULLET.sub('', line))}</li>" for line in lines) + "</ul>")
        elif all(_NUMBER.match(line) for line in lines):
            out.append("<ol>" + "".join(f"<li>{_inline(_NUMBER.sub('', line))}</li>" for line in lines) + "</ol>")
        else:
            out.append("<p>" + "<br>\n".join(_inline(line) for line in lines) + "</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escaped text with `code`, **strong** and *emphasis*; nothing inside code is styled."""
    pieces = _INLINE_CODE.split(text)  # even indexes: prose, odd: code spans
    out = []
    for i, piece in enumerate(pieces):
        escaped = html.escape(piece, quote=False)
        if i % 2:
            out.append(f"<code>{escaped}</code>")
            continue
        for pattern, replacement in _EMPHASIS:
            escaped = pattern.sub(replacement, escaped)
        out.append(escaped)
    return "".join(out)
