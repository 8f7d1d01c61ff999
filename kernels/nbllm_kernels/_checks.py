"""Argument checks shared by the kernel wrappers: they raise ValueError naming the bad input.

A Triton kernel given a wrong shape reads or writes the wrong memory without a word,
so every wrapper checks what it can see on the host (shapes, dtypes, devices) before
it launches. Values inside tensors (slots, block ids, lengths) are not checked: that
would need a device-to-host copy on every call.
"""

import torch

ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_kv_cache(key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    """Both caches are [num_blocks, block_size, Hkv, D] alike, block_size a power of two."""
    if key_cache.dim() != 4:
        raise ValueError(
            f"key_cache must be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got shape {tuple(key_cache.shape)}"
        )
    if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype:
        raise ValueError(
            f"value_cache {tuple(value_cache.shape)} {value_cache.dtype} must match "
            f"key_cache {tuple(key_cache.shape)} {key_cache.dtype}"
        )
    block_size = key_cache.shape[1]
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if key_cache.dtype not in ATTENTION_DTYPES:
        raise ValueError(f"kv cache dtype must be one of {ATTENTION_DTYPES}, got {key_cache.dtype}")


def check_query(q: torch.Tensor, key_cache: torch.Tensor) -> None:
    """q is [tokens, Hq, D] with the cache's dtype and head_dim, Hq a multiple of Hkv."""
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, num_heads, head_dim], got shape {tuple(q.shape)}")
    num_kv_heads, head_dim = key_cache.shape[2:]
    if q.shape[2] != head_dim:
        raise ValueError(f"q head_dim {q.shape[2]} differs from the cache's {head_dim}")
    if q.shape[1] % num_kv_heads:
        raise ValueError(
            f"q's {q.shape[1]} heads are not a multiple of the cache's {num_kv_heads} kv heads"
        )
    if q.dtype != key_cache.dtype:
        raise ValueError(f"q dtype {q.dtype} differs from the cache's {key_cache.dtype}")


def check_index(
    name: str, tensor: torch.Tensor, shape: tuple[int | None, ...], dtype: torch.dtype
) -> None:
    """An index tensor (block table, lengths, slots) has the given shape and integer dtype.

    A ``None`` in ``shape`` accepts any size along that dimension.
    """
    fits = tensor.dim() == len(shape) and all(
        want is None or want == got for want, got in zip(shape, tensor.shape)
    )
    if not fits:
        wanted = tuple("*" if size is None else size for size in shape)
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(tensor.shape)}")
    if tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {tensor.dtype}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device: {listing}")
