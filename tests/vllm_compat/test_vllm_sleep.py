"""vLLM's sleep mode on the CPU: free the KV pool (and weights) without a restart, then resume."""

import pytest

from nbllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_then_wake_up_gives_the_same_tokens(tiny_llama_path, level):
    with LLM(str(tiny_llama_path), num_kv_blocks=64, block_size=8) as llm:
        before = llm.generate("Once upon a time", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        llm.sleep(level=level)
        runner = llm.llm_engine.runner
        assert runner.is_sleeping and runner.kv_caches == [] and (runner.model is None) == (level == 2)
        with pytest.raises(RuntimeError, match="asleep"):
            llm.generate("Once upon a time", GREEDY, use_tqdm=False)
        assert llm.wake_up() is True
        after = llm.generate("Once upon a time", GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        assert after == before
        assert llm.get_stats().num_blocks_used == 0
