"""The two engine hooks the notebook tools read: a beam search that streams its tree as it grows,
and each running request's blocks in the stats snapshot (the KV monitor colours the grid by them)."""

from __future__ import annotations

import pytest
from nb_fakes import assert_engine_idle, wait_until

from nbllm import BeamSearchParams, SamplingParams
from nbllm.sampling_params import RequestOutputKind


def test_a_cumulative_beam_search_streams_its_growing_tree(tiny_llm):
    params = BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True)
    [final_only] = tiny_llm.beam_search(["Once upon a time"], params)
    stream = tiny_llm.submit_beam_search("Once upon a time",
                                         BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True,
                                                          output_kind=RequestOutputKind.CUMULATIVE))
    outputs = list(stream)
    *progress, final = outputs
    assert len(progress) == 5 and all(not o.finished and o.sequences == [] for o in progress)
    assert [o.tree.num_steps for o in progress] == [1, 2, 3, 4, 5], "one snapshot per step, each a step deeper"
    sizes = [len(o.tree.nodes) for o in progress]
    assert sizes == sorted(sizes) and sizes[-1] < len(final.tree.nodes)
    assert progress[0].tree.nodes is not progress[1].tree.nodes, "each snapshot is a copy"
    assert final.finished and [s.text for s in final.sequences] == [s.text for s in final_only.sequences]
    assert tiny_llm.beam_search(["Hi"], params)[0].finished, "FINAL_ONLY (the default) sends only the end"
    assert_engine_idle(tiny_llm)


def test_beam_search_output_kind_is_final_only_or_cumulative():
    with pytest.raises(ValueError, match="FINAL_ONLY or CUMULATIVE"):
        BeamSearchParams(beam_width=2, max_tokens=2, output_kind=RequestOutputKind.DELTA)


def test_stats_name_each_running_requests_blocks(long_llm):
    params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    prompt = "A prompt long enough to fill a few blocks of eight tokens each, and then some more words"
    first = long_llm.submit(prompt, params)
    streams = [first]
    try:
        first.get()  # its prompt is computed: a second request with the same prompt finds it in the cache
        streams.append(long_llm.submit(prompt, params))
        assert wait_until(lambda: long_llm.get_stats().num_requests_running == 2, timeout=20)
        stats = long_llm.get_stats()
        assert set(stats.request_blocks) == set(stats.running_request_blocks)
        for request_id, blocks in stats.request_blocks.items():
            assert len(blocks) == stats.running_request_blocks[request_id]
            assert all(stats.block_states[i] == "used" for i in blocks)
        one, two = stats.request_blocks.values()
        assert set(one) & set(two), "the second request shares the first one's cached prompt blocks"
    finally:
        for stream in streams:
            stream.close()
    assert_engine_idle(long_llm)
