"""ChatPanel: an ipywidgets chat on the kernel's engine, replies streamed as they are generated.

The panel's state is plain Python (the message list) plus widgets. Buttons and
`send_message()` run in the kernel's main thread: they render the conversation with
the engine's chat template and `submit` it there, so bad input raises at once and
shows in the status line, and the request id is known before the first token. The
reply is read by a worker thread that only sets widget traits; a stale worker (its
turn was stopped or cleared away) changes nothing. Stop aborts the request at once
and returns when the engine has ended it (its KV blocks are free). Several panels on
one engine are batched together; any EngineClient (LLM or RemoteLLM) will do.

Keys: Enter sends, Shift+Enter starts a new line (the message box is a small
anywidget, chat_input.py, since ipywidgets' Textarea cannot tell the two apart).
"""

from __future__ import annotations

import enum
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import ipywidgets as widgets

from nbllm.notebook.chat_input import ChatInput
from nbllm.notebook.session import resolve_engine
from nbllm.outputs import RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import RequestOutputKind, SamplingParams
from nbllm.streams import RequestStream
from nbllm.views.chat_view import PANEL_CLASS, STYLESHEET, message_html, progress_text, status_html

ROLES = ("system", "user", "assistant")
_UPDATE_INTERVAL_S = 0.05
_STOP_TIMEOUT_S = 10.0
_DEFAULT_MAX_TOKENS = 256


class ChatState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class _Turn:
    """One assistant reply being generated."""

    message: dict
    view: widgets.HTML
    stream: RequestStream  # its request id is known from submit: Stop can abort before the first token
    stop: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None


class ChatPanel(widgets.VBox):
    """A chat with the kernel's engine (or `llm`); `panel.messages` holds the conversation."""

    def __init__(self, llm: Optional[EngineClient] = None, system_prompt: Optional[str] = None,
                 sampling_params: Optional[SamplingParams] = None) -> None:
        self.llm = resolve_engine(llm)
        self._base_params = sampling_params or self.llm.get_default_sampling_params().updated(
            max_tokens=_DEFAULT_MAX_TOKENS)
        self._history: list[dict] = []
        self._views: list[widgets.HTML] = []
        self._turn: Optional[_Turn] = None
        self._lock = threading.Lock()
        self.chat_state = ChatState.IDLE
        self._build(system_prompt or "", self._base_params)
        super().__init__([widgets.HTML(STYLESHEET), self._log, self._input_row, self._settings, self.status])
        self.add_class(PANEL_CLASS)

    def _build(self, system_prompt: str, params: SamplingParams) -> None:
        full = widgets.Layout(width="100%")
        self._log = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.input = ChatInput(layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.regenerate_button = widgets.Button(description="Regenerate", icon="refresh")
        self.undo_button = widgets.Button(description="Undo", icon="undo")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        labelled = {"description_width": "initial"}
        self.system_prompt = widgets.Textarea(value=system_prompt, placeholder="(optional)", rows=1,
                                              description="System prompt", style=labelled, layout=full)
        max_len = self.llm.max_model_len or 4096  # a remote server may not say
        self.temperature = widgets.FloatSlider(value=params.temperature, min=0.0, max=2.0, step=0.05,
                                               description="temperature", style=labelled)
        self.top_p = widgets.FloatSlider(value=params.top_p, min=0.05, max=1.0, step=0.05, description="top_p",
                                         style=labelled)
        self.max_tokens = widgets.IntSlider(value=min(params.max_tokens or 256, max_len), min=1, max=max_len,
                                            description="max tokens", style=labelled)
        self.status = widgets.HTML(status_html(f"{self.llm.model_name} ready"))
        buttons = [self.send_button, self.stop_button, self.regenerate_button, self.undo_button, self.clear_button]
        for button in buttons:
            button.layout = widgets.Layout(width="auto")
            button.add_class(f"nbllm-{button.description.lower()}")  # stable hooks for styling and tests
        self.input.add_class("nbllm-chat-input")
        self.status.add_class("nbllm-chat-status")
        self._input_row = widgets.VBox([self.input, widgets.HBox(buttons)], layout=full)
        self._settings = widgets.VBox([self.system_prompt, widgets.HBox([self.temperature, self.top_p,
                                                                         self.max_tokens])], layout=full)
        self.send_button.on_click(self._guarded(lambda _: self.send_message()))
        self.stop_button.on_click(self._guarded(lambda _: self.stop()))
        self.regenerate_button.on_click(self._guarded(lambda _: self.regenerate()))
        self.undo_button.on_click(self._guarded(lambda _: self.undo()))
        self.clear_button.on_click(self._guarded(lambda _: self.clear()))
        self.input.on_submit(self._guarded(self.send_message))

    # ------------------------------------------------------------------ conversation
    @property
    def messages(self) -> list[dict]:
        """The conversation as chat messages, the system prompt first when there is one."""
        with self._lock:
            history = [dict(m) for m in self._history]
        system = self.system_prompt.value.strip()
        return ([{"role": "system", "content": system}] if system else []) + history

    def send_message(self, text: Optional[str] = None) -> None:
        """Send a user message (the input box's text by default) and stream the reply."""
        text = (self.input.value if text is None else text).strip()
        if not text:
            return
        self._require_idle()
        self.input.value = ""
        self._append({"role": "user", "content": text})
        self._start_reply()

    def stop(self) -> None:
        """Abort the streaming reply, even before its first token; returns once the engine has ended it
        (its blocks are free). The partial reply stays."""
        turn = self._turn
        if turn is None or turn.thread is None or not turn.thread.is_alive():
            return
        self._set_state(ChatState.STOPPING)
        turn.stop.set()
        self.llm.abort(turn.stream.request_id)
        turn.thread.join(_STOP_TIMEOUT_S)
        if turn.thread.is_alive():  # the engine did not answer in time: detach the worker, it is stale now
            self._detach(turn)
            self.status.value = status_html("stopped (the engine is slow to answer)", error=True)

    def regenerate(self) -> None:
        """Replace the last reply with a new one."""
        self.stop()
        if self._history and self._history[-1]["role"] == "assistant":
            self._pop()
        if not self._history or self._history[-1]["role"] != "user":
            raise RuntimeError("nothing to regenerate: send a message first")
        self._start_reply()

    def undo(self) -> None:
        """Remove the last exchange; the user's text goes back into the input box."""
        self.stop()
        if self._history and self._history[-1]["role"] == "assistant":
            self._pop()
        if self._history and self._history[-1]["role"] == "user":
            self.input.value = self._pop()["content"]

    def clear(self) -> None:
        """Stop any reply and forget the conversation (the system prompt stays)."""
        self.stop()
        with self._lock:
            views, self._history, self._views = self._views, [], []
        self._log.children = ()
        for view in views:
            view.close()
        self.status.value = status_html("cleared")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the current reply is done; True if the panel is idle."""
        turn = self._turn
        if turn is not None and turn.thread is not None:
            turn.thread.join(timeout)
        return self.chat_state is ChatState.IDLE

    def export_json(self, indent: Optional[int] = 2) -> str:
        """The conversation (system prompt first) as a JSON list of {"role", "content"}."""
        return json.dumps(self.messages, indent=indent, ensure_ascii=False)

    def load_json(self, text: str) -> None:
        """Replace the conversation with one from export_json(); a leading system message sets the prompt."""
        messages = json.loads(text)
        if not isinstance(messages, list):
            raise ValueError(f"a chat must be a JSON list of messages, got {type(messages).__name__}")
        for i, m in enumerate(messages):
            roles = ROLES if i == 0 else ROLES[1:]  # a system message may only come first
            if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} must be {{'role': one of {roles}, 'content': str}}, got {m!r}")
        self.clear()
        has_system = bool(messages) and messages[0]["role"] == "system"
        self.system_prompt.value = messages.pop(0)["content"] if has_system else ""
        for m in messages:
            self._append({"role": m["role"], "content": m["content"]})
        self.status.value = status_html(f"loaded {len(messages)} messages")

    # ------------------------------------------------------------------ internals
    def _require_idle(self) -> None:
        if self.chat_state is not ChatState.IDLE:
            raise RuntimeError("a reply is still streaming: press Stop first")

    def _append(self, message: dict, streaming: bool = False) -> widgets.HTML:
        view = widgets.HTML(message_html(message["role"], message["content"], streaming))
        with self._lock:
            self._history.append(message)
            self._views.append(view)
            self._log.children = tuple(self._views)
        return view

    def _pop(self) -> dict:
        with self._lock:
            message = self._history.pop()
            view = self._views.pop()
            self._log.children = tuple(self._views)
        view.close()
        return message

    def _start_reply(self) -> None:
        params = self._base_params.updated(temperature=self.temperature.value, top_p=self.top_p.value,
                                           max_tokens=self.max_tokens.value, n=1,
                                           output_kind=RequestOutputKind.CUMULATIVE)
        stream = self.llm.submit_chat(self.messages, params)  # in this thread: bad input raises here, id known
        message = {"role": "assistant", "content": ""}
        turn = _Turn(message, self._append(message, streaming=True), stream)
        turn.thread = threading.Thread(target=self._read_reply, args=(turn,), daemon=True, name="nbllm-chat-reply")
        with self._lock:
            self._turn = turn
        self._set_state(ChatState.RUNNING)
        self.status.value = status_html("waiting for the first token...")
        turn.thread.start()

    def _read_reply(self, turn: _Turn) -> None:
        """Worker thread: read outputs and set traits; never prints."""
        started = time.monotonic()
        last_update, output, error = 0.0, None, None
        try:
            for output in turn.stream:
                if turn.stop.is_set():
                    continue  # stopped: wait for the engine to end the request (and free its blocks)
                turn.message["content"] = output.outputs[0].text
                now = time.monotonic()
                if now - last_update >= _UPDATE_INTERVAL_S and not output.finished and self._is_current(turn):
                    last_update = now
                    turn.view.value = message_html("assistant", turn.message["content"], streaming=True)
                    self.status.value = status_html(progress_text(output, now - started, "streaming"))
        except Exception as exc:  # shown in the panel: an exception in a thread would vanish
            error = exc
        finally:
            turn.stream.close()  # a reply left early (an error in this thread) is aborted
            self._finish(turn, output, time.monotonic() - started, error)

    def _finish(self, turn: _Turn, output: Optional[RequestOutput], elapsed: float,
                error: Optional[Exception]) -> None:
        if not self._detach(turn):
            return  # stopped without an answer in time, or replaced: this reply is stale
        stopped = turn.stop.is_set() or (output is not None and output.outputs[0].finish_reason == "abort")
        if error is not None:
            state = f"error: {error!r}"
        elif stopped:
            state = "stopped"
        else:
            reason = output.outputs[0].finish_reason if output else None
            state = "max tokens reached" if reason == "length" else "done"
        if turn.message["content"]:
            note = "" if state == "done" else state
            turn.view.value = message_html("assistant", turn.message["content"], note=note)
        elif self._history and self._history[-1] is turn.message:
            self._pop()  # an empty reply would only confuse the next turn
        self.status.value = status_html(progress_text(output, elapsed, state) if output else state,
                                        error=error is not None)

    def _detach(self, turn: _Turn) -> bool:
        """Make the panel idle if `turn` is the current reply; False if it was not."""
        with self._lock:
            if turn is not self._turn:
                return False
            self._turn = None
        self._set_state(ChatState.IDLE)
        return True

    def _is_current(self, turn: _Turn) -> bool:
        return turn is self._turn and not turn.stop.is_set()

    def _set_state(self, state: ChatState) -> None:
        self.chat_state = state
        self.send_button.disabled = state is not ChatState.IDLE
        self.stop_button.disabled = state is not ChatState.RUNNING

    def _guarded(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """Wrap a widget callback so its exception shows in the status line instead of vanishing."""
        def run(arg: Any) -> None:
            try:
                handler(arg)
            except Exception as exc:
                self.status.value = status_html(f"error: {exc}", error=True)
        return run
