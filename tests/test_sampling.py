"""Sampling: seeded reproducibility, the filtered distributions, penalties, stops and detokenization."""

import math

import pytest
import torch
from scipy.stats import chisquare

from nbllm import SamplingParams
from nbllm.engine.detokenizer import IncrementalDetokenizer
from nbllm.layers.sampler import Sampler, SamplingRow, filter_logits

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])


def _draw(params: SamplingParams, n_rows: int = 4000, rounds: int = 5, output_ids=(), seed: int = 0) -> torch.Tensor:
    sampler = Sampler(torch.Generator().manual_seed(seed))
    counts = torch.zeros(len(LOGITS))
    for _ in range(rounds):
        rows = [SamplingRow(params, [], list(output_ids), None) for _ in range(n_rows)]
        out = sampler(LOGITS.repeat(n_rows, 1), rows)
        counts += torch.bincount(torch.tensor(out.token_ids), minlength=len(LOGITS))
    return counts


def _expected(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


def _assert_matches(counts: torch.Tensor, probs: torch.Tensor):
    support = probs > 0
    assert counts[~support].sum() == 0, "a filtered-out token was sampled"
    total = counts.sum()
    stat = chisquare(counts[support].numpy(), (probs[support] * total).numpy())
    assert stat.pvalue > 1e-4, (counts, probs * total)


@pytest.mark.parametrize("params, keep", [
    (SamplingParams(temperature=1.0), None),
    (SamplingParams(temperature=0.7), None),
    (SamplingParams(temperature=1.0, top_k=3), [0, 1, 2]),
    (SamplingParams(temperature=1.0, top_p=0.6), None),
    (SamplingParams(temperature=1.0, min_p=0.2), None),
    (SamplingParams(temperature=1.3, top_k=5, top_p=0.9, min_p=0.05), None),
])
def test_empirical_frequencies_match_filtered_distribution(params, keep):
    scaled = LOGITS / params.temperature
    expected_logits = filter_logits(scaled[None], [params.top_k], [params.top_p], [params.min_p])[0]
    probs = _expected(expected_logits)
    if keep is not None:
        assert torch.nonzero(probs).flatten().tolist() == keep
    if params.top_p < 1.0 and params.top_k == 0 and params.min_p == 0:  # the smallest set reaching top_p
        full = _expected(scaled).sort(descending=True).values
        n_keep = int((probs > 0).sum())
        assert full[:n_keep].sum() >= params.top_p - 1e-6
        assert full[:n_keep - 1].sum() < params.top_p
    if params.min_p > 0 and params.top_k == 0 and params.top_p == 1.0:
        full = _expected(scaled)
        assert torch.equal(probs > 0, full >= params.min_p * full.max())
    _assert_matches(_draw(params), probs)


def test_penalties_shift_the_distribution_as_specified():
    history = [0, 0, 1]
    params = SamplingParams(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2)
    logits = LOGITS.clone()
    for t in set(history):  # repetition penalty (prompt is empty here, outputs count)
        logits[t] = logits[t] / 1.2 if logits[t] > 0 else logits[t] * 1.2
    counts = torch.bincount(torch.tensor(history), minlength=len(LOGITS)).float()
    logits -= 0.3 * counts + 0.5 * (counts > 0).float()
    _assert_matches(_draw(params, output_ids=history), _expected(logits))


def test_greedy_ignores_randomness_and_constraints_apply():
    sampler = Sampler(torch.Generator().manual_seed(0))
    rows = [SamplingRow(SamplingParams(temperature=0), [], [], None),
            SamplingRow(SamplingParams(temperature=0, allowed_token_ids=[3, 5]), [], [], None),
            SamplingRow(SamplingParams(temperature=0, logit_bias={7: 100.0}), [], [], None),
            SamplingRow(SamplingParams(temperature=0, min_tokens=2), [], [], None, frozenset({0}))]
    out = sampler(LOGITS.repeat(4, 1), rows)
    assert out.token_ids == [0, 3, 7, 1]
    assert out.logprobs[0] == pytest.approx(float(torch.log_softmax(LOGITS, -1)[0]))


def test_seeded_requests_reproduce_whatever_the_batch(tiny_llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = tiny_llm.generate("Once upon a time", params, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=16)
    batch = tiny_llm.generate(["The capital of", "Once upon a time", "Hello"], [others, params, others],
                              use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone
    different = tiny_llm.generate("Once upon a time", params.updated(seed=99), use_tqdm=False)[0]
    assert different.outputs[0].token_ids != alone


def test_stop_string_split_across_tokens(tiny_llm):
    tokenizer = tiny_llm.get_tokenizer()
    base = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = tiny_llm.generate("Once upon a time", base, use_tqdm=False)[0].outputs[0]
    pieces = [tokenizer.decode([t]) for t in full.token_ids]
    # a stop string made of the end of one token and the start of the next
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 1)
    stop = pieces[i][-2:] + pieces[i + 1][:1]
    index = full.text.find(stop)
    assert index >= 0
    out = tiny_llm.generate("Once upon a time", base.updated(stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.text == full.text[:index]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    kept = tiny_llm.generate("Once upon a time", base.updated(stop=[stop], include_stop_str_in_output=True),
                             use_tqdm=False)[0].outputs[0]
    assert kept.text == full.text[:index + len(stop)]


def test_stop_token_ids_and_max_tokens(tiny_llm):
    base = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    full = tiny_llm.generate("Hello", base, use_tqdm=False)[0].outputs[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    stop_id = full.token_ids[4]
    out = tiny_llm.generate("Hello", base.updated(stop_token_ids=[stop_id]), use_tqdm=False)[0].outputs[0]
    first = full.token_ids.index(stop_id)
    assert out.token_ids == full.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_logprobs_report_top_tokens_and_ranks(tiny_llm):
    out = tiny_llm.generate("Hello", SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2),
                            use_tqdm=False)[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 4
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert entry[token].rank == 1  # greedy picks the top token
        assert len(entry) == 3
        assert all(v.logprob <= 0 for v in entry.values())
    assert math.isclose(completion.cumulative_logprob, sum(e[t].logprob for t, e in
                                                           zip(completion.token_ids, completion.logprobs)),
                        rel_tol=1e-5)
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for token, entry in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:]):
        assert token in entry


def test_detokenizer_never_emits_half_a_character(tiny_llama_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    text = " Ünïcode 日本語 🙂🚀 done"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi"), SamplingParams())
    deltas = [detok.add_token(t) for t in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_prompt_logprobs_survive_chunking_and_preemption(tiny_llama_path):
    from nbllm import LLM

    prompt = "Once upon a time there was a little model that lived in a notebook. The end."
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, prompt_logprobs=1)
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=64) as llm:
        reference = llm.generate(prompt, params, use_tqdm=False)[0]
    # small chunks, and a pool so small that the two requests preempt each other
    with LLM(str(tiny_llama_path), block_size=8, num_kv_blocks=12, max_num_batched_tokens=6) as llm:
        outs = llm.generate([prompt, prompt + " Again"], params, use_tqdm=False)
        assert llm.get_stats().num_preemptions > 0
    got = outs[0].prompt_logprobs
    assert len(got) == len(reference.prompt_logprobs) == len(outs[0].prompt_token_ids)
    for a, b in zip(got[1:], reference.prompt_logprobs[1:]):
        assert a.keys() == b.keys()
        assert [v.logprob for v in a.values()] == pytest.approx([v.logprob for v in b.values()], abs=1e-5)
