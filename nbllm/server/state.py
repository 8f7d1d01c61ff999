"""What every route shares: the engine, the served model name, the model's sampling defaults.

Engine calls that take the engine's lock or tokenize go through `run` (a worker
thread), so the event loop never waits on a model step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, TypeVar

import anyio

from nbllm.server.bridge import EngineRequests, PreparedPrompt
from nbllm.server.errors import OpenAIError, invalid_value
from nbllm.server.sampling import model_defaults

T = TypeVar("T")


@dataclass
class ServerState:
    llm: Any
    model_name: str
    api_key: Optional[str] = None
    defaults: dict[str, Any] = field(init=False)
    max_model_len: int = field(init=False)

    def __post_init__(self) -> None:
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
        return await anyio.to_thread.run_sync(fn, *args)

    async def submit(self, prompts: list[PreparedPrompt], request_id: str, fields: Iterable[str]) -> EngineRequests:
        """Queue the prompts; the engine's complaints about the input become 400s naming the field."""
        if not getattr(self.llm, "is_running", True):
            raise OpenAIError(503, "the engine has been shut down")
        try:
            return await EngineRequests.submit(self.llm, prompts, request_id)
        except (ValueError, TypeError) as exc:
            raise invalid_value(exc, fields) from None
