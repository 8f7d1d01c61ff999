"""Fused residual add + RMSNorm in one Triton kernel; same contract as ``fused_add_rms_norm_ref``.

``fused_add_rms_norm(x, residual, weight, eps)`` returns ``(normed, new_residual)``
with new_residual = x + residual (or x when residual is None) and
normed = weight * (new_residual / sqrt(mean(new_residual**2) + eps)). The order of
rounding follows Hugging Face's Llama: the sum is rounded to x's dtype, normalized in
float32, rounded to x's dtype again, then scaled by the weight. Inputs are not
modified; both outputs are new contiguous tensors. One program normalizes one row,
held whole in registers.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _fused_add_rms_norm_kernel(
    x_ptr,  # [T, H]
    residual_ptr,  # [T, H], read only when HAS_RESIDUAL
    weight_ptr,  # [H]
    out_ptr,  # [T, H], contiguous
    residual_out_ptr,  # [T, H], contiguous
    stride_x,
    stride_residual,
    hidden_size,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    summed = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        summed += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0)
    tl.store(residual_out_ptr + row * hidden_size + cols, summed, mask=mask)

    hidden = summed.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(hidden * hidden, axis=0) / hidden_size + eps)
    normed = (hidden * inv_rms).to(summed.dtype)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * hidden_size + cols, weight * normed, mask=mask)


def fused_add_rms_norm(
    x: torch.Tensor,  # [T, H]
    residual: torch.Tensor | None,  # [T, H]
    weight: torch.Tensor,  # [H]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # normed [T, H], new_residual [T, H]
    """Add the residual, then RMS-normalize each row and scale it by ``weight``."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [tokens, hidden] with unit last stride, got {tuple(x.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    if weight.shape != (x.shape[1],) or weight.stride(-1) != 1:
        raise ValueError(f"weight must be [{x.shape[1]}], got {tuple(weight.shape)}")
    dtypes = {x.dtype, weight.dtype} | ({residual.dtype} if residual is not None else set())
    if len(dtypes) != 1:
        raise ValueError(f"x, residual and weight must share one dtype, got {sorted(map(str, dtypes))}")

    num_tokens, hidden_size = x.shape
    out = torch.empty((num_tokens, hidden_size), dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(out)
    if num_tokens == 0:
        return out, residual_out
    block = triton.next_power_of_2(hidden_size)
    _fused_add_rms_norm_kernel[(num_tokens,)](
        x,
        x if residual is None else residual,
        weight,
        out,
        residual_out,
        x.stride(0),
        x.stride(0) if residual is None else residual.stride(0),
        hidden_size,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=min(max(block // 256, 1), 8),
    )
    return out, residual_out
