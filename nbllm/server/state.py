"""What every route shares: the engine (any EngineClient), the served model name, the model's sampling defaults.

Submitting and aborting only queue work for the engine, so routes call them on the
event loop. Tokenizing and rendering chat templates take CPU time, so they go
through `run` (a worker thread) and the event loop never waits on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, TypeVar

import anyio

from nbllm.protocol import EngineClient
from nbllm.server.bridge import EngineRequests, PreparedPrompt
from nbllm.server.errors import OpenAIError, invalid_value
from nbllm.server.sampling import model_defaults

T = TypeVar("T")


@dataclass
class ServerState:
    llm: EngineClient
    model_name: str
    api_key: Optional[str] = None
    defaults: dict[str, Any] = field(init=False)
    max_model_len: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.llm.capabilities.tokenizer:
            raise ValueError(f"the server tokenizes prompts, but this engine ({type(self.llm).__name__}) "
                             f"has no tokenizer (its capabilities.tokenizer is False)")
        if self.llm.max_model_len is None:
            raise ValueError(f"the server checks prompt lengths, but this engine ({type(self.llm).__name__}) "
                             f"does not say its max_model_len")
        self.defaults = model_defaults(self.llm.get_default_sampling_params())
        self.max_model_len = self.llm.max_model_len

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def check_model(self, name: Optional[str]) -> None:
        """vLLM's rule: no model name means the served one; any other name is a 404."""
        if name and name != self.model_name:
            raise OpenAIError(404, f"The model `{name}` does not exist. This server serves `{self.model_name}`.",
                              "model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread (tokenizing, template rendering, beam search)."""
        return await anyio.to_thread.run_sync(fn, *args)

    def submit(self, prompts: list[PreparedPrompt], request_id: str, fields: Iterable[str]) -> EngineRequests:
        """Queue the prompts; the engine's complaints about the input become 400s naming the field."""
        if not self.llm.is_running:
            raise OpenAIError(503, "the engine has been shut down")
        try:
            return EngineRequests.submit(self.llm, prompts, request_id)
        except (ValueError, TypeError) as exc:
            raise invalid_value(exc, fields) from None
