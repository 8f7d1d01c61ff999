"""Chat templates rendered under a time and memory limit, in worker processes the server can kill.

A Jinja template is a program: a few bytes of nested loops render for minutes, and
`"x" * 10**10` allocates ten gigabytes in one step. A thread cannot be stopped, and
no hook inside Jinja sees a C-level allocation, so the render runs in a child
process: forked from the server (so it starts in milliseconds with the tokenizer
already loaded, and renders with exactly `nbllm.chat_utils.render_chat_text`), with
every inherited descriptor but its pipe closed (a copied socket would keep
connections from closing), an address-space cap above what it inherited, and a
deadline after which the server kills it and forks a fresh one. The child only renders text (Jinja, no tokenizer
kernels); the server tokenizes the bounded result itself.

Measured on the 2-core test machine: the first render (fork included) takes 35-100 ms,
later ones under 1 ms more than the render itself; a runaway template costs the
deadline once (a 1 s limit answered in 1.04 s), a 10 GB allocation fails in 40 ms.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Optional

from nbllm.chat_utils import render_chat_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderJob:
    """One conversation and the template options it is rendered with (plain data, sent to the worker)."""

    conversation: list[dict]
    chat_template: Optional[str]
    add_generation_prompt: bool
    continue_final_message: bool
    chat_template_kwargs: Optional[dict]
    tools: Optional[list[dict]]


class RenderTimeout(Exception):
    """The template ran past the deadline; its worker was killed."""


class RenderFailed(Exception):
    """The template raised (its own error, a MemoryError at the cap, or output over the size limit)."""


class _Worker:
    def __init__(self, tokenizer: Any, memory_bytes: int, max_chars: int):
        parent, child = multiprocessing.get_context("fork").Pipe()
        self.conn = parent
        self.process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(child, tokenizer, memory_bytes, max_chars), daemon=True, name="nbllm-chat-render")
        self.process.start()
        child.close()

    def render(self, job: RenderJob, timeout: float) -> str:
        self.conn.send(job)
        if not self.conn.poll(timeout):
            raise RenderTimeout()
        ok, value = self.conn.recv()
        if not ok:
            raise RenderFailed(value)
        return value

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: the child's SIGTERM handlers are the parent's (uvicorn's) until reset
        self.process.join(5)
        self.conn.close()


def can_fork() -> bool:
    """Whether this platform forks (not Windows); without it the engine renders templates, unlimited."""
    return "fork" in multiprocessing.get_all_start_methods()


class TemplateRenderer:
    """`render(job)` in a worker process (blocking: call it from a worker thread), at most `workers` at once."""

    def __init__(self, tokenizer: Any, timeout_s: float, memory_bytes: int, max_chars: int, workers: int = 2):
        self._tokenizer = tokenizer
        self.timeout_s, self._memory, self._max_chars = timeout_s, memory_bytes, max_chars
        self._idle: "queue.SimpleQueue[_Worker]" = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(workers)
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def render(self, job: RenderJob) -> str:
        """The rendered prompt text; RenderTimeout or RenderFailed otherwise."""
        with self._slots:
            worker = self._take()
            try:
                text = worker.render(job, self.timeout_s)
            except (RenderTimeout, EOFError, OSError) as exc:
                self._discard(worker)
                if isinstance(exc, RenderTimeout):
                    raise
                raise RenderFailed(f"the template's worker process died ({exc!r})") from None
            self._idle.put(worker)
            return text

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()

    def _take(self) -> _Worker:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if self._closed:
                    raise RenderFailed("the server is shutting down") from None
                worker = _Worker(self._tokenizer, self._memory, self._max_chars)
                self._all.add(worker)
            return worker
        if not worker.process.is_alive():
            self._discard(worker)
            return self._take()
        return worker

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()


# ------------------------------------------------------------------------------------------- the child
def _serve(conn: Connection, tokenizer: Any, memory_bytes: int, max_chars: int) -> None:
    """The worker's loop: render jobs until the server closes the pipe."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; the pipe closing ends us
    _close_inherited_files(conn.fileno())
    _cap_memory(memory_bytes)
    while True:
        try:
            job: RenderJob = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe (or is gone): leave without any cleanup
            os._exit(0)  # of what the fork copied (a Jupyter kernel's output streams would try to flush)
        try:
            text = render_chat_text(tokenizer, job.conversation, job.chat_template, job.add_generation_prompt,
                                    job.continue_final_message, job.chat_template_kwargs, job.tools)
            if not isinstance(text, str):
                raise TypeError(f"the template rendered {type(text).__name__}, not text")
            if len(text) > max_chars:
                raise ValueError(f"the rendered prompt has {len(text)} characters, more than the {max_chars} "
                                 f"that can fit the context window")
            reply: tuple[bool, str] = (True, text)
        except MemoryError:
            reply = (False, "the template tried to allocate more memory than the render limit allows "
                            "(nbllm serve --chat-template-memory-bytes)")
        except Exception as exc:  # the template's own error: reported to the client as a 400
            reply = (False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def _close_inherited_files(keep: int) -> None:
    """Close every descriptor the fork copied but the pipe and stdio: a copy of a socket (the listening one,
    a client's connection) held open here would keep the peer from ever seeing it close."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _cap_memory(extra_bytes: int) -> None:
    """Let the child's address space grow by at most `extra_bytes` beyond what it inherited."""
    try:
        import resource  # POSIX only, as fork is

        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * resource.getpagesize()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = current + extra_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError) as exc:  # no /proc (not Linux): the deadline still bounds the render
        logger.warning("chat template worker: no memory cap (%s)", exc)
