"""nbllm::paged_decode_attention (nbllm/layers/paged_attention.cpp): decode attention read in place from the paged cache.

Checked against its contract in plain torch (float64 softmax, one sequence at a time) on paged
problems with scattered blocks, grouped query heads and sliding windows, against the gathered SDPA
path it replaces, and inside an engine against the engine with it switched off.
"""

from types import SimpleNamespace

import pytest
import torch

from nbllm import LLM, SamplingParams, native
from nbllm.layers import paged_attention, torch_attention
from nbllm.layers.paged_attention import reference_decode_attention

pytestmark = pytest.mark.skipif(not native.cpu_runs_kernels(),
                                reason="the paged decode attention kernel needs AVX-512 (this CPU lacks it)")


@pytest.fixture(autouse=True)
def kernel_loaded():
    """On a CPU that can run it, the kernel must have built and passed its self-check: not a skip."""
    assert paged_attention.paged_attention_available()


def paged_problem(lens, num_heads, num_kv_heads, head_dim, block_size, seed=0):
    """Random q and caches, each sequence's blocks scattered over the pool (block 0 left unused)."""
    generator = torch.Generator().manual_seed(seed)
    per_sequence = [-(-length // block_size) for length in lens]
    num_blocks = sum(per_sequence) + 1
    order = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
    tables = torch.zeros(len(lens), max(per_sequence) + 1, dtype=torch.int32)  # a spare column, as padding
    for b, count in enumerate(per_sequence):
        tables[b, :count] = torch.tensor(order[:count], dtype=torch.int32)
        order = order[count:]
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    q = torch.randn(len(lens), num_heads, head_dim, generator=generator)
    return q, key_cache, value_cache, tables, torch.tensor(lens)


@pytest.mark.parametrize("lens,num_heads,num_kv_heads,head_dim,block_size,window", [
    ([1], 4, 4, 16, 4, 0),  # one sequence: items per kv head
    ([37], 9, 3, 64, 16, 0),
    ([5, 130, 17, 64, 1, 99], 9, 3, 64, 16, 0),  # many sequences: items per sequence
    ([5, 130, 17, 64, 1, 99], 9, 3, 64, 16, 20),  # sliding window
    ([300, 2, 45, 77, 16], 8, 2, 128, 8, 0),
    ([33, 34], 2, 1, 32, 1, 7),
])
def test_kernel_matches_its_contract(lens, num_heads, num_kv_heads, head_dim, block_size, window):
    q, key_cache, value_cache, tables, seq_lens = paged_problem(lens, num_heads, num_kv_heads, head_dim, block_size)
    scale = head_dim ** -0.5
    got = torch.ops.nbllm.paged_decode_attention(q, key_cache, value_cache, tables, seq_lens, scale, window)
    expected = reference_decode_attention(q, key_cache, value_cache, tables, seq_lens, scale, window)
    assert got.shape == q.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 1e-5


def test_kernel_matches_the_gathered_sdpa_path_and_each_sequence_is_independent():
    lens = [5, 130, 17, 64, 1, 99, 250, 3]
    q, key_cache, value_cache, tables, seq_lens = paged_problem(lens, 9, 3, 64, 16, seed=1)
    meta = SimpleNamespace(slot_mapping=torch.zeros(len(lens), dtype=torch.int64), num_decodes=len(lens),
                           num_seqs=len(lens), seq_lens=seq_lens.to(torch.int32), seq_lens_cpu=lens,
                           block_tables=tables, block_size=16, extras={}, query_lens_cpu=[1] * len(lens))
    backend = torch_attention.TorchAttentionBackend()
    backend.prepare(meta)
    gathered = backend._decode(q, key_cache.view(-1, 3, 64), value_cache.view(-1, 3, 64), meta, 0.125, None, None)
    together = torch.ops.nbllm.paged_decode_attention(q, key_cache, value_cache, tables, seq_lens, 0.125, 0)
    assert (together - gathered).abs().max().item() < 1e-5
    for b in range(len(lens)):
        alone = torch.ops.nbllm.paged_decode_attention(q[b:b + 1].contiguous(), key_cache, value_cache,
                                                       tables[b:b + 1].contiguous(), seq_lens[b:b + 1], 0.125, 0)
        assert torch.equal(alone[0], together[b])


def test_kernel_refuses_operands_it_was_not_written_for():
    q, key_cache, value_cache, tables, seq_lens = paged_problem([10, 20], 4, 2, 32, 8)
    attend = torch.ops.nbllm.paged_decode_attention
    with pytest.raises(RuntimeError, match="float32"):
        attend(q.double(), key_cache, value_cache, tables, seq_lens, 1.0, 0)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        attend(q[..., :24].contiguous(), key_cache[..., :24].contiguous(), value_cache[..., :24].contiguous(),
               tables, seq_lens, 1.0, 0)
    with pytest.raises(RuntimeError, match="outside its block table"):
        attend(q, key_cache, value_cache, tables, torch.tensor([10, 10_000]), 1.0, 0)
    with pytest.raises(RuntimeError, match="block id is outside the cache"):
        attend(q, key_cache, value_cache, tables + 1000, seq_lens, 1.0, 0)
    with pytest.raises(RuntimeError, match="int32"):
        attend(q, key_cache, value_cache, tables.long(), seq_lens, 1.0, 0)


def test_engine_generates_the_same_with_and_without_the_kernel(tiny_llama_path, monkeypatch):
    """Twelve sequences decode outside the compiled steps (eagerly, through TorchAttentionBackend), so
    their attention runs on the kernel; switched off, on the gathered SDPA path. Float32 sums in another
    order: logprobs within 1e-4, greedy tokens equal."""
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 200 + 3 for i in range(5 + 9 * j)]} for j in range(12)]
    answers = []

    def recording(*args):
        answers.append(paged_attention.can_attend_in_place(*args))
        return answers[-1]

    monkeypatch.setattr(torch_attention, "can_attend_in_place", recording)
    with LLM(str(tiny_llama_path), num_kv_blocks=128, block_size=8) as llm:
        with_kernel = llm.generate(prompts, greedy, use_tqdm=False)
        assert answers and all(answers)  # every eager step with decodes attended in place
        monkeypatch.setattr(torch_attention, "can_attend_in_place", lambda *args: False)
        without = llm.generate(prompts, greedy, use_tqdm=False)
    for ours, theirs in zip(with_kernel, without):
        assert ours.outputs[0].token_ids == theirs.outputs[0].token_ids
        for a, b in zip(ours.outputs[0].logprobs, theirs.outputs[0].logprobs):
            assert a.keys() == b.keys()
            assert all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(paged_attention.ENV_SWITCH, "0")
    paged_attention.paged_attention_available.cache_clear()
    try:
        assert paged_attention.paged_attention_available() is False
    finally:
        paged_attention.paged_attention_available.cache_clear()
    monkeypatch.undo()
    assert paged_attention.paged_attention_available()


def test_an_engine_loads_the_kernel_before_its_first_step(tiny_llama_path, monkeypatch):
    """Built (once per machine) and checked while the engine loads, not in its first large decode step."""
    from nbllm.engine import model_runner

    loaded = []
    monkeypatch.setattr(model_runner, "load_paged_attention_for",
                        lambda key_cache: loaded.append(key_cache.dtype) or paged_attention.load_for(key_cache))
    with LLM(str(tiny_llama_path), num_kv_blocks=16, block_size=8):
        assert loaded == [torch.float32]
    assert not paged_attention.load_for(torch.zeros(2, 8, 1, 24))  # head size not a multiple of 16
    assert not paged_attention.load_for(torch.zeros(2, 8, 1, 32, dtype=torch.bfloat16))
    assert paged_attention.load_for(torch.zeros(2, 8, 1, 32))
