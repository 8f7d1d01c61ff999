"""store_kv_cache (Triton) against plain indexing into the flat slots: identical caches, bit for bit."""

import pytest
import torch

from nbllm_kernels.store_kv import store_kv_cache
from paged_kv import DEVICE, requires_gpu


def store_both_ways(num_tokens, num_kv_heads, head_dim, block_size, dtype, qkv_view=False):
    """Store the same tokens with the kernel and by indexing (negative slots skipped); return both caches."""
    generator = torch.Generator().manual_seed(0)
    num_blocks = 2 * (-(-num_tokens // block_size)) + 1
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, generator=generator).to(dtype).to(DEVICE)
    value_cache = torch.randn(cache_shape, generator=generator).to(dtype).to(DEVICE)
    if qkv_view:  # keys and values as the engine slices them out of one fused projection
        qkv = torch.randn((num_tokens, 3 * num_kv_heads, head_dim), generator=generator)
        qkv = qkv.to(dtype).to(DEVICE)
        key, value = qkv[:, num_kv_heads : 2 * num_kv_heads], qkv[:, 2 * num_kv_heads :]
    else:
        key = torch.randn((num_tokens, num_kv_heads, head_dim), generator=generator)
        value = torch.randn((num_tokens, num_kv_heads, head_dim), generator=generator)
        key, value = key.to(dtype).to(DEVICE), value.to(dtype).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[::3] = -1  # padding tokens
    slots = slots.to(DEVICE)

    expected_keys, expected_values = key_cache.clone(), value_cache.clone()
    keep = slots >= 0
    expected_keys.view(-1, num_kv_heads, head_dim)[slots[keep]] = key[keep]
    expected_values.view(-1, num_kv_heads, head_dim)[slots[keep]] = value[keep]
    store_kv_cache(key, value, key_cache, value_cache, slots)
    return (key_cache, value_cache), (expected_keys, expected_values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "num_kv_heads, head_dim, block_size", [(4, 64, 16), (2, 80, 8), (1, 96, 32), (3, 128, 16)]
)
def test_store_matches_reference(dtype, num_kv_heads, head_dim, block_size):
    got, expected = store_both_ways(19, num_kv_heads, head_dim, block_size, dtype)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_store_reads_strided_key_and_value_views():
    got, expected = store_both_ways(11, 2, 64, 16, torch.float32, qkv_view=True)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_store_of_no_tokens_leaves_the_cache_alone():
    got, expected = store_both_ways(0, 2, 64, 16, torch.float32)
    assert torch.equal(got[0], expected[0])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(key=torch.zeros(4, 3, 64)), "key must be"),
        (dict(value=torch.zeros(4, 2, 64, dtype=torch.float16)), "dtype"),
        (dict(slot_mapping=torch.zeros(4, dtype=torch.int32)), "slot_mapping must be torch.int64"),
        (dict(slot_mapping=torch.zeros(5, dtype=torch.int64)), "slot_mapping must have shape"),
        (dict(key_cache=torch.zeros(3, 12, 2, 64)), "value_cache"),
        (
            dict(key_cache=torch.zeros(3, 12, 2, 64), value_cache=torch.zeros(3, 12, 2, 64)),
            "power of two",
        ),
    ],
)
def test_store_rejects_bad_arguments(change, message):
    args = dict(
        key=torch.zeros(4, 2, 64),
        value=torch.zeros(4, 2, 64),
        key_cache=torch.zeros(3, 16, 2, 64),
        value_cache=torch.zeros(3, 16, 2, 64),
        slot_mapping=torch.zeros(4, dtype=torch.int64),
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        store_kv_cache(**args)


@pytest.mark.gpu
@requires_gpu
def test_store_bf16_on_gpu():
    got, expected = store_both_ways(300, 8, 128, 16, torch.bfloat16)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
