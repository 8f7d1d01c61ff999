"""Which attention each decoder layer gets, read from a Hugging Face config the way transformers reads it.

A layer attends over a sliding window when its config says so: through `layer_types`
("sliding_attention" or "full_attention" per layer: Gemma 2 and 3, Qwen2/3, SmolLM3) or,
in configs without that list (Mistral, Phi-3), through `sliding_window` alone, which then
covers every layer. `use_sliding_window=False` (Qwen2/3, SmolLM3) turns windows off.
"""

from __future__ import annotations

from typing import Any, Optional


def sliding_window_for(config: Any, layer_idx: int) -> Optional[int]:
    """The window (in tokens) of layer `layer_idx`, or None for full causal attention."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return int(window)
    return int(window) if layer_types[layer_idx] == "sliding_attention" else None
