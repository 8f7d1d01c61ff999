"""The chat panel's sampling defaults: the model's own where it has them, else settings that stay coherent.

A model whose generation_config.json sets sampling (temperature, top_p, top_k or
min_p) gets exactly those, as vLLM's chat would. A model without any (the default
SmolLM2-135M-Instruct has none) would sample at temperature 1.0 with no cut-off,
which turns a small model's replies into gibberish, so the panel uses CHAT_DEFAULTS
instead; the measurement behind them is in docs/notebook.md. Replies are capped at
CHAT_MAX_TOKENS unless the model's config sets its own maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams

CHAT_DEFAULTS = {"temperature": 0.5, "top_p": 0.9}
CHAT_MAX_TOKENS = 256
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p")


@dataclass(frozen=True)
class ChatDefaults:
    params: SamplingParams
    source: str  # where the sampling settings came from, for the panel's status line


def chat_sampling_params(llm: EngineClient) -> ChatDefaults:
    """The engine's defaults when its model sets sampling, else CHAT_DEFAULTS over them."""
    engine_defaults = llm.get_default_sampling_params()
    plain = SamplingParams()
    max_tokens = engine_defaults.max_tokens if engine_defaults.max_tokens != plain.max_tokens else CHAT_MAX_TOKENS
    if any(getattr(engine_defaults, name) != getattr(plain, name) for name in _SAMPLING_FIELDS):
        return ChatDefaults(engine_defaults.updated(max_tokens=max_tokens), "the model's generation_config")
    settings = ", ".join(f"{name} {value}" for name, value in CHAT_DEFAULTS.items())
    return ChatDefaults(engine_defaults.updated(max_tokens=max_tokens, **CHAT_DEFAULTS), f"chat defaults ({settings})")
