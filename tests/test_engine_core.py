"""The engine core, the scheduler and the input/output processors with a fake model runner.

No weights are loaded: FakeRunner (tests/fake_engine.py) predicts each next token
from the last one, so every expectation below is exact.
"""

from collections import deque

import pytest
from fake_engine import EOS, VOCAB, ByteTokenizer, expected_tokens, fake_engine

from nbllm.engine.block_manager import BlockManager
from nbllm.engine.input_processor import InputProcessor
from nbllm.engine.scheduler import Scheduler
from nbllm.engine.sequence import Request, RequestStatus
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams


def run_to_end(engine, max_steps=10_000):
    """Step until idle; all outputs in order."""
    outputs = []
    for _ in range(max_steps):
        if not engine.core.has_unfinished_requests():
            return outputs
        outputs += engine.core.step()
    raise AssertionError("the engine did not finish")


def add(engine, request_id, prompt, **params):
    engine.core.add_request(engine.input_processor.process(request_id, prompt, SamplingParams(**params)))


def finals(outputs):
    return {o.request_id: o for o in outputs if o.finished}


def assert_all_blocks_free(engine):
    bm = engine.core.block_manager
    assert bm.num_free_blocks == bm.num_usable_blocks
    assert all(block.ref_cnt == 0 for block in bm.blocks[1:])


# ----------------------------------------------------------------------------- engine core


def test_tokens_follow_the_model_and_length_ends_the_request():
    engine = fake_engine()
    add(engine, "r", "hello", max_tokens=5, ignore_eos=True)
    [final] = finals(run_to_end(engine)).values()
    assert final.outputs[0].token_ids == expected_tokens(list(b"hello"), 5)
    assert final.outputs[0].finish_reason == "length"
    assert_all_blocks_free(engine)


def test_eos_stops_with_reason_stop_unless_ignored():
    engine = fake_engine()
    add(engine, "stops", "a", max_tokens=30)
    add(engine, "ignores", "a", max_tokens=30, ignore_eos=True)
    done = finals(run_to_end(engine))
    tokens = expected_tokens([ord("a")], 30)
    assert done["stops"].outputs[0].token_ids == tokens[:tokens.index(EOS) + 1]
    assert done["stops"].outputs[0].finish_reason == "stop"
    assert done["ignores"].outputs[0].token_ids == tokens
    assert_all_blocks_free(engine)


def test_n_fans_out_into_sequences_gathered_in_one_output():
    engine = fake_engine()
    add(engine, "r", "xyz", n=3, max_tokens=4, ignore_eos=True)
    assert {r.request_id for r in engine.core.scheduler.waiting} == {"0_r", "1_r", "2_r"}
    [final] = finals(run_to_end(engine)).values()
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert all(c.token_ids == expected_tokens(list(b"xyz"), 4) for c in final.outputs)


def test_preempted_requests_finish_with_their_own_tokens():
    engine = fake_engine(num_blocks=12)
    prompts = {f"r{i}": f"prompt {i}" for i in range(6)}
    for request_id, prompt in prompts.items():
        add(engine, request_id, prompt, max_tokens=20, ignore_eos=True)
    done = finals(run_to_end(engine))
    assert engine.core.scheduler.num_preemptions > 0  # 12 blocks cannot hold six 28-token sequences
    for request_id, prompt in prompts.items():
        assert done[request_id].outputs[0].token_ids == expected_tokens(list(prompt.encode()), 20)
    assert_all_blocks_free(engine)


def test_long_prompts_are_prefilled_in_chunks_within_the_token_budget():
    engine = fake_engine(max_num_batched_tokens=8, max_model_len=64)
    add(engine, "long", "abcdefghijklmnopqrst", max_tokens=2, ignore_eos=True)  # 20 prompt tokens
    run_to_end(engine)
    chunks = [step.scheduled[0].num_new_tokens for step in engine.runner.steps]
    assert chunks == [8, 8, 4, 1]
    assert all(step.num_tokens <= 8 for step in engine.runner.steps)


def test_abort_mid_generation_returns_an_abort_output_and_frees_blocks():
    engine = fake_engine()
    add(engine, "keep", "abc", max_tokens=10, ignore_eos=True)
    add(engine, "drop", "abc", max_tokens=10, ignore_eos=True)
    engine.core.step()
    engine.core.step()
    [aborted] = engine.core.abort_requests(["drop", "unknown-id"])
    assert aborted.finished and aborted.outputs[0].finish_reason == "abort"
    assert len(aborted.outputs[0].token_ids) == 2
    done = finals(run_to_end(engine))
    assert set(done) == {"keep"} and len(done["keep"].outputs[0].token_ids) == 10
    assert_all_blocks_free(engine)


def test_a_waiting_request_can_be_aborted_before_it_runs():
    engine = fake_engine(max_num_seqs=1)
    add(engine, "first", "abc", max_tokens=3, ignore_eos=True)
    add(engine, "second", "abc", max_tokens=3, ignore_eos=True)
    engine.core.step()
    assert [r.request_id for r in engine.core.scheduler.waiting] == ["second"]
    [aborted] = engine.core.abort_requests(["second"])
    assert aborted.outputs[0].token_ids == [] and aborted.outputs[0].finish_reason == "abort"
    assert not engine.core.scheduler.waiting


def test_request_ids_in_use_are_refused():
    engine = fake_engine()
    add(engine, "same", "abc")
    with pytest.raises(ValueError, match="already in use"):
        add(engine, "same", "xyz")
    add(engine, "r", "abc", n=2)
    with pytest.raises(ValueError, match="already in use"):
        add(engine, "0_r", "abc")


def test_stop_strings_end_the_request_and_are_cut_from_the_text():
    engine = fake_engine()
    tokens = expected_tokens([ord("h")], 12)
    stop = "".join(chr(t) for t in tokens[5:7])
    add(engine, "r", "h", max_tokens=12, ignore_eos=True, stop=[stop])
    [final] = finals(run_to_end(engine)).values()
    completion = final.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.text == "".join(chr(t) for t in tokens[:5] if t != EOS)


def test_output_kinds_cumulative_delta_and_final_only():
    engine = fake_engine()
    for kind in RequestOutputKind:
        add(engine, kind.name, "q", max_tokens=4, ignore_eos=True, output_kind=kind)
    outputs = run_to_end(engine)
    by_kind = {kind: [o for o in outputs if o.request_id == kind.name] for kind in RequestOutputKind}
    full = expected_tokens([ord("q")], 4)
    assert [o.outputs[0].token_ids for o in by_kind[RequestOutputKind.CUMULATIVE]] == [full[:i] for i in
                                                                                      range(1, 5)]
    assert [o.outputs[0].token_ids for o in by_kind[RequestOutputKind.DELTA]] == [[t] for t in full]
    assert [o.outputs[0].token_ids for o in by_kind[RequestOutputKind.FINAL_ONLY]] == [full]


def test_beam_search_runs_on_the_core_and_frees_its_blocks():
    engine = fake_engine()
    search = engine.input_processor.process_beam_search("b", {"prompt_token_ids": [5, 6]},
                                                        BeamSearchParams(beam_width=2, max_tokens=3))
    engine.core.add_beam_search(search)
    outputs = run_to_end(engine)
    [result] = [o for o in outputs if o.request_id == "b"]
    assert result.sequences and result.sequences[0].tokens[:2] == [5, 6]
    assert_all_blocks_free(engine)


def test_stats_count_tokens_and_requests():
    engine = fake_engine()
    add(engine, "r", "abcd", max_tokens=3, ignore_eos=True)
    run_to_end(engine)
    stats = engine.core.get_stats()
    assert stats.prompt_tokens_total == 4 and stats.generation_tokens_total == 3
    assert stats.requests_finished_total == 1 and stats.num_requests_running == 0
    assert stats.num_blocks_used == 0


def test_shutdown_aborts_everything_and_releases_the_runner():
    engine = fake_engine()
    add(engine, "r", "abc", max_tokens=30, ignore_eos=True)
    engine.core.step()
    [final] = engine.core.shutdown()
    assert final.outputs[0].finish_reason == "abort" and engine.runner.released


# ----------------------------------------------------------------------------- scheduler alone


def _request(request_id, n_prompt, arrival=0.0):
    return Request(request_id=request_id, prompt_token_ids=list(range(1, n_prompt + 1)),
                   sampling_params=SamplingParams(), arrival_time=arrival)


def test_scheduler_serves_running_first_then_admits_waiting_in_order():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100, max_model_len=64)
    for name in ("a", "b", "c"):
        scheduler.add_request(_request(name, 5))
    first = scheduler.schedule()
    assert [s.request.request_id for s in first.scheduled] == ["a", "b"]  # max_num_seqs=2
    scheduler.update_after_step(first)
    for s in first.scheduled:
        s.request.append_output_token(9)
    second = scheduler.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in second.scheduled] == [("a", 1), ("b", 1)]
    assert [r.request_id for r in scheduler.waiting] == ["c"]


def test_scheduler_preempts_the_newest_running_request():
    bm = BlockManager(5, 4)  # 4 usable blocks
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, max_model_len=64)
    old, new = _request("old", 8), _request("new", 7)
    scheduler.add_request(old)
    scheduler.add_request(new)
    out = scheduler.schedule()
    scheduler.update_after_step(out)
    old.append_output_token(1)  # old now needs a third block; none is free
    new.append_output_token(1)
    out = scheduler.schedule()
    assert out.preempted == [new] and new.status == RequestStatus.WAITING and new.num_computed_tokens == 0
    assert [s.request.request_id for s in out.scheduled] == ["old"]
    assert scheduler.waiting == deque([new]) and scheduler.num_preemptions == 1


def test_scheduler_finish_request_frees_blocks_from_either_queue():
    bm = BlockManager(16, 4)
    scheduler = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=100, max_model_len=64)
    running, waiting = _request("running", 6), _request("waiting", 6)
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    scheduler.schedule()
    scheduler.finish_request(running, RequestStatus.FINISHED_ABORTED)
    scheduler.finish_request(waiting, RequestStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished_requests() and bm.num_used_blocks == 0


# ----------------------------------------------------------------------------- input processor


@pytest.fixture
def processor():
    return InputProcessor(ByteTokenizer(), VOCAB, max_model_len=16)


def test_input_processor_tokenizes_and_copies_params(processor):
    params = SamplingParams(max_tokens=3, bad_words=["ab"])
    new = processor.process("r", "hi", params)
    assert new.prompt == "hi" and new.prompt_token_ids == [ord("h"), ord("i")]
    assert new.params == params and new.params is not params
    assert new.bad_words_token_ids == [[ord("a"), ord("b")], [ord(" "), ord("a"), ord("b")]]


@pytest.mark.parametrize("prompt, error, match", [
    ("", ValueError, "decoder prompt cannot be empty"),
    ({"prompt_token_ids": [1, VOCAB]}, ValueError, "out of vocabulary"),
    ("x" * 16, ValueError, "maximum context length is 16"),
    (42, TypeError, "a prompt must be a str"),
    ({"text": "hi"}, ValueError, "needs 'prompt'"),
])
def test_input_processor_rejects_bad_prompts(processor, prompt, error, match):
    with pytest.raises(error, match=match):
        processor.process("r", prompt, SamplingParams())


def test_input_processor_checks_token_ids_in_params(processor):
    with pytest.raises(ValueError, match="stop_token_ids"):
        processor.process("r", "hi", SamplingParams(stop_token_ids=[VOCAB + 1]))
    with pytest.raises(TypeError, match="SamplingParams"):
        processor.process("r", "hi", {"max_tokens": 3})


def test_a_beam_search_whose_scoring_overflows_fails_alone():
    engine = fake_engine()
    add(engine, "plain", "abc", max_tokens=6, ignore_eos=True)
    search = engine.input_processor.process_beam_search(
        "huge", {"prompt_token_ids": [5, 6]}, BeamSearchParams(beam_width=2, max_tokens=3, length_penalty=1e308))
    engine.core.add_beam_search(search)
    done = finals(run_to_end(engine))
    [(request_id, error)] = engine.core.take_failures()
    assert request_id == "huge" and isinstance(error, OverflowError)
    assert set(done) == {"plain"} and done["plain"].outputs[0].token_ids == expected_tokens(list(b"abc"), 6)
    assert_all_blocks_free(engine)


def test_sleep_needs_an_idle_engine_and_forgets_cached_prefixes():
    engine = fake_engine()
    add(engine, "r", "abcdefghij", max_tokens=2, ignore_eos=True)
    with pytest.raises(RuntimeError, match="1 requests in flight"):
        engine.core.sleep(1)
    run_to_end(engine)
    assert engine.core.block_manager.num_cached_blocks > 0
    with pytest.raises(ValueError, match="sleep level"):
        engine.core.sleep(3)
    engine.core.sleep(2)
    assert engine.core.block_manager.num_cached_blocks == 0 and engine.runner.is_sleeping
    assert engine.core.wake_up(["kv_cache"]) is False  # the weights still sleep
    assert engine.core.wake_up(None) is True
    with pytest.raises(ValueError, match="wake_up tags"):
        engine.core.wake_up(["gpu"])


def test_priority_policy_admits_the_most_urgent_first_and_preempts_the_least():
    engine = fake_engine(max_num_seqs=1, scheduling_policy="priority")
    for request_id, priority in (("low", 5), ("high", -1), ("mid", 0)):
        engine.core.add_request(engine.input_processor.process(request_id, "abc", SamplingParams(
            max_tokens=2, ignore_eos=True), priority))
    order = [o.request_id for o in run_to_end(engine) if o.finished]
    assert order == ["high", "mid", "low"]


def test_fcfs_ignores_priority():
    engine = fake_engine(max_num_seqs=1)
    for request_id, priority in (("first", 5), ("second", -1)):
        engine.core.add_request(engine.input_processor.process(request_id, "abc", SamplingParams(
            max_tokens=2, ignore_eos=True), priority))
    assert [o.request_id for o in run_to_end(engine) if o.finished] == ["first", "second"]


def test_priority_policy_preempts_the_least_urgent_running_request():
    bm = BlockManager(5, 4)  # 4 usable blocks
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, max_model_len=64, policy="priority")
    urgent_late, lax_early = _request("urgent", 7, arrival=2.0), _request("lax", 8, arrival=1.0)
    urgent_late.priority, lax_early.priority = 0, 9
    scheduler.add_request(lax_early)
    scheduler.add_request(urgent_late)
    assert [r.request_id for r in scheduler.waiting] == ["urgent", "lax"]
    out = scheduler.schedule()
    scheduler.update_after_step(out)
    for request in (urgent_late, lax_early):
        request.append_output_token(1)
    urgent_late.append_output_token(1)  # needs a third block now
    urgent_late.num_computed_tokens += 1
    out = scheduler.schedule()
    assert out.preempted == [lax_early]


def test_unknown_scheduling_policy_is_refused():
    with pytest.raises(ValueError, match="scheduling_policy"):
        Scheduler(BlockManager(5, 4), 1, 8, 16, policy="lifo")
