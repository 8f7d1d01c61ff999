"""Decode GGUF quantized blocks into GroupQuant without going through float weights.

``decode(raw, qtype, shape)`` takes a tensor's raw bytes as the ``gguf`` package reads them
([rows, bytes per row], memory-mapped) and returns the GroupQuant whose float32 dequantization
equals the ``gguf`` package's own ``dequantize`` bit for bit (the products involved are exact
in float32, see tests/test_quantized.py). Types with groups of 32 along the row map directly:
Q4_0, Q4_1, Q4_K (4-bit), Q5_0, Q5_1, Q5_K (5-bit) and Q8_0 (8-bit). Every other type (Q6_K with
its 16-weight sub-blocks, Q2_K, Q3_K, the IQ types, and float matrices) returns None: the caller
dequantizes it and requantizes it to 8-bit groups (``REQUANTIZED_BITS``).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import Q4_K

from nbllm.quant.groups import GROUP_SIZE, GroupQuant

REQUANTIZED_BITS = 8
_NIBBLE_SHIFTS = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, n_groups: int) -> np.ndarray:
    """[B, 16 * n] bytes -> [B, n, 32] values: each 32-weight group is 16 low nibbles then 16 high ones."""
    return ((qs.reshape(qs.shape[0], n_groups, 1, 16) >> _NIBBLE_SHIFTS) & 0x0F).reshape(-1, n_groups, GROUP_SIZE)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: a little-endian uint32 per block, bit j the fifth bit of weight j -> [B, 1, 32]."""
    bits = qh.copy().view(np.uint32).reshape(-1, 1) >> np.arange(32, dtype=np.uint32).reshape(1, 32)
    return (bits & 1).astype(np.uint8).reshape(-1, 1, GROUP_SIZE)


def _q4_0(b: np.ndarray):
    d = _f16(b[:, :2])  # [B, 1]
    return _nibbles(b[:, 2:], 1), d, -8 * d, 4


def _q4_1(b: np.ndarray):
    return _nibbles(b[:, 4:], 1), _f16(b[:, :2]), _f16(b[:, 2:4]), 4


def _q5_0(b: np.ndarray):
    d = _f16(b[:, :2])
    return _nibbles(b[:, 6:], 1) | (_high_bits(b[:, 2:6]) << 4), d, -16 * d, 5


def _q5_1(b: np.ndarray):
    return _nibbles(b[:, 8:], 1) | (_high_bits(b[:, 4:8]) << 4), _f16(b[:, :2]), _f16(b[:, 2:4]), 5


def _q8_0(b: np.ndarray):
    d = _f16(b[:, :2])
    return (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8).reshape(-1, 1, 32), d, -128 * d, 8


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K super-blocks of 256: 8 sub-blocks of 32 with scale d * sc and minimum -dmin * m."""
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, m = Q4_K.get_scale_min(b[:, 4:16].copy())
    return d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


def _q4_k(b: np.ndarray):
    scale, minimum = _k_scales(b)
    q = (b[:, 16:].reshape(-1, 4, 1, 32) >> _NIBBLE_SHIFTS) & 0x0F  # 4 chunks of 64: low nibbles, then high
    return q.reshape(-1, 8, 32), scale, minimum, 4


def _q5_k(b: np.ndarray):
    scale, minimum = _k_scales(b)
    ql = ((b[:, 48:].reshape(-1, 4, 1, 32) >> _NIBBLE_SHIFTS) & 0x0F).reshape(-1, 8, 32)
    qh = ((b[:, 16:48].reshape(-1, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1)
    return ql | (qh.reshape(-1, 8, 32) << 4), scale, minimum, 5


# type -> (bytes per block, weights per block, decoder)
_DECODERS: dict[T, tuple[int, int, Callable]] = {
    T.Q4_0: (18, 32, _q4_0), T.Q4_1: (20, 32, _q4_1), T.Q5_0: (22, 32, _q5_0), T.Q5_1: (24, 32, _q5_1),
    T.Q8_0: (34, 32, _q8_0), T.Q4_K: (144, 256, _q4_k), T.Q5_K: (176, 256, _q5_k),
}


def decodes_natively(qtype: T) -> bool:
    return qtype in _DECODERS


def decode(raw: np.ndarray, qtype: T, shape: tuple[int, int]) -> Optional[GroupQuant]:
    """The GroupQuant of a [N, K] matrix stored as `qtype` blocks (`raw`: [N, bytes per row]), or None."""
    if qtype not in _DECODERS:
        return None
    block_bytes, block_weights, decoder = _DECODERS[qtype]
    n, k = shape
    blocks = np.ascontiguousarray(raw).reshape(n * k // block_weights, block_bytes)
    values, scale, minimum, bits = decoder(blocks)
    groups = k // GROUP_SIZE
    return GroupQuant(torch.from_numpy(np.ascontiguousarray(values).reshape(n, k)),
                      torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32).reshape(n, groups)),
                      torch.from_numpy(np.ascontiguousarray(minimum, dtype=np.float32).reshape(n, groups)),
                      bits)
