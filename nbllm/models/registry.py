"""Architecture name (config.architectures[0]) -> our model class.

Classes are imported lazily so that importing nbllm does not import every model.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("nbllm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("nbllm.models.llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("nbllm.models.llama", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("nbllm.models.llama", "Qwen3ForCausalLM"),
    "Phi3ForCausalLM": ("nbllm.models.llama", "Phi3ForCausalLM"),
    "SmolLM3ForCausalLM": ("nbllm.models.llama", "SmolLM3ForCausalLM"),
    "Gemma2ForCausalLM": ("nbllm.models.gemma", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("nbllm.models.gemma", "Gemma3ForCausalLM"),
    "GPT2LMHeadModel": ("nbllm.models.gpt2", "GPT2LMHeadModel"),
    "OPTForCausalLM": ("nbllm.models.opt", "OPTForCausalLM"),
}

SUPPORTED_ARCHITECTURES = tuple(_MODELS)


class UnsupportedArchitectureError(ValueError):
    pass


def model_class_for(config: Any) -> type[nn.Module]:
    architectures = list(getattr(config, "architectures", None) or [])
    for name in architectures:
        if name in _MODELS:
            module_name, class_name = _MODELS[name]
            return getattr(importlib.import_module(module_name), class_name)
    raise UnsupportedArchitectureError(
        f"model architecture {architectures or '(none in config.json)'} is not supported; "
        f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
