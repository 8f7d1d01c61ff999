"""The chat panel's message box: Enter sends, Shift+Enter starts a new line.

ipywidgets' Textarea cannot tell the two keys apart, so this is a small anywidget
(an inline ES module, no front-end extension to build; it works offline). Its
`value` syncs as the user types; Enter without Shift sends a "submit" message that
`on_submit` callbacks receive with the text. The key handler listens on the window
in the capture phase, so it sees Enter before the notebook's own shortcuts do
(Shift+Enter would otherwise run the cell), and it only acts on its own box.
"""

from __future__ import annotations

from typing import Callable

import anywidget
import traitlets

_ESM = """
function render({ model, el }) {
  const box = document.createElement("textarea");
  box.rows = 2;
  box.placeholder = model.get("placeholder");
  box.value = model.get("value");
  box.disabled = model.get("disabled");
  box.style.cssText = "width: 100%; box-sizing: border-box; resize: vertical; font: inherit; padding: 4px 6px;";
  const sync = () => { model.set("value", box.value); model.save_changes(); };
  box.addEventListener("input", sync);
  const onKey = (event) => {
    if (event.target !== box || event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    if (event.shiftKey) {
      box.setRangeText("\\n", box.selectionStart, box.selectionEnd, "end");
      sync();
      return;
    }
    sync();
    model.send({ type: "submit", value: box.value });
  };
  window.addEventListener("keydown", onKey, true);
  model.on("change:value", () => { if (box.value !== model.get("value")) box.value = model.get("value"); });
  model.on("change:disabled", () => { box.disabled = model.get("disabled"); });
  el.appendChild(box);
  return () => window.removeEventListener("keydown", onKey, true);
}
export default { render };
"""


class ChatInput(anywidget.AnyWidget):
    """A multi-line input whose Enter key submits and Shift+Enter adds a line."""

    _esm = _ESM
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("Message (Enter sends, Shift+Enter new line)").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._submit_callbacks: list[Callable[[str], None]] = []
        self.on_msg(self._handle_message)

    def on_submit(self, callback: Callable[[str], None]) -> None:
        """Call `callback(text)` when the user presses Enter."""
        self._submit_callbacks.append(callback)

    def submit(self, text: str) -> None:
        """What pressing Enter does (tests and scripts may call it directly)."""
        self.value = text
        for callback in list(self._submit_callbacks):
            callback(text)

    def _handle_message(self, _widget, content: dict, _buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "submit":
            self.submit(str(content.get("value", "")))
