"""Linear layers with weights prepacked for oneDNN, the fast path for float32 matmuls on x86 CPUs.

A decode step on a CPU is a chain of small matrix products (a few to a few dozen rows
against each weight matrix). ``F.linear`` re-reads the weight in its plain row-major
layout every time; oneDNN's prepacked layout (``torch.ops.mkldnn._reorder_linear_weight``)
lets its kernels stream it faster for such shapes (measured on the benchmark VM: all
121 projections of the default model 1.4x faster at 1 and at 64 rows). The same products are
computed, in another summation order (differences of about 1e-6 relative).

``prepack_linears(model)`` swaps every ``nn.Linear`` of a float32 model on the CPU for a
``PackedLinear`` holding the packed copy; it does nothing where oneDNN is unavailable.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def onednn_linear_available() -> bool:
    """True where this torch build can prepack linear weights for oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(4, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 4), packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(out.eq(4).all())


class PackedLinear(nn.Module):
    """y = x W^T + b with W kept in oneDNN's packed layout (float32, CPU, inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.register_buffer("packed_weight", packed, persistent=False)
        # an owning copy: the checkpoint's memory mapping must not outlive the load
        bias: Optional[torch.Tensor] = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack_linears(model: nn.Module) -> int:
    """Replace the float32 CPU nn.Linear modules of `model` by PackedLinear; returns how many."""
    if not onednn_linear_available():
        return 0
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and module.weight.device.type == "cpu"
               and module.weight.dtype == torch.float32]
    for name, module in targets:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, PackedLinear(module))
    # What stays dense (embeddings, norms) may still view the memory-mapped checkpoint, whose
    # pages the packing touched; owning copies let the whole mapping go.
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    return len(targets)
