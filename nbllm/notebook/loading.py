"""A line in the cell's output while a model loads: "loading <model>… 12 s", then "loaded <model> in N s".

Loading the default model takes seconds to tens of seconds; a first `%%generate` or
`ChatPanel()` that loads it implicitly would otherwise sit silent. The engine's
build reports no progress of its own, so the line counts the seconds. It is one
display, updated in place by a small thread (an update goes to its display id, never
into whichever cell runs later), and ends with what happened. Outside IPython
nothing is shown.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

_TICK_S = 0.5


@contextmanager
def loading_notice(model: str) -> Iterator[None]:
    """Show "loading <model>…" with the seconds so far while the body runs."""
    handle = _display_handle(f"loading {model}…")
    if handle is None:
        yield
        return
    started = time.monotonic()
    stop = threading.Event()

    def show(text: str) -> None:
        handle.update({"text/plain": text}, raw=True)

    def tick() -> None:
        while not stop.wait(_TICK_S):
            show(f"loading {model}… {time.monotonic() - started:.0f} s")

    ticker = threading.Thread(target=tick, name="nbllm-loading", daemon=True)
    ticker.start()
    try:
        yield
    except BaseException as exc:
        stop.set()
        ticker.join()
        show(f"loading {model} failed after {time.monotonic() - started:.1f} s: {exc!r}")
        raise
    stop.set()
    ticker.join()
    show(f"loaded {model} in {time.monotonic() - started:.1f} s (%nbllm load picks another model)")


def _display_handle(text: str) -> Any:
    """A display showing `text` in the running cell, or None outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    return display({"text/plain": text}, raw=True, display_id=True)
