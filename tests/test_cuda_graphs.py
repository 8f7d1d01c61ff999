"""Decode steps through DecodeGraphRunner equal plain eager steps.

On CPUs the runner's static-buffer and padding path runs eagerly (use_graphs=False)
through the Triton interpreter; on a GPU the real CUDA graphs are captured and
replayed (marked gpu, skipped without one).
"""

import pytest
import torch

from nbllm import LLM, SamplingParams
from nbllm.engine.cuda_graphs import DecodeGraphRunner, batch_size_buckets
from nbllm.layers.torch_attention import TorchAttentionBackend

pytest.importorskip("triton")

PROMPTS = ["Once upon a time there was", "Hello", "The capital of France is Paris. The capital of Italy is",
           "def add(a, b):", "Paged attention"]
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)


def _outputs(llm, prompts):
    outs = llm.generate(prompts, PARAMS, use_tqdm=False)
    return [(o.outputs[0].token_ids, [e[t].logprob for e, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
            for o in outs]


def _install_emulated_graphs(llm):
    runner = llm.llm_engine.runner
    runner.decode_graphs = DecodeGraphRunner(
        runner.model, runner.kv_caches, runner.attention_backend, block_size=runner.block_size,
        max_num_seqs=llm.config.max_num_seqs, max_model_len=llm.max_model_len, device=runner.device,
        use_graphs=False)
    calls = []
    run = runner.decode_graphs.run
    runner.decode_graphs.run = lambda *a: calls.append(a[2].num_seqs) or run(*a)
    return calls


def test_buckets_cover_every_batch_size():
    for max_num_seqs in (1, 3, 8, 64, 100, 256, 1000):
        buckets = batch_size_buckets(max_num_seqs)
        assert buckets == sorted(set(buckets)) and buckets[0] == 1
        assert buckets[-1] == min(max_num_seqs, 512)
        assert all(any(b >= n for b in buckets) for n in range(1, buckets[-1] + 1))
    assert batch_size_buckets(64)[:6] == [1, 2, 4, 8, 16, 24]


@pytest.mark.parametrize("num_prompts", [3, 5])  # 3 and 5 are padded to buckets 4 and 8
def test_static_decode_path_matches_eager(tiny_llama_path, num_prompts):
    kwargs = dict(attention_backend="triton", block_size=8, num_kv_blocks=64, max_num_seqs=16)
    with LLM(str(tiny_llama_path), **kwargs) as llm:
        eager = _outputs(llm, PROMPTS[:num_prompts])
    with LLM(str(tiny_llama_path), **kwargs) as llm:
        calls = _install_emulated_graphs(llm)
        graphed = _outputs(llm, PROMPTS[:num_prompts])
        again = _outputs(llm, PROMPTS[:num_prompts])  # padding rows of the first run left the cache intact
    # Requests join the batch as the engine thread takes them, so the first decode steps may hold fewer;
    # steps with all of them (padded to the next bucket) must have run through the static path.
    assert num_prompts in calls and all(n <= num_prompts for n in calls)
    for (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(graphed + again, eager + eager):
        assert tokens == ref_tokens
        assert logprobs == pytest.approx(ref_logprobs, abs=1e-4)


def test_torch_backend_cannot_be_captured(tiny_llm):
    runner = tiny_llm.llm_engine.runner
    with pytest.raises(ValueError, match="cannot be captured"):
        DecodeGraphRunner(runner.model, runner.kv_caches, TorchAttentionBackend(), block_size=runner.block_size,
                          max_num_seqs=4, max_model_len=64, device=runner.device, use_graphs=False)


def test_cpu_engine_never_captures(tiny_llama_path):
    with LLM(str(tiny_llama_path), device="cpu", attention_backend="triton", num_kv_blocks=16) as llm:
        assert llm.config.enforce_eager is False
        assert llm.llm_engine.runner.decode_graphs is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graphs_match_eager_on_gpu(tiny_llama_path, dtype):
    kwargs = dict(device="cuda", dtype=dtype, block_size=16, max_num_seqs=16)
    results = {}
    for eager in (True, False):
        with LLM(str(tiny_llama_path), enforce_eager=eager, **kwargs) as llm:
            assert (llm.llm_engine.runner.decode_graphs is None) == eager
            results[eager] = _outputs(llm, PROMPTS) + _outputs(llm, PROMPTS[:3])
    pairs = list(zip(results[False], results[True]))
    if dtype == "float32":
        for (tokens, logprobs), (ref_tokens, ref_logprobs) in pairs:
            assert tokens == ref_tokens
            assert logprobs == pytest.approx(ref_logprobs, abs=1e-3)
    else:  # a padded bucket may pick other bf16 GEMM kernels than the eager batch: near-ties can flip
        same = sum(a == b for (tokens, _), (ref, _) in pairs for a, b in zip(tokens, ref))
        assert same >= 0.9 * sum(len(ref) for _, (ref, _) in pairs)
