"""The engine thread and its command queue, around the fake engine (no weights)."""

import threading

import pytest
from fake_engine import expected_tokens, fake_engine

from nbllm.engine.engine_loop import EngineDeadError, EngineLoop
from nbllm.sampling_params import SamplingParams
from nbllm.streams import RequestStream


def submit(loop, request_id, prompt, **params):
    stream = RequestStream(request_id, on_close=loop.abort)
    loop.add(loop.engine.input_processor.process(request_id, prompt, SamplingParams(**params)), stream)
    return stream


@pytest.fixture
def loop():
    engine_loop = EngineLoop(fake_engine)
    yield engine_loop
    engine_loop.shutdown()


def test_requests_from_many_threads_all_finish(loop):
    results = {}

    def worker(i):
        results[i] = submit(loop, f"r{i}", f"prompt {i}", max_tokens=8, ignore_eos=True).result()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, output in results.items():
        assert output.outputs[0].token_ids == expected_tokens(list(f"prompt {i}".encode()), 8)
    stats = loop.call(lambda engine: engine.core.get_stats())
    assert stats.requests_finished_total == 8 and stats.num_blocks_used == 0


def test_the_engine_is_only_touched_by_its_thread(loop):
    seen = set()
    original = loop.engine.core.step

    def recording_step():
        seen.add(threading.get_ident())
        return original()

    loop.engine.core.step = recording_step
    submit(loop, "r", "abc", max_tokens=4, ignore_eos=True).result()
    assert seen == {loop._thread.ident}


def test_a_duplicate_id_fails_only_its_own_stream(loop):
    first = submit(loop, "same", "abc", max_tokens=50, ignore_eos=True)
    second = submit(loop, "same", "xyz", max_tokens=5)
    with pytest.raises(ValueError, match="already in use"):
        second.result()
    assert len(first.result().outputs[0].token_ids) == 50


def test_closing_a_stream_aborts_its_request(loop):
    stream = submit(loop, "r", "abc", max_tokens=60, ignore_eos=True)
    stream.get()
    stream.close()
    stats = loop.call(lambda engine: engine.core.get_stats())
    assert stats.num_requests_running == 0 and stats.num_blocks_used == 0


def test_a_failing_step_fails_the_requests_in_flight_and_the_engine_keeps_serving(loop):
    original = loop.engine.runner.execute
    calls = {"n": 0}

    def failing_once(out, rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return original(out, rows)

    loop.engine.runner.execute = failing_once
    with pytest.raises(RuntimeError, match="boom"):
        submit(loop, "a", "abc", max_tokens=4).result()
    assert submit(loop, "b", "abc", max_tokens=4, ignore_eos=True).result().finished
    assert loop.call(lambda engine: engine.core.get_stats()).num_blocks_used == 0


def test_shutdown_ends_open_streams_and_refuses_new_work():
    engine_loop = EngineLoop(fake_engine)
    entered, gate = threading.Event(), threading.Event()  # the loop waits in a call; work queues behind it
    holder = threading.Thread(target=engine_loop.call, args=(lambda engine: (entered.set(), gate.wait()),))
    holder.start()
    entered.wait()
    stream = submit(engine_loop, "r", "abc", max_tokens=60, ignore_eos=True)
    stopper = threading.Thread(target=engine_loop.shutdown)
    stopper.start()
    while not engine_loop._commands.qsize() == 2:  # the request, then the stop
        pass
    gate.set()
    stopper.join()
    holder.join()
    final = stream.result()
    assert final.finished and final.outputs[0].finish_reason == "abort"
    assert engine_loop.engine.runner.released and not engine_loop.is_running
    with pytest.raises(EngineDeadError):
        submit(engine_loop, "late", "abc")
    with pytest.raises(EngineDeadError):
        engine_loop.call(lambda engine: None)


def test_a_failed_build_raises_in_the_caller():
    def broken():
        raise FileNotFoundError("no weights here")

    with pytest.raises(FileNotFoundError, match="no weights here"):
        EngineLoop(broken)


def test_an_error_of_one_request_ends_that_request_only(loop):
    """A request whose own post-processing raises (here: its scoring) fails alone; the batch finishes."""
    processor = loop.engine.core.output_processor
    original = processor.append_token

    def failing_for_bad(request, result, t):
        if request.parent_id == "bad" and request.num_output_tokens == 3:
            raise OverflowError("its score overflowed")
        return original(request, result, t)

    processor.append_token = failing_for_bad
    good = [submit(loop, f"good{i}", f"prompt {i}", max_tokens=20, ignore_eos=True) for i in range(3)]
    bad = submit(loop, "bad", "prompt", n=2, max_tokens=20, ignore_eos=True)
    with pytest.raises(OverflowError, match="overflowed"):
        bad.result()
    for i, stream in enumerate(good):
        assert stream.result().outputs[0].token_ids == expected_tokens(list(f"prompt {i}".encode()), 20)
    stats = loop.call(lambda engine: engine.core.get_stats())
    assert stats.num_blocks_used == 0 and stats.num_requests_running == 0
