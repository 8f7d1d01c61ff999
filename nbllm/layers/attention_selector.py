"""Picks the attention backend for an engine: the one module that knows every backend.

The model runner calls get_attention_backend once at load; the chosen backend then
travels inside each step's AttentionMetadata, so no layer imports a backend.
"""

from __future__ import annotations

import torch

from nbllm.layers.attention_backend import AttentionBackend
from nbllm.layers.torch_attention import TorchAttentionBackend
from nbllm.layers.triton_attention import TritonAttentionBackend

_BACKENDS = {"torch": TorchAttentionBackend, "triton": TritonAttentionBackend}


def get_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """A new backend: "auto" picks Triton on CUDA and PyTorch elsewhere; "torch" or "triton" force one."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose 'auto', 'torch' or 'triton'")
    return _BACKENDS[name]()
