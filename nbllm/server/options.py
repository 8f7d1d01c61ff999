"""ServerOptions: everything `nbllm serve` and `serve_in_background` can set about the HTTP layer.

The fields carry vLLM's flag names where vLLM has the option (`nbllm serve
--enable-force-include-usage` is `enable_force_include_usage`); `nbllm serve` derives
its flags from this dataclass, so a field added here is a flag there. The limits bound
the work one request can cause before any of it is done; each error names the flag
that raises it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Union

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    # ---------------------------------------------------------------- limits (work one request may cause)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # a larger body is a 413, refused before it is read
    max_sequences_per_request: int = 1024  # prompts x n (beam width for beam search)
    max_messages: int = 2048  # messages in one chat request
    max_prompt_chars_per_token: int = 64  # a prompt longer than max_model_len x this is refused untokenized
    chat_template_timeout: float = 10.0  # seconds a chat template may render
    chat_template_memory_bytes: int = 1 << 30  # memory a template's render may allocate
    # ---------------------------------------------------------------- vLLM's frontend options
    trust_request_chat_template: bool = False  # accept `chat_template` from requests
    enable_force_include_usage: bool = False  # usage on every stream chunk, asked for or not
    enable_prompt_tokens_details: bool = False  # usage.prompt_tokens_details (cached tokens)
    return_tokens_as_token_ids: bool = False  # logprobs tokens as "token_id:N" for every request
    enable_per_request_metrics: bool = False  # a `metrics` object (timings) on single-choice responses
    enable_server_load_tracking: bool = False  # GET /load counts requests in flight
    root_path: Optional[str] = None  # the path prefix a proxy strips (FastAPI's root_path)
    shutdown_timeout: float = 30.0  # seconds a stopping server lets in-flight requests finish
    # ---------------------------------------------------------------- access
    metrics_public: bool = False  # serve /metrics without the API key
    allowed_origins: tuple[str, ...] = ()  # CORS origins; none: no CORS headers at all
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the bound address and localhost
    bound_host: Optional[str] = field(default=None, repr=False)  # set by whoever binds the socket

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_sequences_per_request", "max_messages",
                     "max_prompt_chars_per_token", "chat_template_memory_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("chat_template_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if self.chat_template_timeout == 0:
            raise ValueError("chat_template_timeout must be positive")
        if self.root_path is not None and self.root_path and not self.root_path.startswith("/"):
            raise ValueError(f"root_path must start with '/', got {self.root_path!r}")
        object.__setattr__(self, "allowed_origins", as_names(self.allowed_origins))
        object.__setattr__(self, "allowed_hosts", as_names(self.allowed_hosts))


def as_names(value: Union[None, str, tuple, list]) -> tuple[str, ...]:
    """A list of names given as a tuple/list, a JSON list (vLLM's `--allowed-origins '["*"]'`) or comma-separated."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
                raise ValueError(f"expected a JSON list of strings, got {value!r}")
            return tuple(parsed)
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"expected a list of str, got {value!r}")
