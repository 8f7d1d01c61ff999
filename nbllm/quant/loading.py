"""Build a model with quantized linear and embedding weights on the CPU.

``resolve_quantization`` reads vLLM's ``quantization`` argument: None means "what the checkpoint
is", so a GGUF file (the embedded default included) loads its quantized blocks as they are
("gguf"), unless ``dtype="float32"`` was asked for explicitly (then today's float32 path runs);
"int8" and "int4" quantize a float checkpoint on load (weight-only, groups of 32, each group's
min and max; "int4" keeps the embeddings and lm_head in 8 bits). ``build_quantized_model`` instantiates the model on the meta device, swaps every
``nn.Linear`` and the vocabulary embeddings for their quantized forms, streams the weights into
them (GGUF blocks decoded without a float copy) and packs them; for a GGUF the packed weights
are cached beside the converted folder (``packed_cache``), so later loads only map that file.

The quantized linears can also keep bfloat16 copies of their weights for large decode batches
(nbllm.layers.quantized_linear): ``dense_copies`` (the engine argument ``dense_weight_copies``)
True or False, or None for ``wants_dense_copies``' rule: a CPU with bfloat16 dot-product
instructions where nbllm's own int4 kernel does not run (or with AMX), and all copies together
within ``DENSE_COPIES_MAX_BYTES`` (the default model's take 256 MiB). The cache then holds them
too, so they are built once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from nbllm.config import QUANTIZATION_METHODS as _CONFIG_METHODS
from nbllm.gguf_convert import gguf_source, gguf_to_hf_name, unpermute_rotary
from nbllm.layers.linear import FusedLinear
from nbllm.layers.packed_linear import prepack_linears
from nbllm.layers.quantized_linear import QuantizedEmbedding, QuantizedLinear, QuantizedModule
from nbllm.loader import cpu_flags, cpu_runs_fast
from nbllm.quant import packed_cache
from nbllm.quant.gguf_blocks import REQUANTIZED_BITS, decode
from nbllm.quant.gguf_file import read_gguf
from nbllm.quant.groups import GROUP_SIZE, GroupQuant
from nbllm.quant.int4pack import int4pack_available

logger = logging.getLogger(__name__)
QUANTIZATION_METHODS = tuple(method for method in _CONFIG_METHODS if method is not None)
_BITS = {"gguf": REQUANTIZED_BITS, "int8": 8, "int4": 4}  # for float pieces: quantized to this many bits
VOCABULARY_BITS = 8
DENSE_COPIES_MAX_BYTES = 1 << 30


def resolve_quantization(requested: Optional[str], dtype: str, model_path: Path,
                         device: torch.device) -> Optional[str]:
    """The quantization to load with, or None for plain weights in `dtype`.

    `dtype` is the engine's dtype setting ("auto", "float32", ...), `model_path` the model folder.
    """
    from_gguf = gguf_source(model_path) is not None
    if requested is None:
        if from_gguf and device.type == "cpu" and dtype == "auto" and int4pack_available():
            return "gguf"
        return None
    if requested not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS} or None, got {requested!r}")
    if device.type != "cpu":
        raise ValueError(f"quantization={requested!r} runs on CPUs only (torch's int4 CPU kernel); on "
                         f"{device.type} leave quantization=None")
    if dtype not in ("auto", "float32"):
        raise ValueError(f"quantization={requested!r} computes in float32 around its bfloat16 products; "
                         f"leave dtype='auto' (or 'float32'), got dtype={dtype!r}")
    if requested == "gguf" and not from_gguf:
        raise ValueError(f"quantization='gguf' needs a .gguf model; {model_path} is not one")
    if not int4pack_available():
        raise ValueError(f"quantization={requested!r}: this torch build has no working CPU int4 kernel "
                         f"(aten._weight_int4pack_mm_for_cpu)")
    return requested


def build_quantized_model(hf_config: Any, model_path: Path, method: str,
                          dense_copies: Optional[bool] = False) -> nn.Module:
    """Our model class for `hf_config` on the CPU, its weights quantized by `method` (see above), its
    quantized linears with bfloat16 dense copies if `dense_copies` (None: by wants_dense_copies)."""
    from nbllm.loader import iter_weights
    from nbllm.models.registry import model_class_for

    with torch.device("meta"):
        model = model_class_for(hf_config)(hf_config)
    swap_quantized_modules(model, hf_config.vocab_size, _BITS[method])
    linears = [module for module in model.modules() if isinstance(module, QuantizedLinear)]
    keep_dense = wants_dense_copies(linears) if dense_copies is None else dense_copies
    for module in linears:
        module.keep_dense = keep_dense
    model = model.to(torch.float32).to_empty(device="cpu")
    for module in model.modules():  # buffers (rotary tables) were not materialised on meta
        if hasattr(module, "init_buffers"):
            module.init_buffers(torch.device("cpu"))
    cached = packed_cache.cache_file(model_path) if method == "gguf" else None
    if cached is None or not cached.is_file() or not packed_cache.restore(model, cached):
        weights = iter_gguf_weights(gguf_source(model_path)) if method == "gguf" else iter_weights(model_path)
        model.load_weights(weights)
        finalize_quantized_modules(model)
        if cached is not None:
            _save_quietly(model, cached)
    prepack_linears(model)  # any float linear left (none in the Llama family)
    use_rows_kernel(linears)
    return model.eval()


def use_rows_kernel(linears: list[QuantizedLinear]) -> None:
    """Let each packed linear whose shape suits it run its products on nbllm's row kernels with its exact
    scales, where this machine can (nbllm.quant.int4_rows; built on first use per machine), and keep only
    the buffers its products read."""
    from nbllm.quant.int4_rows import rows_kernel_available

    available = rows_kernel_available()
    for module in linears:
        module.use_rows_kernel(available)


def _save_quietly(model: nn.Module, path: Path) -> None:
    """Cache the packed weights; a cache that cannot be written (read-only, full) only costs later loads time."""
    try:
        packed_cache.save(model, path)
    except OSError as error:
        logger.warning("could not cache the packed weights in %s: %s", path, error)


def swap_quantized_modules(model: nn.Module, vocab_size: int, bits: int) -> int:
    """Replace nn.Linear and vocabulary nn.Embedding modules by empty quantized ones; returns how many.

    `bits` is for float weights quantized on arrival. The vocabulary matrices (embeddings and the
    lm_head) keep at least VOCABULARY_BITS: in 4 bits the default model's perplexity rose by 5.9%,
    with 8-bit vocabulary matrices it changed by -0.13% (tests/test_perplexity.py). Modules whose
    input width is not a multiple of 32 stay as they are.
    """
    swaps = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features % GROUP_SIZE == 0:
            out_sizes = module.out_sizes if isinstance(module, FusedLinear) else [module.out_features]
            width = max(bits, VOCABULARY_BITS) if module.out_features == vocab_size else bits
            swaps.append((name, QuantizedLinear(module.in_features, out_sizes, module.bias is not None, width)))
        elif (isinstance(module, nn.Embedding) and module.num_embeddings == vocab_size
              and module.embedding_dim % GROUP_SIZE == 0):
            width = max(bits, VOCABULARY_BITS)
            swaps.append((name, QuantizedEmbedding(module.num_embeddings, module.embedding_dim, width)))
    for name, replacement in swaps:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, replacement)
    return len(swaps)


def wants_dense_copies(linears: list[QuantizedLinear]) -> bool:
    """The default for dense copies: this CPU multiplies bfloat16 natively (without such instructions
    oneDNN's bfloat16 products are no faster than the int4 kernel), the copies fit the budget, and
    nbllm's own int4 kernel does not serve the products, or the CPU has AMX (oneDNN's bfloat16 tiles).

    nbllm::int4_rows (nbllm.quant.int4_rows) matches the copies at 12-64 rows on AVX-512 BF16: the
    default model's decode step of 64 sequences 54.3 against 52.3 ms of products, 1.5x faster at 12
    rows (2-core AMD EPYC); and it computes the exact quantized weights' product, the same for a row
    whatever the batch, where the copies round the weights to bfloat16 (256 MiB for the default model)."""
    from nbllm.quant.int4_rows import rows_kernel_available

    size = sum(2 * module.in_features * module.out_features for module in linears)
    if not 0 < size <= DENSE_COPIES_MAX_BYTES or not cpu_has_bf16_dot_products():
        return False
    return not rows_kernel_available() or cpu_has_amx()


def cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo lists AMX-BF16 (Intel Sapphire Rapids and later)."""
    flags = cpu_flags()
    return flags is not None and "amx_bf16" in flags


def cpu_has_bf16_dot_products() -> bool:
    """Whether /proc/cpuinfo lists AVX-512 BF16, AMX-BF16 or Arm's BF16 (False where it cannot be read)."""
    return cpu_flags() is not None and cpu_runs_fast(torch.bfloat16)


def finalize_quantized_modules(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, QuantizedModule) and module.weight is not None:  # not finalized on its last piece
            try:
                module.finalize()
            except ValueError as error:
                raise ValueError(f"checkpoint is missing weights of {name}: {error}") from None


def iter_gguf_weights(gguf_path: Path) -> Iterator[tuple[str, Union[GroupQuant, torch.Tensor]]]:
    """(transformers name, GroupQuant or float32 tensor) for every tensor of a Llama GGUF file.

    Matrices stored in a type that maps onto groups of 32 come as GroupQuant (no float copy);
    vectors (norms) and matrices of other types come dequantized, as float32. q and k rows are
    put back in transformers' order (gguf_convert.unpermute_rotary).
    """
    from gguf.quants import dequantize

    metadata, tensors = read_gguf(gguf_path)
    architecture = metadata["general.architecture"]
    n_heads = metadata[f"{architecture}.attention.head_count"]
    n_kv_heads = metadata.get(f"{architecture}.attention.head_count_kv") or n_heads
    for tensor in tensors:
        hf_name = gguf_to_hf_name(tensor.name)
        rows = None
        if ".self_attn.q_proj." in hf_name:
            rows = unpermute_rotary(np.arange(tensor.shape[0]), n_heads)
        elif ".self_attn.k_proj." in hf_name:
            rows = unpermute_rotary(np.arange(tensor.shape[0]), n_kv_heads)
        quantized = decode(tensor.data, tensor.tensor_type, tensor.shape) if len(tensor.shape) == 2 else None
        if quantized is not None:
            yield hf_name, quantized if rows is None else quantized.rows(torch.from_numpy(rows))
            continue
        values = dequantize(tensor.data, tensor.tensor_type).reshape(tensor.shape)
        if rows is not None:
            values = values[rows]
        yield hf_name, torch.from_numpy(np.array(values, dtype=np.float32))
