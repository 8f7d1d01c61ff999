"""A linear layer whose output is several Hugging Face projections stacked (q/k/v, gate/up).

Fusing them makes one matmul out of three (or two); `load_shard` copies a
checkpoint's separate projection into its rows of the fused weight.
"""

from __future__ import annotations

import torch
from torch import nn


class FusedLinear(nn.Linear):
    def __init__(self, in_features: int, out_sizes: list[int], bias: bool):
        super().__init__(in_features, sum(out_sizes), bias=bias)
        self.out_sizes = list(out_sizes)
        self.offsets = [sum(out_sizes[:i]) for i in range(len(out_sizes))]

    def load_shard(self, shard: int, param_name: str, tensor: torch.Tensor) -> None:
        param = getattr(self, param_name)
        start, size = self.offsets[shard], self.out_sizes[shard]
        if tensor.shape[0] != size:
            raise ValueError(f"shard {shard} of {param_name}: expected {size} rows, got {tuple(tensor.shape)}")
        with torch.no_grad():
            param[start:start + size].copy_(tensor)
