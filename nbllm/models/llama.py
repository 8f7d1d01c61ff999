"""The Llama family on the paged KV cache: Llama (SmolLM, TinyLlama), Mistral, Qwen2, Qwen3, Phi-3 and SmolLM3.

They differ only in details read from the config: biases on q/k/v (Qwen2),
per-head RMSNorm of q and k (Qwen3), GQA/MQA head counts, rope scaling and tied
embeddings, sliding-window layers (Mistral, Phi-3, Qwen2/3 with use_sliding_window)
and layers without rotary embeddings (SmolLM3's NoPE layers). Tokens arrive packed
as [T]; nothing here knows about requests.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import nn

from nbllm.layers.activation import get_activation, silu_and_mul
from nbllm.layers.attention import Attention, AttentionMetadata, KVCache
from nbllm.layers.linear import FusedLinear
from nbllm.layers.norm import RMSNorm
from nbllm.layers.rotary import RotaryEmbedding, build_rotary
from nbllm.layers.torch_attention import gathered_decode_attention
from nbllm.models.layer_types import sliding_window_for
from nbllm.models.weights import load_weights


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, biases: tuple[bool, bool], qk_norm: bool, layer_idx: int, use_rope: bool):
        super().__init__()
        qkv_bias, o_bias = biases
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = FusedLinear(config.hidden_size, [self.q_size, self.kv_size, self.kv_size], bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.use_rope = use_rope
        self.attn = Attention(self.num_heads, self.head_dim, self.num_kv_heads, self.head_dim ** -0.5,
                              sliding_window=sliding_window_for(config, layer_idx))

    def project(self, hidden: torch.Tensor, rotary: RotaryEmbedding,
                rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k and v [T, Hkv, D]: the projections, q/k norms and rotary, without the cache."""
        t = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # [T, (Hq + 2 Hkv) * D]
        heads = self.num_heads + self.num_kv_heads
        qk = qkv[:, :self.q_size + self.kv_size].view(t, heads, self.head_dim)  # [T, Hq + Hkv, D]
        v = qkv[:, self.q_size + self.kv_size:].view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :self.num_heads]), self.k_norm(qk[:, self.num_heads:])), dim=1)
        if self.use_rope:
            qk = rotary.rotate(qk, rope)  # q and k rotated in one pass
        return qk[:, :self.num_heads], qk[:, self.num_heads:], v


class LlamaMLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_up_proj = FusedLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        act = getattr(config, "hidden_act", "silu")
        if get_activation(act) is not get_activation("silu"):
            raise ValueError(f"Llama-family MLP expects a SiLU gate, got hidden_act={act!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: Any, biases: tuple[bool, bool], qk_norm: bool, layer_idx: int, use_rope: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, biases, qk_norm, layer_idx, use_rope)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    # A layer's two dense halves, on either side of the paged attention (which writes the KV cache).
    def before_attention(self, hidden: torch.Tensor, rotary: RotaryEmbedding, rope: tuple[torch.Tensor, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.self_attn.project(self.input_layernorm(hidden), rotary, rope)

    def after_attention(self, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn.o_proj(attn_out)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def first_region(layer: LlamaDecoderLayer, hidden: torch.Tensor, rotary: RotaryEmbedding,
                 rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first layer's q, k, v."""
    return layer.before_attention(hidden, rotary, rope)


def between_region(layer: LlamaDecoderLayer, next_layer: LlamaDecoderLayer, hidden: torch.Tensor,
                   attn_out: torch.Tensor, rotary: RotaryEmbedding, rope: tuple[torch.Tensor, torch.Tensor]
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """From one layer's attention output to the next layer's q, k, v: (hidden, (q, k, v))."""
    hidden = layer.after_attention(hidden, attn_out)
    return hidden, next_layer.before_attention(hidden, rotary, rope)


def last_region(layer: LlamaDecoderLayer, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The last layer's output."""
    return layer.after_attention(hidden, attn_out)


def attending_between_region(layer: LlamaDecoderLayer, next_layer: LlamaDecoderLayer, hidden: torch.Tensor,
                             q: torch.Tensor, kv_cache: KVCache, slots: torch.Tensor, mask: torch.Tensor,
                             rotary: RotaryEmbedding, rope: tuple[torch.Tensor, torch.Tensor]
                             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """between_region with the layer's decode attention inside (its keys and values already in the cache)."""
    attn_out = gathered_decode_attention(q, kv_cache[0], kv_cache[1], slots, mask, layer.self_attn.attn.scale)
    return between_region(layer, next_layer, hidden, attn_out, rotary, rope)


def attending_last_region(layer: LlamaDecoderLayer, hidden: torch.Tensor, q: torch.Tensor, kv_cache: KVCache,
                          slots: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """last_region with the layer's decode attention inside."""
    attn_out = gathered_decode_attention(q, kv_cache[0], kv_cache[1], slots, mask, layer.self_attn.attn.scale)
    return last_region(layer, hidden, attn_out)


class DenseRegions(NamedTuple):
    """The code between two attentions, as callables: eager (the functions above), or compiled
    (nbllm.engine.cpu_compile), which is why a whole stretch from one attention to the next is one call.
    The attending ones also hold the attention (compiled decode steps; see LlamaModel.forward)."""

    first: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    between: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    last: Callable[..., torch.Tensor]
    attending_between: Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    attending_last: Callable[..., torch.Tensor]


EAGER_REGIONS = DenseRegions(first_region, between_region, last_region, attending_between_region,
                             attending_last_region)


class LlamaModel(nn.Module):
    def __init__(self, config: Any, biases: tuple[bool, bool], qk_norm: bool, rope_layers: list[bool]):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, biases, qk_norm, i, rope_layers[i])
                                     for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = build_rotary(config, self.layers[0].self_attn.head_dim)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata, regions: DenseRegions = EAGER_REGIONS,
                attend_in_regions: bool = False) -> torch.Tensor:
        """attend_in_regions: a decode-only step on TorchAttentionBackend whose attention runs inside the
        regions (gathered_decode_attention); the backend only stores each layer's keys and values."""
        hidden = self.embed_tokens(input_ids)  # [T, H]
        rope = self.rotary.lookup(positions, hidden.dtype)  # once per step, for every layer
        layers = self.layers
        q, k, v = regions.first(layers[0], hidden, self.rotary, rope)
        if attend_in_regions:
            return self.norm(self._attending_layers(q, k, v, hidden, rope, kv_caches, meta, regions))
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches)):
            attn_out = layer.self_attn.attn(q, k, v, kv_cache, meta)  # [T, Hq * D]
            if i + 1 < len(layers):
                hidden, (q, k, v) = regions.between(layer, layers[i + 1], hidden, attn_out, self.rotary, rope)
            else:
                hidden = regions.last(layer, hidden, attn_out)
        return self.norm(hidden)

    def _attending_layers(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hidden: torch.Tensor,
                          rope: tuple[torch.Tensor, torch.Tensor], kv_caches: list[KVCache], meta: AttentionMetadata,
                          regions: DenseRegions) -> torch.Tensor:
        backend, layers = meta.backend, self.layers
        slots = meta.extras["decode_slots"]
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches)):
            attn = layer.self_attn.attn
            backend.store(k, v, kv_cache, meta)
            mask = backend.decode_mask(meta, attn.sliding_window)
            if i + 1 < len(layers):
                hidden, (q, k, v) = regions.attending_between(layer, layers[i + 1], hidden, q, kv_cache, slots, mask,
                                                              self.rotary, rope)
            else:
                hidden = regions.attending_last(layer, hidden, q, kv_cache, slots, mask)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Llama and Mistral; subclasses switch on Qwen's differences."""

    qk_norm = False
    dense_regions = EAGER_REGIONS  # what nbllm.engine.cpu_compile compiles
    packed_modules = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                      "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.attention_biases(config), self.qk_norm, self.rope_layers(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with embed_tokens when the config says so; needed again after to_empty() unties them."""
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def attention_biases(config: Any) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o_proj) as Hugging Face builds them."""
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    @staticmethod
    def rope_layers(config: Any) -> list[bool]:
        """Whether each layer rotates q and k; every layer does, except SmolLM3's NoPE layers."""
        return [True] * config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata, regions: DenseRegions = EAGER_REGIONS,
                attend_in_regions: bool = False) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta, regions, attend_in_regions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def warm_up_regions(self, regions: DenseRegions, num_tokens: int) -> None:
        """Call each of `regions` once on zeros of `num_tokens` tokens (which compiles compiled ones)."""
        inner = self.model
        layers, rotary = inner.layers, inner.rotary
        norm = inner.norm.weight  # [H], in the activations' dtype
        hidden = torch.zeros(num_tokens, norm.shape[0], dtype=norm.dtype, device=norm.device)
        rope = rotary.lookup(torch.zeros(num_tokens, dtype=torch.int64, device=norm.device), hidden.dtype)
        q, _, _ = regions.first(layers[0], hidden, rotary, rope)
        attn_out = q.new_zeros(num_tokens, q.shape[1] * q.shape[2])
        if len(layers) > 1:
            regions.between(layers[0], layers[1], hidden, attn_out, rotary, rope)
        regions.last(layers[-1], hidden, attn_out)

    def warm_up_attending_regions(self, regions: DenseRegions, kv_cache: KVCache, batch_sizes: Iterable[int],
                                  context_lengths: Iterable[int]) -> None:
        """Call the attending regions once per batch size and context length, reading only slot 0 of
        `kv_cache` (the zeroed padding block), which compiles compiled ones; the second of each makes that
        dimension symbolic (one sequence stays a specialized graph of its own)."""
        inner = self.model
        layers, rotary = inner.layers, inner.rotary
        norm = inner.norm.weight
        for size in batch_sizes:
            hidden = torch.zeros(size, norm.shape[0], dtype=norm.dtype, device=norm.device)
            rope = rotary.lookup(torch.zeros(size, dtype=torch.int64, device=norm.device), hidden.dtype)
            q, _, _ = regions.first(layers[0], hidden, rotary, rope)
            for length in context_lengths:
                slots = torch.zeros(size, length, dtype=torch.int64, device=norm.device)
                mask = torch.ones(size, 1, 1, length, dtype=torch.bool, device=norm.device)
                if len(layers) > 1:
                    regions.attending_between(layers[0], layers[1], hidden, q, kv_cache, slots, mask, rotary, rope)
                regions.attending_last(layers[-1], hidden, q, kv_cache, slots, mask)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.tie_weights()
        load_weights(self, weights, self.packed_modules)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_biases(config: Any) -> tuple[bool, bool]:
        return True, False


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True


class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3 and Phi-4-mini: checkpoints store q/k/v and gate/up already fused under our names
    (qkv_proj, gate_up_proj, same row order), so they load as they are. Its config's
    sliding_window covers every layer; LongRoPE lives in nbllm.layers.rotary."""


class SmolLM3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def rope_layers(config: Any) -> list[bool]:
        """no_rope_layers[i] is 1 where layer i uses RoPE (transformers derives it from no_rope_layer_interval)."""
        return [bool(flag) for flag in config.no_rope_layers[:config.num_hidden_layers]]
