"""GroupQuant: a matrix quantized in groups of 32 along its rows, ``w = scale * v + minimum``.

This is the one form every source is turned into: GGUF blocks (Q4_0 ... Q8_0, decoded in
``gguf_blocks``) and float weights (``GroupQuant.from_float``, min/max per group). ``v`` are
unsigned integers below ``2 ** bits``; ``scale`` and ``minimum`` are float32, one per group.
Dequantizing in float32 gives exactly the weights llama.cpp's own dequantization gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_SIZE = 32


@dataclass
class GroupQuant:
    values: torch.Tensor  # [N, K] uint8, each below 2 ** bits
    scale: torch.Tensor  # [N, K / 32] float32
    minimum: torch.Tensor  # [N, K / 32] float32
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]."""
        n, k = self.values.shape
        groups = self.values.view(n, k // GROUP_SIZE, GROUP_SIZE).float()
        return (groups * self.scale[..., None] + self.minimum[..., None]).view(n, k)

    def rows(self, index: torch.Tensor) -> "GroupQuant":
        """The rows `index` (a permutation or a selection), as a new GroupQuant."""
        return GroupQuant(self.values[index], self.scale[index], self.minimum[index], self.bits)

    @staticmethod
    def from_float(weight: torch.Tensor, bits: int) -> "GroupQuant":
        """Quantize `weight` [N, K] (K a multiple of 32) with each group's min and max (asymmetric)."""
        n, k = weight.shape
        if k % GROUP_SIZE:
            raise ValueError(f"cannot quantize a weight of {k} columns in groups of {GROUP_SIZE}")
        groups = weight.detach().float().reshape(n, k // GROUP_SIZE, GROUP_SIZE)
        low, high = groups.amin(-1), groups.amax(-1)
        levels = (1 << bits) - 1
        scale = (high - low) / levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        values = torch.round((groups - low[..., None]) / safe[..., None]).clamp_(0, levels)
        return GroupQuant(values.to(torch.uint8).reshape(n, k), scale.contiguous(), low.contiguous(), bits)

    @staticmethod
    def cat(parts: list["GroupQuant"]) -> "GroupQuant":
        """Row-wise concatenation (fused projections); the widest bit width wins."""
        if len(parts) == 1:
            return parts[0]
        return GroupQuant(torch.cat([p.values for p in parts]), torch.cat([p.scale for p in parts]),
                          torch.cat([p.minimum for p in parts]), max(p.bits for p in parts))
