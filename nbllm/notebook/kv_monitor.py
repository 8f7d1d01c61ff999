"""KVCacheMonitor: the engine's KV cache live, twice a second by default, as a small anywidget.

The kernel sends numbers, the browser draws them (nbllm.views.kv_monitor_js). A
daemon thread polls `llm.get_stats()` (the only thing it reads) and sets traits: `latest`
(the newest reading, a few numbers, which the browser appends to its chart), `grid`
(one code per KV block, run-length encoded: the request holding it, shared, cached
or free; sent when it changes), `pool`, and every FULL_SERIES_EVERY readings `series`
(the whole window, for a view opened later); it never prints. Small messages keep
it cheap to leave open (docs/notebook.md gives its measured cost).
Tokens/s is measured here from the engine's generated-token count, over the last
RATE_WINDOW_S seconds of readings (at least one polling interval), so every value
covers a real interval (the first reading has none and shows as "–"). While the
engine is idle and nothing changes it neither records nor sends.
The thread stops on `stop()`/`close()` or when the engine shuts down
(`llm.is_running` turns False). `history` keeps the samples for `plot()`. What the
engine cannot report (`llm.capabilities`: no metrics at all, or no per-block states
from a remote server) is said in the widget's note.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Optional

import anywidget
import traitlets

from nbllm.metrics import MetricsSnapshot
from nbllm.notebook.session import resolve_engine
from nbllm.protocol import EngineClient
from nbllm.views.kv_monitor_js import KV_MONITOR_ESM
from nbllm.views.kv_view import KVSample, grid_payload, pool_payload, sample_payload, series_payload

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_JOIN_TIMEOUT_S = 5.0
FULL_SERIES_EVERY = 4  # readings between two sends of the whole window (2 s at the default interval)
RATE_WINDOW_S = 1.0  # tokens/s spans about this long: one short interval holds too few tokens to be steady
NO_METRICS = "this engine reports no metrics, so there is nothing to monitor"
NO_BLOCK_STATES = "this engine reports no per-block states: there is no block grid"
ENGINE_STOPPED = "the engine has shut down; monitor stopped"


class KVCacheMonitor(anywidget.AnyWidget):
    """Live KV usage (auto-scaled), requests, tokens/s, prefix-cache hit rate, preemptions and the block grid."""

    _esm = KV_MONITOR_ESM
    series = traitlets.Dict().tag(sync=True)
    latest = traitlets.Dict().tag(sync=True)
    grid = traitlets.Dict().tag(sync=True)
    pool = traitlets.Dict().tag(sync=True)
    window_s = traitlets.Float(60.0).tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    note_is_error = traitlets.Bool(False).tag(sync=True)

    def __init__(self, llm: Optional[EngineClient] = None, interval: float = 0.5, max_samples: int = 4800,
                 window_s: float = 60.0) -> None:
        self._stop = threading.Event()  # first: close() (run by __del__ too) must work if __init__ fails
        self._thread: Optional[threading.Thread] = None
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        super().__init__(series=series_payload([], window_s), grid={}, pool={"blocks": 0, "block_size": 0,
                                                                              "tokens": 0}, window_s=window_s)
        self.llm = resolve_engine(llm)
        self.interval = float(interval)
        self._samples: deque[KVSample] = deque(maxlen=max_samples)
        self._readings: deque[tuple[float, int]] = deque()  # (timestamp, generation_tokens_total), newest last
        self._readings_sent = 0
        self.add_class("nbllm-kv-monitor")
        if not self.llm.capabilities.metrics:
            self.note = NO_METRICS
            return
        self._standing_note = "" if self.llm.capabilities.block_states else NO_BLOCK_STATES
        self.note = self._standing_note
        self._thread = threading.Thread(target=self._run, name="nbllm-kv-monitor", daemon=True)
        self._thread.start()

    @property
    def history(self) -> list[KVSample]:
        """The samples recorded so far (oldest first), for `plot()` and `plot_kv_usage`."""
        return list(self._samples)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def update(self) -> bool:
        """Take one reading and send it if anything changed; True if it sent."""
        snapshot = self.llm.get_stats()
        sample = KVSample.from_snapshot(snapshot, self._tokens_per_second(snapshot))
        last: Optional[KVSample] = self._samples[-1] if self._samples else None
        if last is not None and sample.same_state(last) and not (sample.num_requests_running
                                                                   or sample.num_requests_waiting):
            return False
        self._samples.append(sample)
        with self.hold_sync():  # one message per reading
            self.pool = pool_payload(snapshot)
            if self._readings_sent % FULL_SERIES_EVERY == 0:
                self.series = series_payload(self._samples, self.window_s)
            self._readings_sent += 1
            self.latest = sample_payload(sample)
            if self.llm.capabilities.block_states:
                self.grid = grid_payload(snapshot)
        return True

    def plot(self) -> "Figure":
        """The recorded history as a static matplotlib figure (for export): usage, requests, tokens/s,
        hit rate and preemptions."""
        from nbllm.views.kv_plot import plot_kv_history

        return plot_kv_history(self.history)

    def stop(self) -> None:
        """Stop updating (the picture stays as it was)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT_S)

    def close(self) -> None:
        self.stop()
        super().close()

    def _tokens_per_second(self, snapshot: MetricsSnapshot) -> Optional[float]:
        """Generated tokens per second over the readings of the last RATE_WINDOW_S seconds (at least the
        previous reading); None for the first reading."""
        now = snapshot.timestamp
        while len(self._readings) > 1 and now - self._readings[1][0] >= RATE_WINDOW_S:
            self._readings.popleft()  # keep one reading at least RATE_WINDOW_S old, as the window's start
        start = self._readings[0] if self._readings else None
        self._readings.append((now, snapshot.generation_tokens_total))
        if start is None or now <= start[0]:
            return None
        return max(0.0, (snapshot.generation_tokens_total - start[1]) / (now - start[0]))

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.llm.is_running:
                self.note, self.note_is_error = ENGINE_STOPPED, False
                return
            try:
                self.update()
                if self.note_is_error:  # the engine answers again
                    self.note, self.note_is_error = self._standing_note, False
            except Exception as exc:  # shown in the widget: an exception in a thread would vanish
                self.note, self.note_is_error = f"could not read the engine's metrics: {exc!r}", True
            self._stop.wait(self.interval)
