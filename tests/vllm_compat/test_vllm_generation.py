"""LLM.generate details that vLLM's tests check, on the tiny random model."""

import pytest
import torch

from nbllm import LLM, SamplingParams

GREEDY = dict(temperature=0, max_tokens=6, ignore_eos=True)


def test_cumulative_logprob_is_none_unless_logprobs_were_asked_for(tiny_llm):
    [plain] = tiny_llm.generate("Once upon a time", SamplingParams(**GREEDY), use_tqdm=False)
    assert plain.outputs[0].cumulative_logprob is None and plain.outputs[0].logprobs is None
    [asked] = tiny_llm.generate("Once upon a time", SamplingParams(logprobs=1, **GREEDY), use_tqdm=False)
    completion = asked.outputs[0]
    assert completion.cumulative_logprob is not None
    assert abs(completion.cumulative_logprob - sum(e[t].logprob for t, e in zip(completion.token_ids,
                                                                                 completion.logprobs))) < 1e-4


def test_decoded_tokens_are_none_without_detokenize(tiny_llm):
    [output] = tiny_llm.generate("Hello", SamplingParams(logprobs=2, prompt_logprobs=1, detokenize=False, **GREEDY),
                                 use_tqdm=False)
    assert all(lp.decoded_token is None for entry in output.outputs[0].logprobs for lp in entry.values())
    assert all(lp.decoded_token is None for entry in output.prompt_logprobs[1:] for lp in entry.values())


def test_decoded_tokens_are_decoded_in_context_and_never_a_lone_replacement_char(tiny_llm):
    [output] = tiny_llm.generate("Once upon a time", SamplingParams(logprobs=3, prompt_logprobs=2, **GREEDY),
                                 use_tqdm=False)
    completion = output.outputs[0]
    tokenizer = tiny_llm.get_tokenizer()
    sampled_text = "".join(entry[t].decoded_token for t, entry in zip(completion.token_ids, completion.logprobs))
    assert sampled_text == tokenizer.decode(completion.token_ids, skip_special_tokens=True) or "\ufffd" in \
        tokenizer.decode(completion.token_ids)
    for entry in completion.logprobs + output.prompt_logprobs[1:]:
        assert all(lp.decoded_token is not None and "\ufffd" not in lp.decoded_token for lp in entry.values())
    prompt_text = "".join(output.prompt_logprobs[i][t].decoded_token
                          for i, t in enumerate(output.prompt_token_ids) if i > 0)
    assert prompt_text == tokenizer.decode(output.prompt_token_ids[1:])


def test_logprobs_minus_one_return_the_whole_vocabulary_when_max_logprobs_allows(tiny_llm, tiny_llama_path):
    whole = SamplingParams(logprobs=-1, max_tokens=1, temperature=0)
    vocab = tiny_llm.llm_engine.vocab_size
    # vLLM caps logprobs at max_logprobs (20 by default), -1 included: the error names both numbers.
    with pytest.raises(ValueError, match=f"Requested sample logprobs of {vocab}, which is greater than max allowed: 20"):
        tiny_llm.generate("Hi", whole, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt logprobs of 21"):
        tiny_llm.generate("Hi", SamplingParams(prompt_logprobs=21), use_tqdm=False)
    with LLM(str(tiny_llama_path), max_logprobs=-1, num_kv_blocks=16, block_size=8) as llm:
        [output] = llm.generate("Hi", whole, use_tqdm=False)
    [entry] = output.outputs[0].logprobs
    assert len(entry) == vocab
    assert abs(sum(torch.tensor([lp.logprob for lp in entry.values()]).exp().tolist()) - 1.0) < 1e-3


@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"])
def test_logprobs_mode_reports_raw_or_processed_values(tiny_llama_path, mode):
    params = SamplingParams(logprobs=3, max_tokens=4, temperature=0.5, top_k=3, seed=7, ignore_eos=True)
    with LLM(str(tiny_llama_path), logprobs_mode=mode, num_kv_blocks=16, block_size=8) as llm:
        [output] = llm.generate("Once upon a time", params, use_tqdm=False)
    for token, entry in zip(output.outputs[0].token_ids, output.outputs[0].logprobs):
        values = torch.tensor([lp.logprob for lp in entry.values()])
        if mode == "raw_logprobs":
            assert (values <= 0).all() and values.exp().sum() < 1.0 + 1e-5
        elif mode == "processed_logprobs":  # top_k=3: the three kept tokens share all the mass
            assert abs(values.exp().sum().item() - 1.0) < 1e-4
        else:  # logits: not normalised; processed ones are divided by the temperature
            assert not torch.allclose(values.exp().sum(), torch.tensor(1.0), atol=1e-3)
        assert entry[token].rank is not None


def test_logits_processors_steer_generation_in_both_forms(tiny_llm):
    target = 42

    def force(output_ids, logits):
        logits[:] = float("-inf")
        logits[target] = 0.0
        return logits

    seen_prompts = []

    def three_args(prompt_ids, output_ids, logits):
        seen_prompts.append(tuple(prompt_ids))
        return logits

    [output] = tiny_llm.generate("Hello", SamplingParams(logits_processors=[three_args, force], **GREEDY),
                                 use_tqdm=False)
    assert output.outputs[0].token_ids == [target] * GREEDY["max_tokens"]
    assert seen_prompts and all(p == tuple(output.prompt_token_ids) for p in seen_prompts)


def test_a_raising_logits_processor_fails_its_own_request_only(tiny_llm):
    import pytest

    def broken(output_ids, logits):
        raise RuntimeError("user code broke")

    good = tiny_llm.submit("Once upon a time", SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    bad = tiny_llm.submit("Hello", SamplingParams(logits_processors=[broken], **GREEDY))
    with pytest.raises(RuntimeError, match="user code broke"):
        bad.result()
    assert len(good.result().outputs[0].token_ids) == 12
    assert tiny_llm.get_stats().num_blocks_used == 0
