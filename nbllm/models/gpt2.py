"""GPT-2 on the paged KV cache: learned absolute positions, pre-LayerNorm blocks, GELU MLP.

Module names mirror Hugging Face's GPT2LMHeadModel so checkpoint names map one to
one; only HF's Conv1D weights ([in, out]) are transposed into nn.Linear ([out, in])
on load. Tokens arrive packed as [T] with their absolute positions.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from nbllm.layers.activation import get_activation
from nbllm.layers.attention import Attention, AttentionMetadata, KVCache
from nbllm.models.weights import load_weights

_CONV1D_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.c_attn = nn.Linear(hidden, 3 * hidden)  # q, k, v stacked
        self.c_proj = nn.Linear(hidden, hidden)
        scale = self.head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1  # Stanford CRFM's stabler GPT-2 training runs
        self.attn = Attention(self.num_heads, self.head_dim, self.num_heads, scale)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.c_attn(hidden).chunk(3, dim=-1)  # each [T, H]
        return self.c_proj(self.attn(q.contiguous(), k.contiguous(), v.contiguous(), kv_cache, meta))


class GPT2MLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.hidden_size
        self.c_fc = nn.Linear(config.hidden_size, inner)
        self.c_proj = nn.Linear(inner, config.hidden_size)
        self.act = get_activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), kv_cache, meta)
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)  # [T, H]
        for block, kv_cache in zip(self.h, kv_caches):
            hidden = block(hidden, kv_cache, meta)
        return self.ln_f(hidden)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        if getattr(config, "add_cross_attention", False):
            raise NotImplementedError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with wte (GPT-2's default); needed again after to_empty() unties them."""
        if getattr(self.config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        return self.transformer(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.tie_weights()
        load_weights(self, _from_hf(weights))


def _from_hf(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF GPT-2 names and Conv1D layouts -> ours; drops the causal-mask buffers old checkpoints carry."""
    for name, tensor in weights:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # the original OpenAI checkpoints lack the prefix
        if name.endswith(".weight") and name[:-len(".weight")].endswith(_CONV1D_MODULES):
            tensor = tensor.t()
        yield name, tensor
