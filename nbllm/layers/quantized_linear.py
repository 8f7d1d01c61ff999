"""Linear and embedding layers whose weights are quantized groups (CPU, inference only).

A model is built as usual, then ``nbllm.quant.loading`` swaps its ``nn.Linear`` and vocabulary
``nn.Embedding`` modules for these. Each starts empty, holding a ``QuantizedWeight`` under the
name ``weight``, so a model's own ``tie_weights`` (``lm_head.weight = embed_tokens.weight``)
shares it like a tensor; checkpoint pieces arrive through ``load_shard`` (as GroupQuant, or as
float tensors quantized on arrival) and ``finalize()`` turns them into buffers: a linear layer as
soon as its last piece arrives, embeddings (and the lm_head tied to one) after loading:

- ``QuantizedLinear``: torch's packed int4 layout (``nbllm.quant.int4pack``); the product runs in
  bfloat16 with float32 accumulation, and its output is returned in the input's dtype. Products
  where ``rows_kernel`` is set run on nbllm's kernels instead (``nbllm.quant.int4_rows``: the same
  packed values, or for 8-bit weights their bytes in ``int8_weight``, with the exact float32 scales
  kept in ``exact_scales``, float32 output); the loader then drops the buffers the products do not
  read (``use_rows_kernel``). With
  ``keep_dense`` set before finalizing, it also keeps a bfloat16 copy of its dequantized weight,
  which ``DenseProducts`` lets it use for products of ``DENSE_MIN_ROWS`` rows or more: torch's int4
  kernel is compute-bound there (about 165 GFLOP/s at 64 rows on a 2-core AVX-512 machine, where
  oneDNN's bfloat16 product reaches 300-420), while one row streams 3.3x fewer bytes through it.
- ``QuantizedEmbedding``: the integer values (two 4-bit values a byte for 4-bit groups) with
  float32 scales and minimums; a lookup dequantizes only the rows it reads, exactly.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from nbllm.quant.groups import GROUP_SIZE, GroupQuant
from nbllm.quant.int4pack import ACTIVATION_DTYPE, exact_scales, int4_matmul, int8_layout, pack, rows_matmul

# Products of this many rows or more use a layer's dense copy, where it has one: measured on the
# default model's four layer shapes, the bfloat16 copy is 12% faster at 12 rows, 45% at 64, and
# slower below 10 (2-core AMD EPYC, AVX-512 BF16).
DENSE_MIN_ROWS = 12

Piece = Union[GroupQuant, torch.Tensor]


class QuantizedWeight:
    """The pieces of one (possibly fused) weight as they arrive, then the whole as one GroupQuant."""

    def __init__(self, out_sizes: list[int], in_features: int, bits: int):
        self.out_sizes = list(out_sizes)
        self.in_features = in_features
        self.bits = bits  # for float pieces, quantized on arrival
        self._pieces: dict[int, GroupQuant] = {}
        self._whole: Optional[GroupQuant] = None

    def set_piece(self, shard: int, piece: Piece) -> None:
        expected = (self.out_sizes[shard], self.in_features)
        if tuple(piece.shape) != expected:
            raise ValueError(f"weight shard {shard}: expected shape {expected}, got {tuple(piece.shape)}")
        self._pieces[shard] = piece if isinstance(piece, GroupQuant) else GroupQuant.from_float(piece, self.bits)
        self._whole = None

    @property
    def complete(self) -> bool:
        return len(self._pieces) == len(self.out_sizes)

    def whole(self) -> GroupQuant:
        if not self.complete:
            raise ValueError(f"weight shards {sorted(set(range(len(self.out_sizes))) - set(self._pieces))} "
                             f"never arrived")
        if self._whole is None:
            self._whole = GroupQuant.cat([self._pieces[i] for i in range(len(self.out_sizes))])
        return self._whole


class QuantizedModule(nn.Module):
    """What the weight loader recognises: pieces go to `load_shard`, `finalize` builds the buffers."""

    weight: Optional[QuantizedWeight]

    def load_shard(self, shard: int, param_name: str, tensor: Piece) -> None:
        raise NotImplementedError

    def finalize(self) -> None:
        raise NotImplementedError


class QuantizedLinear(QuantizedModule):
    """y = x W^T + b with W in torch's packed int4 layout (one plane for 4-bit groups, two for up to 8)."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool, bits: int):
        super().__init__()
        if in_features % GROUP_SIZE:
            raise ValueError(f"in_features={in_features} is not a multiple of the group size {GROUP_SIZE}")
        self.in_features = in_features
        self.out_features = sum(out_sizes)
        self.out_sizes = list(out_sizes)
        self.weight = QuantizedWeight(out_sizes, in_features, bits)
        self.planes = 0
        self._bias_shards: set[int] = set()
        self.register_buffer("packed_weight", None, persistent=False)
        self.register_buffer("scales_and_zeros", None, persistent=False)
        self.register_buffer("exact_scales", None, persistent=False)  # float32, for nbllm's row kernels
        self.register_buffer("int8_weight", None, persistent=False)  # 8-bit weights: nbllm::int8_rows' layout
        self.register_buffer("bias", torch.zeros(self.out_features) if bias else None, persistent=False)
        self.keep_dense = False  # set before finalize(): also keep the bfloat16 dense copy
        self.use_dense = False  # set by DenseProducts: products of DENSE_MIN_ROWS rows or more use the copy
        self.rows_kernel = False  # set by the loader: products use nbllm's row kernels and exact_scales
        self.register_buffer("dense_weight", None, persistent=False)  # [N, K] bfloat16, or None

    def load_shard(self, shard: int, param_name: str, tensor: Piece) -> None:
        self._load(shard, param_name, tensor)
        if self.weight.complete and (self.bias is None or len(self._bias_shards) == len(self.out_sizes)):
            self.finalize()  # pack now: the pieces need not wait for the rest of the checkpoint

    def _load(self, shard: int, param_name: str, tensor: Piece) -> None:
        if param_name == "weight":
            self.weight.set_piece(shard, tensor)
            return
        if param_name != "bias" or self.bias is None:
            raise ValueError(f"unexpected parameter {param_name!r} for a quantized linear layer")
        start = sum(self.out_sizes[:shard])
        if tuple(tensor.shape) != (self.out_sizes[shard],):
            raise ValueError(f"bias shard {shard}: expected {self.out_sizes[shard]} values, got {tuple(tensor.shape)}")
        with torch.no_grad():
            self.bias[start:start + self.out_sizes[shard]].copy_(tensor)
        self._bias_shards.add(shard)

    def finalize(self) -> None:
        if self.bias is not None and len(self._bias_shards) != len(self.out_sizes):
            raise ValueError(f"bias shards {sorted(set(range(len(self.out_sizes))) - self._bias_shards)} never arrived")
        whole = self.weight.whole()
        self.packed_weight, self.scales_and_zeros, self.planes = pack(whole)
        self.exact_scales = exact_scales(whole, self.packed_weight.shape[0])
        if self.planes == 2:
            self.int8_weight = int8_layout(whole, self.packed_weight.shape[0])
        if self.keep_dense:
            self.dense_weight = whole.dequantize().to(ACTIVATION_DTYPE)
        self.weight = None  # the pieces (and a tied embedding's copy of them) can go

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.use_dense and self.dense_weight is not None and rows.shape[0] >= DENSE_MIN_ROWS:
            out = F.linear(rows.to(ACTIVATION_DTYPE), self.dense_weight).to(x.dtype)
        elif self.rows_kernel:
            out = rows_matmul(rows, *self.product_buffers(), 8 if self.planes == 2 else 4).to(x.dtype)
        else:
            out = int4_matmul(rows, *self.product_buffers(), self.planes).to(x.dtype)
        if out.shape[1] != self.out_features:  # rows padded to a multiple of 16 for the kernel
            out = out[:, :self.out_features]
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def product_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, scales) as the products read them (dense copies aside): nbllm's row kernel's or torch's."""
        if self.rows_kernel:
            return self.int8_weight if self.planes == 2 else self.packed_weight, self.exact_scales
        return self.packed_weight, self.scales_and_zeros

    def use_rows_kernel(self, available: bool) -> None:
        """Run products on nbllm's row kernels if `available` (and this layer's shape suits them: exact_scales
        exist), and drop the buffers the chosen kernel does not read."""
        self.rows_kernel = available and self.exact_scales is not None  # None: not blocks of 64 rows
        if self.rows_kernel:
            self.scales_and_zeros = None
            if self.planes == 2:
                self.packed_weight = None
        else:
            self.exact_scales = self.int8_weight = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, planes={self.planes}, "
                f"dense_copy={self.dense_weight is not None}, bias={self.bias is not None}")


class DenseProducts:
    """Turns a model's dense copies on or off for its next products (the model runner decides per step).

    The runner turns them on only for decode steps of DENSE_MIN_ROWS sequences or more: a prompt's
    prefill, and so its KV cache and first token, always come from the int4 kernel's exact weights,
    whatever else runs in the engine; the bfloat16-rounded copies only serve large decode batches.
    """

    def __init__(self, model: Optional[nn.Module]):
        modules = model.modules() if model is not None else ()
        self.layers = [m for m in modules if isinstance(m, QuantizedLinear) and m.dense_weight is not None]
        self.enabled = False

    def set(self, enabled: bool) -> None:
        enabled = enabled and bool(self.layers)
        if enabled != self.enabled:
            for layer in self.layers:
                layer.use_dense = enabled
            self.enabled = enabled


class QuantizedEmbedding(QuantizedModule):
    """An embedding table of quantized groups; looked-up rows are dequantized in float32."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = QuantizedWeight([num_embeddings], embedding_dim, bits)
        self.nibbles = False
        self.register_buffer("values", None, persistent=False)
        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("minimum", None, persistent=False)

    def load_shard(self, shard: int, param_name: str, tensor: Piece) -> None:
        if param_name != "weight":
            raise ValueError(f"unexpected parameter {param_name!r} for a quantized embedding")
        self.weight.set_piece(shard, tensor)  # finalized after loading: a tied lm_head shares these pieces

    def finalize(self) -> None:
        whole = self.weight.whole()
        self.nibbles = whole.bits <= 4
        values = whole.values
        self.values = values[:, 0::2] | (values[:, 1::2] << 4) if self.nibbles else values.clone()
        self.scale, self.minimum = whole.scale.clone(), whole.minimum.clone()
        self.weight = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        values = self.values.index_select(0, flat)
        if self.nibbles:
            values = torch.stack((values & 0x0F, values >> 4), dim=-1).view(flat.shape[0], self.embedding_dim)
        groups = values.view(flat.shape[0], -1, GROUP_SIZE).float()
        rows = groups * self.scale.index_select(0, flat)[..., None] + self.minimum.index_select(0, flat)[..., None]
        return rows.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, nibbles={self.nibbles}"
