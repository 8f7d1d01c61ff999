"""The chat panel's log: a scroll box of message bubbles, as a small anywidget.

The kernel sends the messages as HTML (nbllm.views.chat_view): `messages` holds the
finished ones and `live` the reply being streamed, so a streaming update sends one
message, not the whole conversation. The browser (nbllm.views.widget_js) keeps the
box scrolled to the newest text while the reader is at the bottom, limits it to
`max_height`, and gives code blocks Copy and Insert-into-a-cell buttons.
"""

from __future__ import annotations

import anywidget
import traitlets

from nbllm.views.widget_js import CHAT_LOG_ESM


class ChatLog(anywidget.AnyWidget):
    """Message bubbles in a scroll box; `messages` (finished) then `live` (streaming)."""

    _esm = CHAT_LOG_ESM
    messages = traitlets.List(traitlets.Unicode()).tag(sync=True)
    live = traitlets.Unicode("").tag(sync=True)
    max_height = traitlets.Unicode("480px").tag(sync=True)
