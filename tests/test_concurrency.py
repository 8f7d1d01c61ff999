"""Many callers, streaming, aborts, interrupts and a soak: the engine keeps serving and leaks nothing."""

import _thread
import random
import threading
import time

import pytest

from engine_testing import wait_idle
from nbllm import LLM, RequestOutputKind, SamplingParams

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)




def test_stream_yields_growing_text_then_finishes(tiny_llm):
    outputs = list(tiny_llm.stream("Once upon a time", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)))
    assert len(outputs) == 10
    assert [len(o.outputs[0].token_ids) for o in outputs] == list(range(1, 11))
    assert outputs[-1].finished and not outputs[0].finished
    final = tiny_llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                              use_tqdm=False)[0]
    assert outputs[-1].outputs[0].text == final.outputs[0].text


def test_delta_outputs_concatenate_to_the_full_text(tiny_llm):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    deltas = list(tiny_llm.stream("Hello", params))
    full = tiny_llm.generate("Hello", params.updated(output_kind=RequestOutputKind.CUMULATIVE), use_tqdm=False)[0]
    assert "".join(d.outputs[0].text for d in deltas) == full.outputs[0].text
    assert sum((d.outputs[0].token_ids for d in deltas), []) == full.outputs[0].token_ids


def test_closing_a_stream_early_aborts_it(tiny_llm):
    stream = tiny_llm.stream("Once upon a time", LONG)
    next(stream)
    stream.close()
    wait_idle(tiny_llm)


def test_abort_frees_blocks_and_reports_abort(tiny_llm):
    handle = tiny_llm.submit("Once upon a time", LONG)
    handle.get(timeout=10)
    tiny_llm.abort(handle.request_id)
    final = handle.result()
    assert final.finished and final.outputs[0].finish_reason == "abort"
    wait_idle(tiny_llm)


def test_keyboard_interrupt_during_generate_leaves_engine_usable(tiny_llm):
    before = tiny_llm.get_stats().generation_tokens_total

    def interrupt_once_generating():  # as a notebook user would: while tokens are being produced
        while tiny_llm.get_stats().generation_tokens_total == before:
            time.sleep(0.005)
        _thread.interrupt_main()

    interrupter = threading.Thread(target=interrupt_once_generating, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):  # 64 x 200 tokens do not fit the pool at once: many steps
        tiny_llm.generate(["Once upon a time"] * 64, SamplingParams(temperature=0, max_tokens=200,
                                                                   ignore_eos=True), use_tqdm=False)
    interrupter.join()
    wait_idle(tiny_llm)
    out = tiny_llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert out.finished


def test_callers_in_several_threads_are_batched_together(tiny_llm):
    prompts = ["Once upon a time", "The capital of", "def add(a, b):", "Hello"]
    expected = [o.outputs[0].token_ids for o in tiny_llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), use_tqdm=False)]
    results = {}
    seen_running = []

    def worker(i):
        out = tiny_llm.generate(prompts[i], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                                use_tqdm=False)
        results[i] = out[0].outputs[0].token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen_running.append(tiny_llm.get_stats().num_requests_running)
        time.sleep(0.005)
    assert [results[i] for i in range(len(prompts))] == expected
    assert max(seen_running) >= 2  # they really ran in one batch
    wait_idle(tiny_llm)


def test_soak_random_requests_and_aborts(tiny_llama_path):
    rng = random.Random(7)
    words = "once upon a time the capital of france is paris notebook model block cache".split()
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=40, max_num_seqs=24,
             max_num_batched_tokens=96) as llm:
        handles, aborted = [], set()
        for i in range(300):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
            params = SamplingParams(
                n=rng.choice([1, 1, 1, 2]), temperature=rng.choice([0.0, 0.7, 1.0]), top_p=rng.choice([1.0, 0.9]),
                top_k=rng.choice([0, 5]), min_p=rng.choice([0.0, 0.05]), seed=rng.choice([None, i]),
                max_tokens=rng.randint(1, 24), presence_penalty=rng.choice([0.0, 0.5]),
                repetition_penalty=rng.choice([1.0, 1.1]), stop=rng.choice([None, ["the"]]),
                logprobs=rng.choice([None, 2]), ignore_eos=rng.choice([True, False]))
            handles.append(llm.submit(prompt, params))
            if rng.random() < 0.15:
                victim = rng.choice(handles)
                llm.abort(victim.request_id)
                aborted.add(victim.request_id)
        for handle in handles:
            final = handle.result()
            assert final.finished
            for completion in final.outputs:
                if handle.request_id in aborted:
                    assert completion.finish_reason in ("abort", "stop", "length")
                else:
                    assert completion.finish_reason in ("stop", "length"), completion
                    assert 1 <= len(completion.token_ids) <= 24
        metrics = wait_idle(llm)
        assert metrics.num_preemptions > 0  # the pool was small enough to force preemption
        bm = llm.llm_engine.core.block_manager
        assert bm.num_free_blocks == bm.num_usable_blocks
        assert all(b.ref_cnt == 0 for b in bm.blocks[1:])


def test_callers_get_the_engine_between_steps_while_it_is_busy(tiny_llm):
    """Callers reach the engine between two steps: get_stats() waits at most one step while the batch runs."""
    stream = tiny_llm.stream(["Once upon a time"] * 8, SamplingParams(temperature=0, max_tokens=200,
                                                                      ignore_eos=True))
    next(stream)
    latencies = []
    for _ in range(40):
        t0 = time.perf_counter()
        metrics = tiny_llm.get_stats()
        latencies.append(time.perf_counter() - t0)
        assert metrics.num_requests_running > 0
    stream.close()
    wait_idle(tiny_llm)
    assert max(latencies) < 0.25, f"slowest get_stats() took {max(latencies):.3f}s"


def test_engine_is_built_and_stepped_in_its_loop_thread(tiny_llama_path, monkeypatch):
    """All engine tensor work runs in one thread: a second OpenMP team halves CPU speed."""
    from nbllm.engine.core import EngineCore
    from nbllm.engine.llm_engine import LLMEngine

    seen = {"init": set(), "step": set()}
    build, step = LLMEngine.from_config.__func__, EngineCore.step

    def recording_build(cls, config):
        seen["init"].add(threading.get_ident())
        return build(cls, config)

    def recording_step(core):
        seen["step"].add(threading.get_ident())
        return step(core)

    monkeypatch.setattr(LLMEngine, "from_config", classmethod(recording_build))
    monkeypatch.setattr(EngineCore, "step", recording_step)
    with LLM(str(tiny_llama_path), num_kv_blocks=32, block_size=8) as llm:
        llm.generate("Hello", SamplingParams(max_tokens=3), use_tqdm=False)
        loop_thread = llm._loop._thread.ident
    assert seen["init"] == seen["step"] == {loop_thread}
    assert loop_thread != threading.get_ident()


def test_a_failed_build_raises_in_the_caller_and_ends_its_thread():
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM("/no/such/model")
    deadline = time.monotonic() + 5
    while {t.ident for t in threading.enumerate()} - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not {t.ident for t in threading.enumerate()} - before
