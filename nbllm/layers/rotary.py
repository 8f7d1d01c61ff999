"""Rotary position embeddings (neox/"rotate half" layout, as Hugging Face's Llama family).

Supports the rope types these families ship: default, linear, llama3, yarn and
longrope (Phi-3). cos
and sin are computed once for every position up to the model's length and indexed
by each token's position, so a step costs one gather.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


def rope_parameters(config: Any) -> dict:
    """rope_theta and scaling settings from a config of any transformers version."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if scaling and not params.get("rope_type") and not params.get("type"):
        params.update(scaling)
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    if params["rope_type"] == "longrope":
        params.setdefault("original_max_position_embeddings", getattr(config, "original_max_position_embeddings", None))
        if not params.get("factor"):  # as transformers: the ratio of the extended to the original context
            params["factor"] = config.max_position_embeddings / params["original_max_position_embeddings"]
    return params


def _longrope_inv_freq(exponents: torch.Tensor, base: float, params: dict,
                       max_position: int) -> tuple[torch.Tensor, float]:
    """Phi-3's LongRoPE: a factor per frequency, the long set when positions reach past the original context.

    The set is chosen once for the whole table, as vLLM does (long factors when the engine's
    positions extend beyond original_max_position_embeddings), so a cached token's rotation
    never depends on how long its sequence has grown. transformers chooses per forward call
    instead; both agree whenever every call's sequence is longer than the original context,
    or the table does not extend beyond it.
    """
    original = params["original_max_position_embeddings"]
    factors = params["long_factor"] if max_position > original else params["short_factor"]
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        factor = params["factor"]
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext_factors = torch.tensor(factors, dtype=torch.float32, device=exponents.device)
    return 1.0 / (ext_factors * base ** exponents), float(attention_factor)


def _yarn_inv_freq(inv_freq_base: torch.Tensor, dim: int, base: float, params: dict,
                   max_position: int) -> tuple[torch.Tensor, float]:
    factor = params["factor"]
    original_max = params.get("original_max_position_embeddings") or max_position

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq_base.device) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    interpolation = inv_freq_base / factor
    inv_freq = interpolation * (1 - extrapolation_factor) + inv_freq_base * extrapolation_factor
    return inv_freq, float(attention_factor)


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    factor = params["factor"]
    low_freq_factor, high_freq_factor = params["low_freq_factor"], params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary embeddings: `lookup` the tables for a step's positions once, `rotate` each layer's q/k."""

    def __init__(self, head_dim: int, max_position: int, params: dict,
                 partial_rotary_factor: float = 1.0):
        super().__init__()
        rope_type = params["rope_type"]
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise NotImplementedError(
                f"rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        self.max_position = max_position
        self.params = params
        self.init_buffers(None)

    def init_buffers(self, device) -> None:
        """(Re)compute the cos/sin tables, e.g. after the model was built on the meta device."""
        params, rope_type = self.params, self.params["rope_type"]
        base = float(params["rope_theta"])
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float()
        inv_freq = 1.0 / (base ** (exponents / self.rotary_dim))
        scale = 1.0
        if rope_type == "linear":
            inv_freq = inv_freq / params["factor"]
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif rope_type == "yarn":
            inv_freq, scale = _yarn_inv_freq(inv_freq, self.rotary_dim, base, params, self.max_position)
        elif rope_type == "longrope":
            inv_freq, scale = _longrope_inv_freq(exponents / self.rotary_dim, base, params, self.max_position)
        positions = torch.arange(self.max_position, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)  # [P, rot/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, rot]
        self.register_buffer("cos_cache", emb.cos() * scale, persistent=False)
        self.register_buffer("sin_cache", emb.sin() * scale, persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for these positions, [T, 1, rot]: computed once per step, shared by layers."""
        cos = self.cos_cache.index_select(0, positions).unsqueeze(1).to(dtype)
        sin = self.sin_cache.index_select(0, positions).unsqueeze(1).to(dtype)
        half = self.rotary_dim // 2
        sign = torch.ones(self.rotary_dim, dtype=dtype, device=sin.device)
        sign[:half] = -1
        return cos, sin * sign

    def rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: [T, H, head_dim] -> x * cos + rotate_half(x) * sin.

        rotate_half(x) = cat(-x2, x1) equals roll(x, half) times the sign folded into sin,
        so the result is bit-identical to Hugging Face's formula with fewer operations.
        """
        cos, signed_sin = rope
        if self.rotary_dim == x.shape[-1]:
            return x * cos + x.roll(self.rotary_dim // 2, dims=-1) * signed_sin
        rot, rest = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        out = rot * cos + rot.roll(self.rotary_dim // 2, dims=-1) * signed_sin
        return torch.cat((out, rest), dim=-1)


def build_rotary(config: Any, head_dim: int, max_position: Optional[int] = None) -> RotaryEmbedding:
    params = rope_parameters(config)
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    return RotaryEmbedding(head_dim, max_position or config.max_position_embeddings, params, partial)
