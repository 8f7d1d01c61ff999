"""Copying checkpoint tensors into a model's parameters by Hugging Face name.

Tensors of the right dtype are adopted as parameters rather than copied. A model
may fuse several checkpoint projections into one parameter; it declares
`packed_modules = {"q_proj": ("qkv_proj", 0), ...}` and the fused module's
`load_shard` places each piece. Every parameter must be loaded exactly once;
anything missing is an error that names it. Quantized modules
(nbllm.layers.quantized_linear) take every piece of theirs through `load_shard`, as it
comes (a GroupQuant or a float tensor), and check their own completeness when finalized.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from nbllm.layers.quantized_linear import QuantizedModule


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 packed_modules: Optional[dict[str, tuple[str, int]]] = None,
                 rename: Optional[Callable[[str], Optional[str]]] = None) -> None:
    """Load (name, tensor) pairs; `rename` maps a checkpoint name to ours, or None to skip it."""
    params = dict(model.named_parameters())
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedModule)}
    packed_modules = packed_modules or {}
    loaded: set[str] = set()
    for name, tensor in weights:
        if rename is not None:
            name = rename(name)
            if name is None:
                continue
        target = _packed_target(name, packed_modules)
        if target is not None:
            module_name, param_name, shard = target
            module = model.get_submodule(module_name)
            if module_name in quantized:
                module.load_shard(shard, param_name, tensor)
            else:
                module.load_shard(shard, param_name, tensor.to(getattr(module, param_name).dtype))
            loaded.add(f"{module_name}.{param_name}")
            continue
        module_name, _, leaf = name.rpartition(".")
        if module_name in quantized:
            quantized[module_name].load_shard(0, leaf, tensor)
            loaded.add(name)
            continue
        param = params.get(name)
        if param is None:
            continue  # buffers such as rotary inv_freq or causal masks in old checkpoints
        if param.shape != tensor.shape:
            raise ValueError(f"weight {name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(param.shape)}")
        if tensor.dtype == param.dtype and tensor.device == param.device and tensor.is_contiguous():
            # Adopt the freshly read tensor instead of copying it: half the memory traffic of a load.
            module_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module_name), leaf, nn.Parameter(tensor, requires_grad=False))
        else:
            with torch.no_grad():
                param.copy_(tensor)
        loaded.add(name)
    if hasattr(model, "tie_weights"):  # adopted tensors replaced Parameter objects that ties shared
        model.tie_weights()
    missing = sorted(set(params) - loaded - _tied_names(model))
    if missing:
        raise ValueError(f"checkpoint is missing weights: {missing[:10]}{' ...' if len(missing) > 10 else ''}")


def _packed_target(name: str, packed_modules: dict[str, tuple[str, int]]) -> Optional[tuple[str, str, int]]:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in packed_modules:
            fused, shard = packed_modules[part]
            module_name = ".".join(parts[:i] + [fused] + parts[i + 1:-1])
            return module_name, parts[-1], shard
    return None


def _tied_names(model: nn.Module) -> set[str]:
    return set(getattr(model, "tied_parameter_names", ()))
