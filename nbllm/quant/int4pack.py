"""GroupQuant -> torch's packed int4 CPU format, and the matrix product on it.

torch's CPU kernel (``aten._weight_int4pack_mm_for_cpu``) computes ``x @ w.T`` with
``w = (q - 8) * scale + zero`` for 4-bit ``q`` in groups of 32 along K, dequantizing in
float32 and accumulating in float32. It is vectorized only for bfloat16 inputs (float32 inputs
take a scalar loop about 30x slower), so activations, scales and zero points are bfloat16 and
the output comes back as bfloat16: the weights themselves stay exact, and the rounding is that
of bfloat16 activations and of bfloat16 group scales (relative 2^-9).

Where the CPU has AVX-512 BF16, products run instead on nbllm's own kernel over the same packed
values with the checkpoint's exact float32 scales (``nbllm.quant.int4_rows``: float32 output, the
same arithmetic for a row whatever else is in the product), which is no slower at any row count
measured and 1.3x faster at one row (the default model's layers), where torch's kernel is compute-bound.

On torch's kernel, groups of up to 8 bits run as two 4-bit planes, ``v = 16 * hi + lo``, stored side
by side along K (``[hi | lo]``) and multiplied by ``[x | x]``: one kernel call, the bytes of int8, and
no per-channel requantization (which would cost a relative weight error of about 1%, measured on
the default model's Q8_0 embedding). nbllm's kernel takes them as they are instead (``int8_layout``,
``nbllm::int8_rows``): half the dot products, and a quarter fewer bytes than the planes with their
scales (the default model's lm_head: 1.8x faster at 64 rows, 1.2x at one).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from nbllm.quant.groups import GROUP_SIZE, GroupQuant

ACTIVATION_DTYPE = torch.bfloat16
_PACK_ROWS = 4096  # a multiple of the kernel's 64-row blocks
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default  # the overload itself: less Python per call
ROW_KERNEL_BLOCK = 64  # nbllm::int4_rows (nbllm/quant/int4_rows.cpp) takes weights of a multiple of 64 rows


def pack(weight: GroupQuant) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(packed uint8 [N', planes * K / 2], scales_and_zeros bfloat16 [planes * K / 32, N', 2], planes).

    The kernel takes N in multiples of 16: N' is N rounded up, the extra rows zero.
    """
    padding = -weight.values.shape[0] % 16
    if padding:
        weight = GroupQuant(*(torch.nn.functional.pad(t, (0, 0, 0, padding))
                              for t in (weight.values, weight.scale, weight.minimum)), weight.bits)
    scale = weight.scale.to(ACTIVATION_DTYPE)
    exact_scale = scale.float()  # zero points are computed against the rounded scale
    values = weight.values
    if weight.bits <= 4:
        # w = s * v + m = s * (v - 8) + (m + 8 s)
        zero = (weight.minimum + 8 * exact_scale).to(ACTIVATION_DTYPE)
        q, scales, zeros, planes = values, scale, zero, 1
    else:
        # w = s * (16 hi + lo) + m = 16 s * (hi - 8) + s * (lo - 8) + (m + 136 s); the zero point is
        # split into a bfloat16 head (hi plane) and the tail it leaves (lo plane): about 16 bits kept
        zero = weight.minimum + 136 * exact_scale
        head = zero.to(ACTIVATION_DTYPE)
        tail = (zero - head.float()).to(ACTIVATION_DTYPE)
        q = torch.cat((values >> 4, values & 0x0F), dim=1)
        scales = torch.cat((scale * 16, scale), dim=1)
        zeros = torch.cat((head, tail), dim=1)
        planes = 2
    # The kernel packs rows in independent blocks of 64: converting a few thousand rows at a time
    # keeps the int32 copy it wants small (a whole lm_head as int32 planes would be 4x its int8 size).
    packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i:i + _PACK_ROWS].to(torch.int32), 1)
                        for i in range(0, q.shape[0], _PACK_ROWS)])
    scales_and_zeros = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous()  # [G, N, 2]
    return packed, scales_and_zeros, planes


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, planes: int) -> torch.Tensor:
    """x [M, K] (any float dtype) @ w.T -> bfloat16 [M, N'] on torch's kernel, from pack()'s three results."""
    x = x.to(ACTIVATION_DTYPE)
    if planes == 2:
        x = torch.cat((x, x), dim=1)
    return _INT4_MM(x, packed, GROUP_SIZE, scales_and_zeros)


def rows_matmul(x: torch.Tensor, weight: torch.Tensor, scales_offsets: torch.Tensor, bits: int) -> torch.Tensor:
    """x [M, K] (any float dtype) @ w.T -> float32 [M, N'] on nbllm's kernel: for 4-bit weights `weight` is
    pack()'s packed tensor and the kernel nbllm::int4_rows, for 8-bit ones it is int8_layout()'s and the kernel
    nbllm::int8_rows; `scales_offsets` comes from exact_scales() (the caller has checked that the kernel is
    available and that exact_scales() gave some)."""
    x = x.to(ACTIVATION_DTYPE).contiguous()
    if bits <= 4:
        return torch.ops.nbllm.int4_rows(x, weight, scales_offsets)
    return torch.ops.nbllm.int8_rows(x, weight, scales_offsets)


def exact_scales(weight: GroupQuant, padded_rows: int) -> Optional[torch.Tensor]:
    """float32 [padded_rows / 64, K / 32, 2, 64]: per block of 64 rows (nbllm's kernels read a block's in one
    piece) and per group, the scales, then the offsets, for rows_matmul(). The 4-bit kernel computes
    w = scale * q + c as scale * (128 + q) + offset with offset = c - 128 * scale; the 8-bit one takes
    offset = c. Both are exact for GGUF's float16 scales and minimums.
    None where padded_rows is not a multiple of ROW_KERNEL_BLOCK: the kernels do not take those."""
    if padded_rows % ROW_KERNEL_BLOCK:
        return None
    scale, minimum = weight.scale.double(), weight.minimum.double()  # [N, G]
    offset = minimum - 128 * scale if weight.bits <= 4 else minimum
    pairs = torch.stack((scale.T, offset.T), dim=1).float()  # [G, 2, N]
    pairs = torch.nn.functional.pad(pairs, (0, padded_rows - pairs.shape[-1]))
    return pairs.view(pairs.shape[0], 2, -1, ROW_KERNEL_BLOCK).permute(2, 0, 1, 3).contiguous()


def int8_layout(weight: GroupQuant, padded_rows: int) -> Optional[torch.Tensor]:
    """uint8 [padded_rows, K]: an 8-bit weight's values in nbllm::int8_rows' order (per block of 64 rows, per
    pair of columns k, k + 1, the 64 rows' two values side by side); None where padded_rows is not a
    multiple of ROW_KERNEL_BLOCK."""
    if padded_rows % ROW_KERNEL_BLOCK:
        return None
    values = torch.nn.functional.pad(weight.values, (0, 0, 0, padded_rows - weight.values.shape[0]))
    k = values.shape[1]
    blocks = values.view(-1, ROW_KERNEL_BLOCK, k // 2, 2).permute(0, 2, 1, 3)
    return blocks.contiguous().view(padded_rows, k)


@lru_cache(maxsize=1)
def int4pack_available() -> bool:
    """Whether this torch build has the CPU int4 kernel and it computes a known product correctly."""
    try:
        weight = GroupQuant.from_float(torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64) % 7, 4)
        packed, scales_and_zeros, planes = pack(weight)
        out = int4_matmul(torch.ones(1, 64), packed, scales_and_zeros, planes).float()
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(out, weight.dequantize().sum(1)[None], rtol=1e-2))
