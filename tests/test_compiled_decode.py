"""Compiled CPU decode steps (nbllm/engine/cpu_compile.py) on the tiny Llama with weights quantized on load.

The suite runs with NBLLM_COMPILE=0 (tests/conftest.py), so only these tests compile (about half a
minute on a 2-core machine the first time; Inductor's caches make later runs faster).
"""

import _thread
import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from nbllm import LLM, SamplingParams
from nbllm.config import EngineConfig
from nbllm.engine import cpu_compile
from nbllm.engine.cpu_compile import CompiledDecode, wants_compiled_decode
from nbllm.layers.quantized_linear import DENSE_MIN_ROWS

PROMPTS = ["Once upon a time", "The capital of", "def add(a, b):", "Hello", "A B C"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
ENGINE_ARGS = dict(quantization="int8", num_kv_blocks=64, block_size=8)


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def runner_of(llm):
    return llm.llm_engine.runner


@pytest.fixture(scope="module")
def compiled_llm(tiny_llama_path):
    llm = LLM(str(tiny_llama_path), compilation_config=3, **ENGINE_ARGS)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def eager_outputs(tiny_llama_path):
    with LLM(str(tiny_llama_path), compilation_config=0, **ENGINE_ARGS) as llm:
        assert runner_of(llm).compiled_decode is None
        return {n: llm.generate(PROMPTS[:n], GREEDY, use_tqdm=False) for n in (1, 3, 5)}


def test_compiled_decode_equals_eager_and_new_batch_sizes_do_not_recompile(compiled_llm, eager_outputs):
    assert runner_of(compiled_llm).compiled_decode is not None
    for n in (1, 3):
        outputs = compiled_llm.generate(PROMPTS[:n], GREEDY, use_tqdm=False)
        assert_same_outputs(outputs, eager_outputs[n])
    compiled = graphs_compiled()
    assert_same_outputs(compiled_llm.generate(PROMPTS, GREEDY, use_tqdm=False), eager_outputs[5])
    assert graphs_compiled() == compiled  # batch size 5 runs on the graphs compiled for a symbolic size
    assert runner_of(compiled_llm).compiled_decode.failed is False


def assert_same_outputs(outputs, expected):
    """Tokens equal; logprobs within 1e-2. The compiled attention and eager SDPA differ in the last bits;
    the int4 row kernel's float32 outputs pass that on where bfloat16 outputs mostly swallowed it, and
    an activation that then rounds the other way to bfloat16 moves a logprob of this random tiny model
    by up to about 0.007 (measured)."""
    for out, ref in zip(outputs, expected):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for entries, ref_entries in zip(out.outputs[0].logprobs, ref.outputs[0].logprobs):
            for token_id, entry in ref_entries.items():
                assert entries[token_id].logprob == pytest.approx(entry.logprob, abs=1e-2)


def test_compile_failure_warns_once_and_runs_eagerly(compiled_llm, eager_outputs):
    def failing_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: simulated")
        return call

    runner = runner_of(compiled_llm)
    working = runner.compiled_decode
    compiled_llm._loop.call(lambda e: setattr(runner, "compiled_decode", CompiledDecode(runner.model, failing_compile)))
    try:
        with pytest.warns(RuntimeWarning, match="compiling the CPU decode step failed") as record:
            assert_same_outputs(compiled_llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False), eager_outputs[3])
        assert len([w for w in record if "decode step" in str(w.message)]) == 1
        assert runner.compiled_decode.failed
    finally:
        compiled_llm._loop.call(lambda e: setattr(runner, "compiled_decode", working))


def test_interrupt_while_compiling_leaves_the_engine_usable(compiled_llm, eager_outputs):
    """An interrupt during a compile aborts the waiting caller; the next step compiles again and serves."""
    runner = runner_of(compiled_llm)
    working = runner.compiled_decode
    calls = []

    def interrupted_once(fn, **kwargs):
        compiled = torch.compile(fn, **kwargs)

        def call(*args, **kw):
            calls.append(fn.__name__)
            if len(calls) == 1:
                raise KeyboardInterrupt  # as if it had arrived in the thread running the step
            return compiled(*args, **kw)
        return call

    fresh = CompiledDecode(runner.model, interrupted_once)
    compiled_llm._loop.call(lambda e: setattr(runner, "compiled_decode", fresh))
    try:
        with pytest.raises(KeyboardInterrupt):
            compiled_llm._loop.call(lambda e: fresh._compile(runner.kv_caches))
        assert not fresh.failed
        assert_same_outputs(compiled_llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False), eager_outputs[3])
        assert len(calls) > 1 and not fresh.failed

        before = compiled_llm.get_stats().generation_tokens_total

        def interrupt_once_generating():  # a notebook user's interrupt lands in the waiting thread
            while compiled_llm.get_stats().generation_tokens_total == before:
                time.sleep(0.005)
            _thread.interrupt_main()

        interrupter = threading.Thread(target=interrupt_once_generating, daemon=True)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            compiled_llm.generate(PROMPTS * 8, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True),
                                  use_tqdm=False)
        interrupter.join()
        assert_same_outputs(compiled_llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False), eager_outputs[3])
    finally:
        compiled_llm._loop.call(lambda e: setattr(runner, "compiled_decode", working))


def test_sleep_level_2_rebuilds_the_compiled_decode_for_the_reloaded_weights(compiled_llm, eager_outputs):
    compiled_llm.sleep(level=2)
    compiled_llm.wake_up()
    runner = runner_of(compiled_llm)
    assert runner.compiled_decode is not None and runner.compiled_decode.model is runner.model
    assert_same_outputs(compiled_llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False), eager_outputs[3])


def test_no_compiler_warns_and_runs_eagerly(tiny_llama_path, monkeypatch, eager_outputs):
    monkeypatch.setattr(cpu_compile, "find_cxx_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        llm = LLM(str(tiny_llama_path), compilation_config=3, **ENGINE_ARGS)
    with llm:
        assert runner_of(llm).compiled_decode is None
        assert_same_outputs(llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False), eager_outputs[1])


def test_enforce_eager_turns_compiling_off(tiny_llama_path):
    with LLM(str(tiny_llama_path), enforce_eager=True, compilation_config=3, **ENGINE_ARGS) as llm:
        assert runner_of(llm).compiled_decode is None


@pytest.mark.parametrize("kwargs, device, quantized, env, expected", [
    ({}, "cpu", True, None, True),  # the default: quantized weights on a CPU
    ({}, "cpu", True, "0", False),  # NBLLM_COMPILE=0 (as in this suite)
    ({}, "cpu", False, None, False),  # float weights: not measured to gain, so not by default
    ({"compilation_config": 3}, "cpu", False, "0", True),
    ({"compilation_config": {"level": 3}}, "cpu", False, None, True),
    ({"compilation_config": {"mode": 0}}, "cpu", True, None, False),
    ({"compilation_config": 0}, "cpu", True, None, False),
    ({"compilation_config": {"cudagraph_capture_sizes": [1, 2]}}, "cpu", True, None, True),
    ({"enforce_eager": True}, "cpu", True, None, False),
    ({"enforce_eager": True, "compilation_config": 3}, "cpu", True, None, False),
    ({"compilation_config": 3}, "cuda", False, None, False),  # CUDA graphs there
])
def test_when_decode_steps_are_compiled(monkeypatch, kwargs, device, quantized, env, expected):
    if env is None:
        monkeypatch.delenv("NBLLM_COMPILE", raising=False)
    else:
        monkeypatch.setenv("NBLLM_COMPILE", env)
    config = EngineConfig(**kwargs)
    assert wants_compiled_decode(config, torch.device(device), quantized) is expected


def test_the_inductor_cache_goes_under_nbllms_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("NBLLM_CACHE_DIR", str(tmp_path / "nbllm"))
    # torch writes its /tmp default into the variable the first time anything asks: not a user's choice
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    cpu_compile.use_inductor_cache_under_nbllm()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "nbllm" / "inductor")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    cpu_compile.use_inductor_cache_under_nbllm()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "nbllm" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    cpu_compile.use_inductor_cache_under_nbllm()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compiled_steps_serve_batches_below_the_dense_copies_threshold(compiled_llm):
    compiled = runner_of(compiled_llm).compiled_decode
    assert compiled.can_run(SimpleNamespace(num_decodes=DENSE_MIN_ROWS - 1, num_seqs=DENSE_MIN_ROWS - 1))
    assert not compiled.can_run(SimpleNamespace(num_decodes=DENSE_MIN_ROWS, num_seqs=DENSE_MIN_ROWS))
    assert not compiled.can_run(SimpleNamespace(num_decodes=1, num_seqs=2))  # a prefill in the step


def test_decode_steps_attend_inside_the_compiled_regions_with_a_sliding_window(tmp_path):
    """Decode steps attend inside the regions (gathered_decode_attention), windowed here: one sequence, and
    three of different lengths (their gathered contexts padded to the longest and masked)."""
    from tiny_models import make_tiny_model

    path = str(make_tiny_model("MistralForCausalLM", tmp_path / "mistral", sliding_window=8))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    # with 24 new tokens every context outgrows the window of 8
    batches = (["Once upon a time"], ["Once upon a time", "Hello", "A B C D E F G H I J K L"])
    with LLM(path, compilation_config=0, **ENGINE_ARGS) as llm:
        expected = [llm.generate(prompts, params, use_tqdm=False) for prompts in batches]
    with LLM(path, compilation_config=3, **ENGINE_ARGS) as llm:
        inner = runner_of(llm).model.model
        calls = []
        attending = inner._attending_layers
        inner._attending_layers = lambda *args: calls.append(1) or attending(*args)
        for prompts, reference in zip(batches, expected):
            calls.clear()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            assert len(calls) == params.max_tokens - 1  # every decode step (the prompts prefill in one step)
            assert_same_outputs(outputs, reference)
        assert runner_of(llm).compiled_decode.failed is False
