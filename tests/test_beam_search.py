"""Native beam search against a naive reference that recomputes every beam from scratch."""

import pytest
import torch

from nbllm import BeamSearchParams, SamplingParams
from nbllm.engine.beam_search import beam_score


def naive_beam_search(model, prompt_ids, width, max_tokens, eos_ids, length_penalty=1.0, ignore_eos=False):
    """vLLM's beam search algorithm, every beam recomputed by a full transformers forward pass."""
    beams = [(list(prompt_ids), 0.0)]
    completed = []
    for step in range(max_tokens):
        candidates = []
        for tokens, cum in beams:
            with torch.no_grad():
                logits = model(torch.tensor([tokens])).logits[0, -1].float()
            logprobs = torch.log_softmax(logits, -1)
            values, ids = logprobs.topk(2 * width)
            for tok, lp in zip(ids.tolist(), values.tolist()):
                seq = tokens + [tok]
                if tok in eos_ids and not ignore_eos:
                    completed.append((seq, cum + lp, beam_score(len(seq), cum + lp, True, length_penalty)))
                else:
                    candidates.append((seq, cum + lp))
        candidates.sort(key=lambda c: beam_score(len(c[0]), c[1], False, length_penalty), reverse=True)
        beams = candidates[:width]
        if not beams:
            break
    completed += [(s, c, beam_score(len(s), c, False, length_penalty)) for s, c in beams]
    completed.sort(key=lambda d: d[2], reverse=True)
    return completed[:width]


@pytest.fixture(scope="module")
def hf_tiny(tiny_llama_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_path), dtype=torch.float32).eval()


@pytest.mark.parametrize("width, max_tokens, length_penalty, ignore_eos", [
    (1, 6, 1.0, True), (3, 8, 1.0, False), (4, 10, 0.5, True), (2, 12, 2.0, False)])
def test_matches_naive_reference(tiny_llm, hf_tiny, width, max_tokens, length_penalty, ignore_eos):
    prompts = ["Once upon a time", "The capital of France is"]
    params = BeamSearchParams(beam_width=width, max_tokens=max_tokens, length_penalty=length_penalty,
                              ignore_eos=ignore_eos)
    outputs = tiny_llm.beam_search(prompts, params)
    eos = tiny_llm.llm_engine.eos_token_ids
    for out in outputs:
        ref = naive_beam_search(hf_tiny, out.prompt_token_ids, width, max_tokens, eos, length_penalty, ignore_eos)
        assert [s.tokens for s in out.sequences] == [r[0] for r in ref]
        assert [s.cum_logprob for s in out.sequences] == pytest.approx([r[1] for r in ref], abs=1e-4)
        for seq in out.sequences:
            assert sum(seq.logprobs) == pytest.approx(seq.cum_logprob, abs=1e-5)
    assert tiny_llm.get_stats().num_blocks_used == 0


def test_tree_records_every_candidate(tiny_llm):
    out = tiny_llm.beam_search("Hello", BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True))[0]
    tree = out.tree
    per_step = {}
    for node in tree.nodes[1:]:
        per_step.setdefault(node.step, []).append(node)
    assert sorted(per_step) == [1, 2, 3, 4, 5]
    assert len(per_step[1]) >= 6  # 2 * beam_width candidates from the single first beam
    for step, nodes in per_step.items():
        assert sum(n.status == "kept" for n in nodes) == 3
        kept_scores = sorted((n.score for n in nodes if n.status == "kept"), reverse=True)
        pruned = [n.score for n in nodes if n.status == "pruned"]
        assert not pruned or min(kept_scores) >= max(pruned)
    finals = sorted((n for n in tree.nodes if n.final_rank is not None), key=lambda n: n.final_rank)
    assert [n.final_rank for n in finals] == [0, 1, 2]
    for node, seq in zip(finals, out.sequences):
        assert [n.token_id for n in tree.path(node.node_id)] == seq.tokens[len(out.prompt_token_ids):]
    frame = tree.to_dataframe()
    assert len(frame) == len(tree.nodes) and {"parent_id", "token_id", "score", "status"} <= set(frame.columns)


def test_forked_blocks_are_never_written_while_shared(tiny_llama_path):
    from nbllm import LLM

    with LLM(str(tiny_llama_path), block_size=4, num_kv_blocks=200) as llm:
        engine = llm.llm_engine
        runner, bm = engine.runner, engine.core.block_manager
        original = runner.execute
        checked = {"writes": 0, "shared_blocks_seen": 0}

        def checking_execute(out, rows):
            for item in out.scheduled:
                req = item.request
                start, end = req.num_computed_tokens, req.num_computed_tokens + item.num_new_tokens
                for pos in range(start, end):
                    block = bm.blocks[req.block_ids[pos // bm.block_size]]
                    assert block.ref_cnt == 1, f"write into shared block {block.block_id}"
                    checked["writes"] += 1
            checked["shared_blocks_seen"] = max(checked["shared_blocks_seen"],
                                                sum(1 for b in bm.blocks[1:] if b.ref_cnt > 1))
            return original(out, rows)

        runner.execute = checking_execute
        llm.beam_search(["Once upon a time there was", "Hello"], BeamSearchParams(beam_width=4, max_tokens=10))
        assert checked["writes"] > 0 and checked["shared_blocks_seen"] > 0  # sharing really happened
        assert bm.num_free_blocks == bm.num_usable_blocks


def test_beams_run_beside_other_traffic(tiny_llm):
    import threading

    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    expected = tiny_llm.generate("The capital of", greedy, use_tqdm=False)[0].outputs[0].token_ids
    alone = tiny_llm.beam_search("Hello", BeamSearchParams(beam_width=3, max_tokens=10))[0]
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "g", tiny_llm.generate("The capital of", greedy, use_tqdm=False)[0]))
    thread.start()
    mixed = tiny_llm.beam_search("Hello", BeamSearchParams(beam_width=3, max_tokens=10))[0]
    thread.join()
    assert result["g"].outputs[0].token_ids == expected
    assert [s.tokens for s in mixed.sequences] == [s.tokens for s in alone.sequences]


def test_invalid_beam_params():
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        BeamSearchParams(beam_width=2, max_tokens=0)


def test_beam_search_needs_beam_params(tiny_llm):
    with pytest.raises(TypeError, match="BeamSearchParams"):
        tiny_llm.beam_search("Hello", SamplingParams())
