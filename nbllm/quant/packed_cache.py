"""A quantized model's packed weights saved once, so later loads skip decoding and packing.

A GGUF model converted into nbllm's cache gets, beside it, ``packed-<fingerprint>.nbllm-cache``
(a safetensors file, named so that no loader takes it for a checkpoint shard): every parameter
of the built model and every buffer of its quantized modules, with the packing details
(planes, nibbles) in the file's metadata. The fingerprint covers the torch version, the set of
buffers a quantized linear keeps (a file from before ``exact_scales`` or ``int8_weight`` is not read), and
the packed layout itself (torch's CPU int4 layout depends on the vector instructions it
dispatches to), so a file written by another torch or on another CPU is never read.
Loading it memory-maps the file: a few hundred milliseconds instead of seconds. A file without the
dense copies the model now wants (``keep_dense``) does not fit and is rebuilt; copies it has that the
model does not want are left unread.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from nbllm.layers.quantized_linear import QuantizedEmbedding, QuantizedLinear, QuantizedModule
from nbllm.quant.groups import GroupQuant
from nbllm.quant.int4pack import pack

_DETAILS_KEY = "nbllm.quantized"


@lru_cache(maxsize=1)
def layout_fingerprint() -> str:
    """A hash of torch's version and of how this machine's torch packs a fixed matrix."""
    values = (torch.arange(64 * 64, dtype=torch.int64) * 7 % 251).to(torch.uint8).view(64, 64)
    probe = GroupQuant(values, torch.full((64, 2), 0.5), torch.full((64, 2), -1.0), 8)
    packed, scales_and_zeros, _ = pack(probe)
    # the buffers a quantized linear keeps: files from before exact_scales, or before 8-bit weights had
    # int8_weight and (scale, minimum) exact scales, are rebuilt
    digest = hashlib.sha1(f"{torch.__version__} exact_scales [N/64, G, 2, 64] or none, int8_weight".encode())
    digest.update(packed.numpy().tobytes())
    digest.update(scales_and_zeros.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:12]


def cache_file(folder: Path) -> Path:
    # not *.safetensors: loaders glob those as checkpoint shards
    return Path(folder) / f"packed-{layout_fingerprint()}.nbllm-cache"


def save(model: nn.Module, path: Path) -> None:
    """Write the model's parameters and quantized buffers to `path` (atomically: a whole file or none)."""
    from safetensors.torch import save_file

    tensors, details = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedModule):
            for leaf, buffer in module.named_buffers(recurse=False):
                if buffer is not None:
                    tensors[f"{name}.{leaf}"] = buffer
            details[name] = module.planes if isinstance(module, QuantizedLinear) else module.nibbles
    for name, param in model.named_parameters():
        tensors[name] = param.detach()
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={_DETAILS_KEY: json.dumps(details)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def restore(model: nn.Module, path: Path) -> bool:
    """Fill an empty quantized model (as swap_quantized_modules leaves it) from `path`; False if it does not fit."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        details = json.loads((f.metadata() or {}).get(_DETAILS_KEY, "{}"))
        quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedModule)}
        params = dict(model.named_parameters())
        keys = set(f.keys())
        if set(details) != set(quantized) or not set(params) <= keys:
            return False
        for name, module in quantized.items():
            if getattr(module, "keep_dense", False) and f"{name}.dense_weight" not in keys:
                return False
        for key in keys:
            module_name, _, leaf = key.rpartition(".")
            module = model.get_submodule(module_name)
            if leaf == "dense_weight" and not module.keep_dense:
                continue
            tensor = f.get_tensor(key)
            if key in params:
                if params[key].shape != tensor.shape:
                    return False
                setattr(module, leaf, nn.Parameter(tensor, requires_grad=False))
            else:
                setattr(module, leaf, tensor)
    for name, module in quantized.items():
        if isinstance(module, QuantizedLinear):
            module.planes = int(details[name])
        elif isinstance(module, QuantizedEmbedding):
            module.nibbles = bool(details[name])
        module.weight = None
    if hasattr(model, "tie_weights"):  # a float lm_head tied to a float embedding shares the restored tensor
        model.tie_weights()
    return True
