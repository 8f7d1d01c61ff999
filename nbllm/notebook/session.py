"""The kernel's one persistent engine: an EngineSession stored on the IPython shell.

Every notebook feature (magics, chat panels, the DataFrame accessor, the KV
monitor) asks `resolve_engine()` for the engine unless given one explicitly.
The first request loads the default model, saying so in the cell while it loads
(loading.py). The session shuts down only engines it
loaded itself; an engine handed in with `set_engine` stays its owner's to close.
An engine is any EngineClient: an LLM, or a RemoteLLM standing in for one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from nbllm.notebook.loading import loading_notice
from nbllm.protocol import EngineClient

_SHELL_ATTRIBUTE = "_nbllm_session"


class EngineSession:
    """Holds the kernel's engine (an LLM, or a RemoteLLM standing in for one)."""

    def __init__(self, factory: Optional[Callable[..., EngineClient]] = None) -> None:
        self._factory = factory
        self._engine: Optional[EngineClient] = None
        self._owned = False

    @property
    def engine(self) -> Optional[EngineClient]:
        """The current engine, or None when nothing is loaded (never loads)."""
        return self._engine

    def get_engine(self) -> EngineClient:
        """The current engine; loads the default model on first use (with a "loading…" line in the cell)."""
        if self._engine is None:
            with loading_notice(self._default_model_name()):
                return self.load()
        return self._engine

    def _default_model_name(self) -> str:
        if self._factory is not None:
            return "the default model"
        from nbllm.llm import DEFAULT_MODEL_NAME  # the engine is about to load: importing it costs nothing extra

        return DEFAULT_MODEL_NAME

    def load(self, model: Optional[str] = None, **engine_kwargs: Any) -> EngineClient:
        """Load `model` (None: the default) as the kernel's engine, replacing the current one."""
        factory = self._factory or _default_factory
        engine = factory(model, **engine_kwargs)  # build first: a failed load keeps the old engine
        self._replace(engine, owned=True)
        return engine

    def set_engine(self, engine: EngineClient, owned: bool = False) -> None:
        """Make `engine` the kernel's engine; `owned=True` lets the session shut it down later."""
        if engine is None:
            raise TypeError("set_engine needs an engine; use unload() to drop the current one")
        self._replace(engine, owned)

    def unload(self) -> bool:
        """Drop the engine (shutting it down if the session loaded it); True if one was loaded."""
        had_engine = self._engine is not None
        self._replace(None, owned=False)
        return had_engine

    def _replace(self, engine: Optional[EngineClient], owned: bool) -> None:
        old, old_owned = self._engine, self._owned
        self._engine, self._owned = engine, owned
        if old is not None and old is not engine and old_owned:
            old.shutdown()


def _default_factory(model: Optional[str], **engine_kwargs: Any) -> EngineClient:
    from nbllm.llm import LLM

    return LLM(model, **engine_kwargs)


def session_for(shell: Any) -> EngineSession:
    """The EngineSession of an IPython shell, created on first use."""
    session = getattr(shell, _SHELL_ATTRIBUTE, None)
    if session is None:
        session = EngineSession()
        setattr(shell, _SHELL_ATTRIBUTE, session)
    return session


def current_session() -> EngineSession:
    """The session of the running IPython shell; RuntimeError outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("no IPython shell is running: pass an engine explicitly, e.g. llm=nbllm.LLM()")
    return session_for(shell)


def resolve_engine(llm: Optional[EngineClient] = None) -> EngineClient:
    """`llm` if given, else the kernel's engine (loading the default model on first use)."""
    return llm if llm is not None else current_session().get_engine()
