"""fused_add_rms_norm (Triton) against fused_add_rms_norm_ref, and the reference against
Hugging Face's Llama RMSNorm written out by hand."""

import pytest
import torch

from nbllm_kernels.reference import fused_add_rms_norm_ref
from nbllm_kernels.rms_norm import fused_add_rms_norm
from paged_kv import DEVICE, TOLERANCE, requires_gpu


def random_rows(num_tokens, hidden_size, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((num_tokens, hidden_size), generator=generator)
    residual = torch.randn((num_tokens, hidden_size), generator=generator)
    weight = 1 + 0.1 * torch.randn(hidden_size, generator=generator)
    return [t.to(dtype).to(DEVICE) for t in (x, residual, weight)]


def test_reference_matches_a_residual_add_then_llama_rms_norm():
    x, residual, weight = random_rows(5, 48, torch.float32)
    summed = x + residual
    variance = summed.pow(2).mean(-1, keepdim=True)
    expected = weight * (summed * torch.rsqrt(variance + 1e-6))

    normed, new_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-6)

    torch.testing.assert_close(normed, expected)
    torch.testing.assert_close(new_residual, summed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("hidden_size", [64, 576])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no-residual"])
def test_fused_add_rms_norm_matches_reference(dtype, hidden_size, with_residual):
    x, residual, weight = random_rows(7, hidden_size, dtype)
    residual = residual if with_residual else None
    x_before = x.clone()

    normed, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5)
    expected_normed, expected_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-5)

    torch.testing.assert_close(normed, expected_normed, **TOLERANCE[dtype])
    torch.testing.assert_close(new_residual, expected_residual, atol=0, rtol=0)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x=torch.zeros(3, 4, 8)), "x must be"),
        (dict(residual=torch.zeros(2, 8)), "residual"),
        (dict(weight=torch.zeros(4)), "weight must be"),
        (dict(weight=torch.zeros(8, dtype=torch.float16)), "dtype"),
    ],
)
def test_fused_add_rms_norm_rejects_bad_arguments(change, message):
    args = dict(x=torch.zeros(3, 8), residual=torch.zeros(3, 8), weight=torch.ones(8), eps=1e-6)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        fused_add_rms_norm(**args)


@pytest.mark.gpu
@requires_gpu
def test_fused_add_rms_norm_bf16_on_gpu():
    x, residual, weight = random_rows(300, 4096, torch.bfloat16)
    normed, new_residual = fused_add_rms_norm(x, residual, weight, 1e-5)
    expected_normed, expected_residual = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    torch.testing.assert_close(normed, expected_normed, **TOLERANCE[torch.bfloat16])
    torch.testing.assert_close(new_residual, expected_residual, atol=0, rtol=0)
