"""The default model loaded quantized (its own Q4_1/Q8_0 GGUF blocks) against its float32 dequantization.

Per layer: every quantized linear layer of the default engine equals the same layer with the
dequantized float32 weight within the tolerance stated in tests/test_quantized.py. End to end:
greedy tokens equal transformers' (which dequantizes the GGUF to float32) on the parity prompts
of tests/test_default_engine.py for 32 tokens, or the first divergence is a near-tie that
transformers itself measures: its logprobs of the two tokens differ by less than NEAR_TIE.
"""

import pytest
import torch
from test_default_engine import PROMPTS
from test_quantized import assert_within_tolerance

from nbllm import LLM, SamplingParams
from nbllm.engine.model_runner import build_model
from nbllm.layers.quantized_linear import QuantizedEmbedding, QuantizedLinear

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
NEAR_TIE = 0.1  # nats: the products' bfloat16 roundings move logits by a few hundredths


@pytest.fixture(scope="module")
def quantized_llm():
    llm = LLM()
    yield llm
    llm.shutdown()


def test_default_model_loads_quantized_layers_equal_to_float32(quantized_llm):
    model = quantized_llm.llm_engine.runner.model
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and isinstance(model.lm_head, QuantizedLinear)
    engine = quantized_llm.llm_engine
    reference = dict(build_model(engine.runner.hf_config, engine.model_path, torch.float32,
                                 torch.device("cpu")).named_modules())
    torch.manual_seed(0)
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            x = torch.randn(4, module.in_features)
            assert_within_tolerance(module(x), x, reference[name].weight.detach())
            checked += 1
    ids = torch.tensor([0, 1, 2, 1000, 49151])
    assert torch.equal(model.model.embed_tokens(ids), reference["model.embed_tokens"].weight.detach()[ids])
    assert checked == 4 * len(model.model.layers) + 1


def test_greedy_tokens_match_transformers_or_part_at_a_near_tie(quantized_llm):
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(quantized_llm.llm_engine.model_path),
                                                    dtype=torch.float32).eval()
    tokenizer = quantized_llm.get_tokenizer()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}], tokenize=False,
                                         add_generation_prompt=True)
    prompts = PROMPTS + [chat]
    outs = quantized_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True),
                                  use_tqdm=False)
    report = []
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=tokenizer.eos_token_id)
        ref_tokens = ref.sequences[0, ids.shape[1]:].tolist()[:len(ref.logits)]  # transformers stops at EOS
        ours = list(out.outputs[0].token_ids)
        same = next((i for i, (a, b) in enumerate(zip(ours, ref_tokens)) if a != b), len(ref_tokens))
        if same == len(ref_tokens):
            report.append(f"{prompt[:24]!r}: {same} tokens equal")
            continue
        logprobs = torch.log_softmax(ref.logits[same][0].float(), -1)
        gap = (logprobs[ref_tokens[same]] - logprobs[ours[same]]).item()
        report.append(f"{prompt[:24]!r}: equal for {same} tokens, then a gap of {gap:.4f} nats in transformers")
        assert gap < NEAR_TIE, report[-1]
    print("\n" + "\n".join(report))
