"""One engine per Dask worker process, built there on first use and kept for the partitions that follow.

A task graph carries an `EngineSpec` (a model or server URL and keyword arguments),
never an engine: each worker builds the engine itself, once per spec, and keeps it on
its `Worker` object (as the notebook session keeps the kernel's engine on the IPython
shell) until `release_engines` or the worker's exit. A spec whose target is an
http(s) URL builds a RemoteLLM, so a CPU cluster can feed a GPU server. A build that
fails raises EngineLoadError naming the worker; Dask hands it to the client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

from nbllm.protocol import EngineClient

_WORKER_ATTRIBUTE = "_nbllm_engines"


class EngineLoadError(RuntimeError):
    """An engine could not be built on a worker (the message says which spec, which worker and why)."""


@dataclass(frozen=True)
class EngineSpec:
    """What to build on each worker: `LLM(target, **kwargs)`, or `RemoteLLM(target, **kwargs)` for a URL."""

    target: Optional[str] = None  # a model folder, hub id or GGUF file (None: the default model), or a URL
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, engine: Optional[str], engine_kwargs: Optional[dict[str, Any]] = None) -> "EngineSpec":
        if engine is not None and not isinstance(engine, str):
            raise TypeError(f"engine must be a model name or path, or a server URL, not {type(engine).__name__}: "
                            "an engine object cannot travel to the workers; each worker builds its own")
        return cls(engine, tuple(sorted((engine_kwargs or {}).items())))

    @property
    def is_remote(self) -> bool:
        return self.target is not None and self.target.startswith(("http://", "https://"))

    def build(self) -> EngineClient:
        if self.is_remote:
            from nbllm.client import RemoteLLM

            return RemoteLLM(self.target, **dict(self.kwargs))
        from nbllm.llm import LLM

        return LLM(self.target, **dict(self.kwargs))

    def __str__(self) -> str:
        arguments = [repr(self.target)] + [f"{name}={value!r}" for name, value in self.kwargs]
        return f"{'RemoteLLM' if self.is_remote else 'LLM'}({', '.join(arguments)})"


class WorkerEngines:
    """The engines one worker process has built, by spec; safe to use from the worker's task threads.

    Builds take turns (two tasks never build the same engine twice); reading what is
    loaded never waits for a build, so `client.run` stays quick while a model loads.
    """

    def __init__(self) -> None:
        self._engines: dict[str, EngineClient] = {}
        self._build_lock = threading.Lock()

    def get(self, spec: EngineSpec, worker_name: str) -> EngineClient:
        key = repr(spec)  # kwargs may hold unhashable values (a dict of overrides)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._build_lock:
            engine = self._engines.get(key)
            if engine is None:
                try:
                    engine = spec.build()
                except Exception as exc:  # the client sees this message; the original may not pickle
                    raise EngineLoadError(f"nbllm could not build {spec} on Dask worker {worker_name}: "
                                          f"{type(exc).__name__}: {exc}") from None
                self._engines = {**self._engines, key: engine}
            return engine

    def loaded(self) -> list[str]:
        """The specs built here, as text."""
        return list(self._engines)

    def release(self) -> int:
        """Shut every engine down; returns how many there were."""
        engines, self._engines = self._engines, {}
        for engine in engines.values():
            engine.shutdown()
        return len(engines)


def worker_engines(worker: Any) -> WorkerEngines:
    """The WorkerEngines of a distributed Worker, created on first use."""
    engines = getattr(worker, _WORKER_ATTRIBUTE, None)
    if engines is None:
        engines = WorkerEngines()
        setattr(worker, _WORKER_ATTRIBUTE, engines)
    return engines


def engine_for(spec: EngineSpec) -> EngineClient:
    """The engine of `spec` on the worker running the current task (built on its first call there)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        raise RuntimeError("ddf.llm runs on a dask.distributed cluster: start one with distributed.Client() "
                           "(a LocalCluster on this machine); for a frame that fits in this kernel, use "
                           "ddf.compute().llm.generate(...)") from None
    return worker_engines(worker).get(spec, worker.address)


def loaded_engines(dask_worker: Any) -> list[str]:
    """For `client.run(loaded_engines)`: the engines each worker holds."""
    return worker_engines(dask_worker).loaded()


def release_engines(dask_worker: Any) -> int:
    """For `client.run(release_engines)`: shut down each worker's engines (freeing their memory)."""
    return worker_engines(dask_worker).release()
