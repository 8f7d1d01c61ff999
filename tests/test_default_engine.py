"""The real default model (SmolLM2-135M-Instruct) through nbllm's engine, checked against transformers."""

import pytest
import torch

from nbllm import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "Once upon a time",
    "The three primary colors are",
    "def fibonacci(n):",
    "Paged attention is a technique that",
]


@pytest.fixture(scope="module")
def default_llm():
    llm = LLM()
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def float32_llm():
    """The default model dequantized to float32 (the default loads its GGUF quantized: tests/test_quantized_default.py)."""
    llm = LLM(dtype="float32")
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def hf_model(float32_llm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(float32_llm.llm_engine.model_path), dtype=torch.float32).eval()


def test_greedy_tokens_and_logprobs_match_transformers(float32_llm, hf_model):
    default_llm = float32_llm
    tokenizer = default_llm.get_tokenizer()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}], tokenize=False,
                                         add_generation_prompt=True)
    prompts = PROMPTS + [chat]
    compared = 0
    outs = default_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=0),
                                use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                                    output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=tokenizer.eos_token_id)
        # transformers stops at EOS; nbllm ran on (ignore_eos), so compare what both produced
        ref_tokens = ref.sequences[0, ids.shape[1]:].tolist()[:len(ref.logits)]
        assert out.outputs[0].token_ids[:len(ref_tokens)] == ref_tokens, prompt
        ref_logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(ref.logits, ref_tokens)]
        ours = [entry[t].logprob for entry, t in zip(out.outputs[0].logprobs, ref_tokens)]
        assert ours == pytest.approx(ref_logprobs, abs=1e-4), prompt
        compared += len(ref_tokens)
    assert compared >= 32 * len(PROMPTS)  # the plain prompts ran their full 32 tokens


def test_chat_prompt_answers_paris(default_llm):
    tokenizer = default_llm.get_tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    out = default_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0]
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"


def test_generation_config_defaults(default_llm):
    params = default_llm.get_default_sampling_params()
    generation_config = default_llm.llm_engine.generation_config
    for theirs, ours in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if theirs in generation_config:
            assert getattr(params, ours) == generation_config[theirs]


def test_default_chat_template_renders_like_transformers(default_llm):
    tokenizer = default_llm.get_tokenizer()
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    [prompt] = default_llm.render_chat_prompts(conv)
    assert prompt["prompt"] == tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert prompt["prompt_token_ids"][0] != prompt["prompt_token_ids"][1]  # no doubled BOS
    reply = default_llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                             SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)[0]
    assert "Paris" in reply.outputs[0].text


def test_beam_search_beats_greedy_and_frees_blocks(default_llm):
    from nbllm import BeamSearchParams

    prompt = "The best way to learn a language is"
    beams = default_llm.beam_search(prompt, BeamSearchParams(beam_width=4, max_tokens=32, ignore_eos=True))[0]
    greedy = default_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=0),
                                  use_tqdm=False)[0].outputs[0]
    assert len(beams.sequences) == 4
    assert beams.sequences[0].cum_logprob >= greedy.cumulative_logprob - 1e-4
    assert default_llm.get_stats().num_blocks_used == 0
