"""Chat message and status HTML: Markdown replies (code highlighted, tables), everything else escaped."""

from __future__ import annotations

from html_tree import parse

from nbllm.views.chat_view import message_html, status_html
from nbllm.views.markdown_view import render_markdown


def test_markdown_replies_are_safe_and_highlighted():
    html = render_markdown("**Bold** <script>alert(1)</script>\n\n```python\ndef f():\n    return 1\n```\n\n- a\n- b")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<strong>Bold</strong>" in html and "<li>a</li>" in html
    assert '<span style="color:' in html, "code is highlighted with inline colours"


def test_markdown_tables_render():
    table = parse(render_markdown("| model | <b>tokens/s</b> |\n|---|--:|\n| nbllm | 12 |\n"))
    assert [th.text() for th in table.find_all("th")] == ["model", "<b>tokens/s</b>"]
    assert [td.text() for td in table.find_all("td")] == ["nbllm", "12"]


def test_a_streaming_reply_with_an_open_fence_is_code():
    html = message_html("assistant", "Here:\n```python\nx = 1", streaming=True)
    code = parse(html).find_all("code")[0]
    assert code.attrs["class"] == "language-python" and "x = 1\u258d" in code.text()


def test_user_text_notes_and_status_are_escaped():
    user = parse(message_html("user", "<b>hi</b> **not bold**", note="<i>stopped</i>"))
    assert not user.find_all("b") and not user.find_all("i") and not user.find_all("strong")
    assert "<b>hi</b> **not bold**" in user.text() and "<i>stopped</i>" in user.text()
    status = parse(status_html("error: <img src=x onerror=alert(1)>", error=True))
    assert not status.find_all("img") and status.find_all("div")[0].classes() == {"nbllm-status", "nbllm-error"}
