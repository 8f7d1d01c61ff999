"""skip_tokenizer_init=True, as in vLLM: token ids in, token ids out, no tokenizer loaded."""

import pytest

from nbllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def idle_tokenizer_llm(tiny_llama_path):
    with LLM(str(tiny_llama_path), skip_tokenizer_init=True, num_kv_blocks=32, block_size=8) as llm:
        yield llm


def test_token_ids_in_token_ids_out(idle_tokenizer_llm, tiny_llm):
    prompt = {"prompt_token_ids": [5, 17, 42, 9]}
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    [output] = idle_tokenizer_llm.generate(prompt, greedy, use_tqdm=False)
    [reference] = tiny_llm.generate(prompt, greedy, use_tqdm=False)
    assert idle_tokenizer_llm.get_tokenizer() is None
    assert output.outputs[0].token_ids == reference.outputs[0].token_ids
    assert output.outputs[0].text == ""
    assert all(lp.decoded_token is None for entry in output.outputs[0].logprobs for lp in entry.values())


@pytest.mark.parametrize("prompt, params, match", [
    ("a text prompt", SamplingParams(), "pass prompts as token ids"),
    ({"prompt_token_ids": [5]}, SamplingParams(stop=["x"]), "stop needs a tokenizer"),
    ({"prompt_token_ids": [5]}, SamplingParams(bad_words=["x"]), "bad_words needs a tokenizer"),
])
def test_text_features_are_refused_by_name(idle_tokenizer_llm, prompt, params, match):
    with pytest.raises(ValueError, match=match):
        idle_tokenizer_llm.generate(prompt, params, use_tqdm=False)
