"""Device math shared by the attention kernels, written from exp2 so that it also runs in the Triton interpreter."""

import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@triton.jit
def soft_cap(scores, cap):
    """cap * tanh(scores / cap) (Gemma 2's logit soft-capping); scores and cap in the same units."""
    x = scores / cap
    return cap * (1.0 - 2.0 / (tl.exp2(2.0 * LOG2_E * x) + 1.0))
