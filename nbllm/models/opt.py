"""OPT on the paged KV cache: learned positions (offset by 2), LayerNorm blocks, ReLU MLP.

Covers both layouts Meta shipped: pre-LayerNorm (most sizes) and post-LayerNorm
(opt-350m, do_layer_norm_before=False), and a word embedding narrower than the
model (word_embed_proj_dim) with project_in/project_out around the decoder.
q/k/v are fused into one projection; checkpoint names map onto ours otherwise.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from nbllm.layers.activation import get_activation
from nbllm.layers.attention import Attention, AttentionMetadata, KVCache
from nbllm.layers.linear import FusedLinear
from nbllm.models.weights import load_weights

POSITION_OFFSET = 2  # OPT's position table reserves its first two rows (fairseq's padding legacy)


def _layer_norm(config: Any) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, elementwise_affine=getattr(config, "layer_norm_elementwise_affine", True))


class OPTAttention(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        bias = getattr(config, "enable_bias", True)
        self.qkv_proj = FusedLinear(hidden, [hidden] * 3, bias=bias)
        self.out_proj = nn.Linear(hidden, hidden, bias=bias)
        self.attn = Attention(self.num_heads, self.head_dim, self.num_heads, self.head_dim ** -0.5)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).chunk(3, dim=-1)  # each [T, H]
        return self.out_proj(self.attn(q.contiguous(), k.contiguous(), v.contiguous(), kv_cache, meta))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        bias = getattr(config, "enable_bias", True)
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = _layer_norm(config)
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_dim, bias=bias)
        self.fc2 = nn.Linear(config.ffn_dim, config.hidden_size, bias=bias)
        self.act = get_activation(config.activation_function)
        self.final_layer_norm = _layer_norm(config)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        if self.pre_norm:
            hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden), kv_cache, meta)
            return hidden + self.fc2(self.act(self.fc1(self.final_layer_norm(hidden))))
        hidden = self.self_attn_layer_norm(hidden + self.self_attn(hidden, kv_cache, meta))
        return self.final_layer_norm(hidden + self.fc2(self.act(self.fc1(hidden))))


class OPTDecoder(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        hidden, embed_dim = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = nn.Embedding(config.vocab_size, embed_dim)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, hidden)
        narrow = embed_dim != hidden
        self.project_in = nn.Linear(embed_dim, hidden, bias=False) if narrow else None
        self.project_out = nn.Linear(hidden, embed_dim, bias=False) if narrow else None
        has_final_norm = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        self.final_layer_norm = _layer_norm(config) if has_final_norm else None
        self.layers = nn.ModuleList([OPTDecoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)  # [T, E]
        if self.project_in is not None:
            embeds = self.project_in(embeds)  # [T, H]
        hidden = embeds + self.embed_positions(positions + POSITION_OFFSET)
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden = layer(hidden, kv_cache, meta)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)  # [T, E]
        return hidden


class OPTModel(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.decoder = OPTDecoder(config)


class OPTForCausalLM(nn.Module):
    packed_modules = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2)}

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with embed_tokens (OPT's default); needed again after to_empty() unties them."""
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        return self.model.decoder(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.tie_weights()
        load_weights(self, _from_hf(weights), self.packed_modules)


def _from_hf(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Meta's original checkpoints name the decoder without the `model.` prefix."""
    for name, tensor in weights:
        yield ("model." + name if name.startswith("decoder.") else name), tensor
