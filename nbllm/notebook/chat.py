"""ChatPanel: an ipywidgets chat on the kernel's engine, replies streamed as they are generated.

The panel's state is plain Python (the log's entries) plus widgets. Sending runs in
the kernel's main thread: the conversation is submitted there (`submit_chat`), so
bad input is known at once and the request id before the first token. A message
the engine refuses (a prompt over the context window, say) stays in the log marked
failed, with what to do, and is never sent again; a reply that fails while it
streams marks its exchange failed the same way. The reply is read by a worker
thread that only sets widget traits; a stale worker (its turn was stopped or
cleared away) changes nothing. Stop aborts the request at once and returns when the
engine has ended it (its KV blocks are free). Several panels on one engine are
batched together; any EngineClient (LLM or RemoteLLM) will do.

The message box and Send button (chat_input.py) and the log (chat_log.py) are small
anywidgets: Enter sends, Shift+Enter starts a new line; the log scrolls and gives
code blocks Copy and Insert buttons. Sampling defaults: chat_defaults.py.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import ipywidgets as widgets

from nbllm.errors import InvalidParameter
from nbllm.notebook.chat_defaults import chat_sampling_params
from nbllm.notebook.chat_input import ChatInput
from nbllm.notebook.chat_log import ChatLog
from nbllm.notebook.session import resolve_engine
from nbllm.outputs import RequestOutput
from nbllm.protocol import EngineClient
from nbllm.sampling_params import RequestOutputKind, SamplingParams
from nbllm.streams import RequestStream
from nbllm.views.chat_view import PANEL_CLASS, STYLESHEET, message_html, progress_text, status_html

ROLES = ("system", "user", "assistant")
_UPDATE_INTERVAL_S = 0.05
_STOP_TIMEOUT_S = 10.0


class ChatState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class _Entry:
    """One message of the log; a failed one is shown but left out of the conversation."""

    message: dict
    note: str = ""
    failed: bool = False
    _shown: tuple = field(default=(), repr=False, compare=False)  # (content, note, failed, html) last rendered

    @property
    def role(self) -> str:
        return self.message["role"]

    def html(self, streaming: bool = False) -> str:
        """The bubble; a finished message is rendered (Markdown, highlighting) once per change, not per sync."""
        if streaming:
            return message_html(self.role, self.message["content"], True, self.note, self.failed)
        key = (self.message["content"], self.note, self.failed)
        if self._shown[:3] != key:
            self._shown = (*key, message_html(self.role, self.message["content"], False, self.note, self.failed))
        return self._shown[3]


@dataclass
class _Turn:
    """One assistant reply being generated for the user's message `user`."""

    user: _Entry
    reply: _Entry
    stream: RequestStream  # its request id is known from submit: Stop can abort before the first token
    stop: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None


class ChatPanel(widgets.VBox):
    """A chat with the kernel's engine (or `llm`); `panel.messages` holds the conversation."""

    def __init__(self, llm: Optional[EngineClient] = None, system_prompt: Optional[str] = None,
                 sampling_params: Optional[SamplingParams] = None, max_height: str = "480px") -> None:
        self.llm = resolve_engine(llm)
        defaults = chat_sampling_params(self.llm) if sampling_params is None else None
        self._base_params = sampling_params or defaults.params
        self._entries: list[_Entry] = []
        self._turn: Optional[_Turn] = None
        self._lock = threading.Lock()
        self.chat_state = ChatState.IDLE
        self._build(system_prompt or "", self._base_params, max_height)
        where = f" · sampling: {defaults.source}" if defaults is not None else ""
        self.status.value = status_html(f"{self.llm.model_name} ready{where}")
        super().__init__([widgets.HTML(STYLESHEET), self.chat_log, self.input, self._buttons, self._settings,
                          self.status])
        self.add_class(PANEL_CLASS)
        self.add_class("nbllm-panel")

    def _build(self, system_prompt: str, params: SamplingParams, max_height: str) -> None:
        full = widgets.Layout(width="100%")
        self.chat_log = ChatLog(max_height=max_height, layout=full)
        self.input = ChatInput(layout=full)
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
        self.max_tokens = widgets.BoundedIntText(value=min(params.max_tokens or 256, max_len), min=1, max=max_len,
                                                 description="max tokens", style=labelled,
                                                 layout=widgets.Layout(width="170px"))
        self.status = widgets.HTML()
        buttons = [self.stop_button, self.regenerate_button, self.undo_button, self.clear_button]
        for button in buttons:
            button.layout = widgets.Layout(width="auto")
            button.add_class(f"nbllm-{button.description.lower()}")  # stable hooks for styling and tests
        self.input.add_class("nbllm-chat-input")
        self.chat_log.add_class("nbllm-chat-log")
        self.status.add_class("nbllm-chat-status")
        self._buttons = widgets.HBox(buttons)
        self._settings = widgets.VBox([self.system_prompt, widgets.HBox([self.temperature, self.top_p,
                                                                         self.max_tokens])], layout=full)
        self.stop_button.on_click(self._guarded(lambda _: self.stop()))
        self.regenerate_button.on_click(self._guarded(lambda _: self.regenerate()))
        self.undo_button.on_click(self._guarded(lambda _: self.undo()))
        self.clear_button.on_click(self._guarded(lambda _: self.clear()))
        self.input.on_submit(self._on_submit)

    # ------------------------------------------------------------------ conversation
    @property
    def messages(self) -> list[dict]:
        """The conversation as chat messages (failed ones left out), the system prompt first when there is one."""
        with self._lock:
            history = [dict(e.message) for e in self._entries if not e.failed]
        system = self.system_prompt.value.strip()
        return ([{"role": "system", "content": system}] if system else []) + history

    def send_message(self, text: Optional[str] = None) -> None:
        """Send a user message (the input box's text by default) and stream the reply.

        A message the engine refuses stays in the log, marked failed; the status line says why.
        """
        from_box = text is None
        text = (self.input.value if from_box else text).strip()
        if not text:
            return
        self._require_idle()
        if from_box:
            self.input.value = ""
        entry = _Entry({"role": "user", "content": text})
        with self._lock:
            self._entries.append(entry)
        self._start_reply(entry)

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
            self._sync_log()
            self.status.value = status_html("stopped (the engine is slow to answer)", error=True)

    def regenerate(self) -> None:
        """Replace the last reply with a new one (a failed message is tried again)."""
        self.stop()
        with self._lock:
            if self._entries and self._entries[-1].role == "assistant":
                self._entries.pop()
            last = self._entries[-1] if self._entries else None
        if last is None or last.role != "user":
            self._sync_log()
            raise RuntimeError("nothing to regenerate: send a message first")
        last.failed, last.note = False, ""
        self._start_reply(last)

    def undo(self) -> None:
        """Remove the last exchange (failed or not). Its message goes back into the input box,
        unless the box holds text, which is never overwritten."""
        self.stop()
        removed: list[_Entry] = []
        with self._lock:
            for role in ("assistant", "user"):
                if self._entries and self._entries[-1].role == role:
                    removed.append(self._entries.pop())
        self._sync_log()
        users = [e for e in removed if e.role == "user"]
        if not removed:
            self.status.value = status_html("nothing to undo")
        elif users and not self.input.value.strip():
            self.input.value = users[0].message["content"]
            self.status.value = status_html("removed the last exchange; its message is back in the box")
        else:
            self.status.value = status_html("removed the last exchange (the text in the box was kept)")

    def clear(self) -> None:
        """Stop any reply and forget the conversation (the system prompt stays)."""
        self.stop()
        with self._lock:
            self._entries = []
        self._sync_log()
        self.status.value = status_html("cleared")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the current reply is done; True if the panel is idle."""
        turn = self._turn
        if turn is not None and turn.thread is not None:
            turn.thread.join(timeout)
        return self.chat_state is ChatState.IDLE

    def export_json(self, indent: Optional[int] = 2) -> str:
        """The conversation (system prompt first, failed messages left out) as a JSON list of {"role", "content"}."""
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
        with self._lock:
            self._entries = [_Entry({"role": m["role"], "content": m["content"]}) for m in messages]
        self._sync_log()
        self.status.value = status_html(f"loaded {len(messages)} messages")

    # ------------------------------------------------------------------ internals
    def _on_submit(self, text: str) -> bool:
        """Enter or Send in the browser; False (the text goes back into the box) when a reply still streams."""
        try:
            self.send_message(text)
        except Exception as exc:
            self.status.value = status_html(f"error: {exc}", error=True)
            return False
        return True

    def _require_idle(self) -> None:
        if self.chat_state is not ChatState.IDLE:
            raise RuntimeError("a reply is still streaming: press Stop first")

    def _start_reply(self, user: _Entry) -> None:
        try:
            params = self._base_params.updated(temperature=self.temperature.value, top_p=self.top_p.value,
                                               max_tokens=self.max_tokens.value, n=1,
                                               output_kind=RequestOutputKind.CUMULATIVE)
            stream = self.llm.submit_chat(self.messages, params)  # in this thread: bad input raises here
        except Exception as exc:
            user.failed, user.note = True, f"not sent: {exc}"
            self._sync_log()
            self.status.value = status_html(_advice(exc), error=True)
            return
        reply = _Entry({"role": "assistant", "content": ""})
        turn = _Turn(user, reply, stream)
        turn.thread = threading.Thread(target=self._read_reply, args=(turn,), daemon=True, name="nbllm-chat-reply")
        with self._lock:
            self._entries.append(reply)
            self._turn = turn
        self._set_state(ChatState.RUNNING)
        self._sync_log()
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
                turn.reply.message["content"] = output.outputs[0].text
                now = time.monotonic()
                if now - last_update >= _UPDATE_INTERVAL_S and not output.finished and self._is_current(turn):
                    last_update = now
                    self.chat_log.live = turn.reply.html(streaming=True)
                    self.status.value = status_html(self._progress(output, now - started, "streaming"))
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
        reply = turn.reply
        if error is not None:
            state = f"error: {error}"
            turn.user.failed, turn.user.note = True, "no reply: left out of the conversation"
            reply.failed, reply.note = True, f"failed: {error}"
        elif stopped:
            state = reply.note = "stopped"
        else:
            reason = output.outputs[0].finish_reason if output else None
            state = "max tokens reached" if reason == "length" else "done"
            reply.note = "" if state == "done" else state
        if not reply.message["content"]:
            with self._lock:  # an empty reply would only confuse the next turn
                if self._entries and self._entries[-1] is reply:
                    self._entries.pop()
        self._sync_log()
        text = self._progress(output, elapsed, state) if output is not None else state
        self.status.value = status_html(_advice(error) if error is not None else text, error=error is not None)

    def _progress(self, output: RequestOutput, elapsed: float, state: str) -> str:
        """The status line's numbers; characters for an engine without token ids (a server that is not nbllm
        or vLLM), never a token count of 0 that is wrong."""
        if self.llm.capabilities.token_ids:
            return progress_text(output, elapsed, state)
        return f"{state} · {len(output.outputs[0].text)} characters in {elapsed:.1f}s (the server sends no token ids)"

    def _sync_log(self) -> None:
        """Show the entries: the one streaming (if any) as the log's live message, the others finished."""
        with self._lock:
            turn = self._turn
            streaming = turn.reply if turn is not None and not turn.stop.is_set() else None
            shown = [e.html() for e in self._entries if e is not streaming]
            live = streaming.html(streaming=True) if streaming is not None else ""
        with self.chat_log.hold_sync():  # one message to the browser: the reply never shows twice or not at all
            self.chat_log.messages = shown
            self.chat_log.live = live

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
        self.input.busy = state is not ChatState.IDLE
        self.stop_button.disabled = state is not ChatState.RUNNING

    def _guarded(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """Wrap a widget callback so its exception shows in the status line instead of vanishing."""
        def run(arg: Any) -> None:
            try:
                handler(arg)
            except Exception as exc:
                self.status.value = status_html(f"error: {exc}", error=True)
        return run


def _advice(error: BaseException) -> str:
    """The status line for a failed turn: what went wrong and what to do about it."""
    if isinstance(error, InvalidParameter) and error.param == "prompt":
        return (f"not sent: {error}. The message is marked failed and left out of the conversation: "
                f"Undo puts it back into the box to shorten it, Clear starts a new conversation.")
    return (f"failed: {error}. The exchange is marked failed and left out of the conversation: "
            f"Regenerate tries it again, Undo puts the message back into the box.")
