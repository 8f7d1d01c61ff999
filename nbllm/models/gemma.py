"""Gemma 2 and Gemma 3 (text) on the paged KV cache.

Both wrap attention and MLP in RMSNorms on either side ("sandwich" norms) whose weights
are offsets from one, scale the embeddings by sqrt(hidden_size), gate the MLP with
tanh-approximated GELU, scale attention scores by query_pre_attn_scalar ** -0.5 and mix
sliding-window layers with global ones (config.layer_types). Gemma 2 soft-caps attention
scores; Gemma 3 normalises q and k per head instead and gives its sliding layers their
own rotary base (rope_local_base_freq). Either may soft-cap the final logits.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from nbllm.layers.activation import get_activation
from nbllm.layers.attention import Attention, AttentionMetadata, KVCache
from nbllm.layers.linear import FusedLinear
from nbllm.layers.norm import GemmaRMSNorm
from nbllm.layers.rotary import RotaryEmbedding, rope_parameters
from nbllm.models.weights import load_weights

SLIDING, FULL = "sliding_attention", "full_attention"


class GemmaMLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.gate_up_proj = FusedLinear(config.hidden_size, [config.intermediate_size] * 2, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = get_activation(getattr(config, "hidden_activation", None) or config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class GemmaAttention(nn.Module):
    def __init__(self, config: Any, sliding_window: Optional[int], qk_norm: bool, soft_cap: Optional[float]):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = FusedLinear(config.hidden_size, [self.q_size, self.kv_size, self.kv_size], bias=bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.attn = Attention(self.num_heads, self.head_dim, self.num_kv_heads, config.query_pre_attn_scalar ** -0.5,
                              sliding_window=sliding_window, logits_soft_cap=soft_cap)

    def forward(self, hidden: torch.Tensor, rotary: RotaryEmbedding, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        t = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # [T, (Hq + 2 Hkv) * D]
        qk = qkv[:, :self.q_size + self.kv_size].view(t, self.num_heads + self.num_kv_heads, self.head_dim)
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :self.num_heads]), self.k_norm(qk[:, self.num_heads:])), dim=1)
        qk = rotary.rotate(qk, rope)
        out = self.attn(qk[:, :self.num_heads], qk[:, self.num_heads:], v, kv_cache, meta)
        return self.o_proj(out)


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config: Any, sliding_window: Optional[int], qk_norm: bool, soft_cap: Optional[float]):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.self_attn = GemmaAttention(config, sliding_window, qk_norm, soft_cap)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
        self.mlp = GemmaMLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(self, hidden: torch.Tensor, rotary: RotaryEmbedding, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(hidden), rotary, rope, kv_cache, meta)
        hidden = hidden + self.post_attention_layernorm(attn)
        return hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))


class GemmaModel(nn.Module):
    def __init__(self, config: Any, layer_types: list[str], rope_by_type: dict[str, dict], qk_norm: bool,
                 soft_cap: Optional[float]):
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("bidirectional Gemma checkpoints (embedding models) cannot generate text")
        self.hidden_size = config.hidden_size
        self.layer_types = layer_types
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([
            GemmaDecoderLayer(config, config.sliding_window if kind == SLIDING else None, qk_norm, soft_cap)
            for kind in layer_types])
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = self.layers[0].self_attn.head_dim
        self.rotary = nn.ModuleDict({kind: RotaryEmbedding(head_dim, config.max_position_embeddings, params)
                                     for kind, params in rope_by_type.items()})

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, H]
        # sqrt(H) rounded to the weights' dtype first, as transformers' scaled embedding does
        hidden = hidden * torch.tensor(self.hidden_size ** 0.5).to(hidden.dtype).item()
        ropes = {kind: rotary.lookup(positions, hidden.dtype) for kind, rotary in self.rotary.items()}
        for layer, kind, kv_cache in zip(self.layers, self.layer_types, kv_caches):
            hidden = layer(hidden, self.rotary[kind], ropes[kind], kv_cache, meta)
        return self.norm(hidden)


class Gemma2ForCausalLM(nn.Module):
    """Gemma 2; Gemma3ForCausalLM switches on Gemma 3's differences."""

    packed_modules = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                      "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    qk_norm = False
    sliding_window_pattern = 2  # every second layer is global when the config lists no layer_types

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.model = GemmaModel(config, self.layer_types(config), self.rope_by_layer_type(config), self.qk_norm,
                                self.attention_soft_cap(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.final_soft_cap: Optional[float] = getattr(config, "final_logit_softcapping", None)
        self.tie_weights()

    def layer_types(self, config: Any) -> list[str]:
        """"sliding_attention" or "full_attention" for each layer, as transformers assigns them."""
        listed = getattr(config, "layer_types", None)
        if listed:
            return list(listed[:config.num_hidden_layers])
        pattern = getattr(config, "sliding_window_pattern", None) or self.sliding_window_pattern
        return [SLIDING if (i + 1) % pattern else FULL for i in range(config.num_hidden_layers)]

    @staticmethod
    def rope_by_layer_type(config: Any) -> dict[str, dict]:
        params = rope_parameters(config)
        return {SLIDING: params, FULL: params}

    @staticmethod
    def attention_soft_cap(config: Any) -> Optional[float]:
        return getattr(config, "attn_logit_softcapping", None)

    def tie_weights(self) -> None:
        """Share lm_head with embed_tokens when the config says so; needed again after to_empty() unties them."""
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.final_soft_cap is None:
            return logits
        return torch.tanh(logits / self.final_soft_cap) * self.final_soft_cap

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.tie_weights()
        load_weights(self, weights, self.packed_modules)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3's text model (gemma-3-1b and the like): QK-norm, no attention soft-capping, local rope base."""

    qk_norm = True
    sliding_window_pattern = 6

    @staticmethod
    def rope_by_layer_type(config: Any) -> dict[str, dict]:
        """transformers >= 5 keeps one rope set per layer type; older configs a global set plus rope_local_base_freq."""
        nested = getattr(config, "rope_parameters", None) or {}
        if FULL in nested or SLIDING in nested:
            return {kind: {**params, "rope_type": params.get("rope_type") or params.get("type") or "default"}
                    for kind, params in nested.items()}
        local_base = getattr(config, "rope_local_base_freq", None) or 10000.0
        return {FULL: rope_parameters(config), SLIDING: {"rope_type": "default", "rope_theta": local_base}}

    @staticmethod
    def attention_soft_cap(config: Any) -> Optional[float]:
        return None  # transformers' Gemma 3 attention ignores attn_logit_softcapping
