"""The engine on the Triton backend (through the interpreter on CPU) equals the PyTorch backend."""

import pytest

from nbllm import LLM, SamplingParams

pytest.importorskip("triton")

PROMPTS = ["Once upon a time there was", "Hello", "The capital of France is Paris. The capital of Italy is"]
PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0)


def _run(path, backend, **kwargs):
    with LLM(str(path), attention_backend=backend, block_size=8, num_kv_blocks=64, **kwargs) as llm:
        first = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
        second = llm.generate(PROMPTS, PARAMS, use_tqdm=False)  # prefix-cache hits: cached context + new chunk
        assert llm.llm_engine.runner.attention_backend.name == backend
        return first + second


@pytest.mark.parametrize("kwargs", [{}, {"max_num_batched_tokens": 7}])
def test_triton_backend_matches_torch(tiny_llama_path, kwargs):
    ours = _run(tiny_llama_path, "triton", **kwargs)
    reference = _run(tiny_llama_path, "torch", **kwargs)
    for a, b in zip(ours, reference):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        la = [e[t].logprob for e, t in zip(a.outputs[0].logprobs, a.outputs[0].token_ids)]
        lb = [e[t].logprob for e, t in zip(b.outputs[0].logprobs, b.outputs[0].token_ids)]
        assert la == pytest.approx(lb, abs=1e-4)
    assert any(o.num_cached_tokens > 0 for o in ours[len(PROMPTS):])
