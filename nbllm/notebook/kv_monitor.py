"""KVCacheMonitor: a widget that shows the engine's KV cache live, a few times a second.

A daemon thread polls `llm.get_stats()` (the only thing it reads) and sets one
HTML trait; it never prints. While the engine is idle and nothing changes it
neither records nor redraws. The thread stops on `stop()`/`close()` or when the
engine shuts down (`llm.is_running` turns False). `history` keeps the recorded
samples for `plot_kv_usage`. What the engine cannot report (`llm.capabilities`:
no metrics at all, or no per-block states from a remote server) is said in the widget.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Optional

import ipywidgets as widgets

from nbllm.notebook.session import resolve_engine
from nbllm.protocol import EngineClient
from nbllm.views.kv_view import KVSample, monitor_html, note_html

_JOIN_TIMEOUT_S = 5.0
NO_METRICS = "this engine reports no metrics, so there is nothing to monitor"
NO_BLOCK_STATES = "this engine reports no per-block states: the block grid stays empty"


class KVCacheMonitor(widgets.VBox):
    """Live KV usage chart (90% and 98% lines), block grid, requests, hit rate, preemptions, tokens/s."""

    def __init__(self, llm: Optional[EngineClient] = None, interval: float = 0.25, max_samples: int = 4800) -> None:
        self._stop = threading.Event()  # first: close() (run by __del__ too) must work if __init__ fails
        self._thread: Optional[threading.Thread] = None
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.llm = resolve_engine(llm)
        self.interval = float(interval)
        self._samples: deque[KVSample] = deque(maxlen=max_samples)
        self.view = widgets.HTML(note_html("starting..." if self.llm.capabilities.metrics else NO_METRICS))
        super().__init__([self.view])
        self.add_class("nbllm-kv-monitor")
        if self.llm.capabilities.metrics:
            self._thread = threading.Thread(target=self._run, name="nbllm-kv-monitor", daemon=True)
            self._thread.start()

    @property
    def history(self) -> list[KVSample]:
        """The samples recorded so far (oldest first), for `plot_kv_usage`."""
        return list(self._samples)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def update(self) -> bool:
        """Take one sample and redraw if anything changed; True if it redrew."""
        snapshot = self.llm.get_stats()
        sample = KVSample.from_snapshot(snapshot)
        last: Optional[KVSample] = self._samples[-1] if self._samples else None
        if last is not None and sample.same_state(last) and not (sample.num_requests_running
                                                                   or sample.num_requests_waiting):
            return False
        self._samples.append(sample)
        picture = monitor_html(snapshot, self._samples)
        self.view.value = picture if self.llm.capabilities.block_states else picture + note_html(NO_BLOCK_STATES)
        return True

    def stop(self) -> None:
        """Stop updating (the picture stays as it was)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT_S)

    def close(self) -> None:
        self.stop()
        super().close()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.llm.is_running:
                self.view.value = self.view.value + note_html("the engine has shut down; monitor stopped")
                return
            try:
                self.update()
            except Exception as exc:  # shown in the widget: an exception in a thread would vanish
                self.view.value = note_html(f"could not read the engine's metrics: {exc!r}", error=True)
            self._stop.wait(self.interval)
