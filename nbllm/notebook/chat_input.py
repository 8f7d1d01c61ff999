"""The chat panel's message box and Send button: Enter sends, Shift+Enter starts a new line.

ipywidgets' Textarea cannot tell the two keys apart, so this is a small anywidget
(an inline ES module, no front-end extension to build; it works offline). Its
`value` syncs as the user types. Enter (or the Send button) clears the box in the
browser and sends the text in a "submit" message, which `on_submit` callbacks
receive. The browser clears the box itself, and sets `value` to "" before the
message goes, because ipywidgets holds back value updates while earlier ones are
unanswered and sends them later: had the kernel cleared the box, a held-back update
would bring the sent text back into it. So the kernel never writes `value` while
handling a submit; a text it refuses (a reply is still streaming) goes back with a
"restore" message, into the box only if the box is still empty. While `busy`, the
browser keeps the text in the box. The key handler listens on the window in the
capture phase, so it sees Enter before the notebook's own shortcuts do (Shift+Enter
would otherwise run the cell), and it only acts on its own box.
"""

from __future__ import annotations

from typing import Callable

import anywidget
import traitlets

from nbllm.views.widget_js import WATCH_KERNEL_JS

_ESM = WATCH_KERNEL_JS + """
function render({ model, el }) {
  const row = document.createElement("div");
  row.style.cssText = "display: flex; gap: 6px; align-items: stretch; width: 100%;";
  const box = document.createElement("textarea");
  box.rows = 2;
  box.placeholder = model.get("placeholder");
  box.value = model.get("value");
  box.style.cssText = "flex: 1 1 auto; box-sizing: border-box; resize: vertical; font: inherit; padding: 4px 6px;";
  const send = document.createElement("button");
  send.className = "jupyter-button mod-primary nbllm-send";
  send.textContent = "Send";
  send.style.cssText = "flex: 0 0 auto; height: auto; min-height: 28px;";
  const enable = () => {
    box.disabled = model.get("disabled");
    send.disabled = model.get("disabled") || model.get("busy");
  };
  enable();
  const sync = () => { model.set("value", box.value); model.save_changes(); };
  const submit = () => {
    const text = box.value;
    if (model.get("busy")) {  // a reply is streaming: the kernel says so, the text stays in the box
      model.send({ type: "submit", value: text, cleared: false });
      return;
    }
    if (!text.trim()) return;
    box.value = "";
    sync();  // a value update still held back is now "": the sent text cannot come back
    model.send({ type: "submit", value: text, cleared: true });
  };
  box.addEventListener("input", sync);
  send.addEventListener("click", submit);
  const onKey = (event) => {
    if (event.target !== box || event.key !== "Enter" || event.isComposing) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    if (event.shiftKey) {
      box.setRangeText("\\n", box.selectionStart, box.selectionEnd, "end");
      sync();
      return;
    }
    submit();
  };
  window.addEventListener("keydown", onKey, true);
  model.on("change:value", () => {
    // the kernel only writes value for Undo, load or a restore; never while the user is mid-message
    if (box.value !== model.get("value")) box.value = model.get("value");
  });
  model.on("change:disabled", enable);
  model.on("change:busy", enable);
  model.on("msg:custom", (msg) => {
    if (msg && msg.type === "restore" && !box.value) {
      box.value = msg.value;
      sync();
    }
  });
  row.append(box, send);
  el.appendChild(row);
  watchKernel(el, model, () => { box.disabled = true; send.disabled = true; });
  return () => window.removeEventListener("keydown", onKey, true);
}
export default { render };
"""

SubmitCallback = Callable[[str], bool]


class ChatInput(anywidget.AnyWidget):
    """A multi-line input with a Send button; Enter submits and Shift+Enter adds a line.

    `busy` (set by the panel while a reply streams) disables Send and keeps text in the box.
    """

    _esm = _ESM
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("Message (Enter sends, Shift+Enter new line)").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._submit_callbacks: list[SubmitCallback] = []
        self.on_msg(self._handle_message)

    def on_submit(self, callback: SubmitCallback) -> None:
        """Call `callback(text)` when the user sends; it returns False when it refuses the text."""
        self._submit_callbacks.append(callback)

    def submit(self, text: str) -> bool:
        """What Enter or Send does, without the browser (tests and scripts); False if a callback refused."""
        return all([callback(text) for callback in list(self._submit_callbacks)])

    def _handle_message(self, _widget, content: dict, _buffers) -> None:
        if not (isinstance(content, dict) and content.get("type") == "submit"):
            return
        text = str(content.get("value", ""))
        cleared = bool(content.get("cleared"))
        if self.submit(text):
            if not cleared and self.value == text:  # sent while the browser still thought a reply was streaming
                self.value = ""
        elif cleared:
            self.send({"type": "restore", "value": text})
