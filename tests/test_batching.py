"""Continuous batching must not change results: alone, mixed, cached or preempted, greedy is greedy."""

import pytest

from nbllm import LLM, SamplingParams

PROMPTS = [
    "Once upon a time there was",
    "The capital of France is Paris. The capital of Italy is",
    "def add(a, b):",
    "Paged attention stores keys and values in fixed size blocks. Paged attention stores keys",
    "Hello",
    "Once upon a time there was a little model that lived in a notebook. Once upon a time",
]
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(tiny_llama_path):
    llm = LLM(str(tiny_llama_path), enable_prefix_caching=False, max_num_seqs=1, block_size=8, num_kv_blocks=64)
    outs = [llm.generate(p, GREEDY, use_tqdm=False)[0].outputs[0].token_ids for p in PROMPTS]
    llm.shutdown()
    return outs


def _tokens(llm, prompts=PROMPTS, params=GREEDY):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_batch_equals_alone(tiny_llama_path, alone, prefix_caching):
    with LLM(str(tiny_llama_path), enable_prefix_caching=prefix_caching, block_size=8, num_kv_blocks=128) as llm:
        assert _tokens(llm) == alone
        # a second round hits the prefix cache (when on) and must still agree
        assert _tokens(llm) == alone
        metrics = llm.get_stats()
        if prefix_caching:
            assert metrics.prefix_cache_hits > 0
        else:
            assert metrics.prefix_cache_hits == 0
        assert metrics.num_blocks_used == 0


def test_chunked_prefill_equals_alone(tiny_llama_path, alone):
    with LLM(str(tiny_llama_path), max_num_batched_tokens=5, block_size=8, num_kv_blocks=128) as llm:
        assert _tokens(llm) == alone


def test_preemption_equals_alone(tiny_llama_path, alone):
    # 12 usable blocks of 8 tokens: six ~40-token sequences cannot all fit, so some are preempted.
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=13, enable_prefix_caching=False) as llm:
        assert _tokens(llm) == alone
        metrics = llm.get_stats()
        assert metrics.num_preemptions > 0
        assert metrics.num_blocks_used == 0


def test_shared_prefix_shares_blocks(tiny_llama_path):
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=128) as llm:
        base = "Once upon a time there was a little model that lived in a notebook."
        first = llm.generate(base + " It", SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)[0]
        second = llm.generate(base + " She", SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)[0]
        assert first.num_cached_tokens == 0
        assert second.num_cached_tokens >= 8
        assert second.num_cached_tokens % 8 == 0


def test_n_completions_share_prompt(tiny_llama_path):
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=128) as llm:
        out = llm.generate("Once upon a time", SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=8),
                           use_tqdm=False)[0]
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert all(len(c.token_ids) == 8 or c.finish_reason == "stop" for c in out.outputs)
        assert len({tuple(c.token_ids) for c in out.outputs}) > 1
