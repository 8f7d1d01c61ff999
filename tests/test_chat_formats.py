"""LLM.chat on tiny Gemma 2, Gemma 3, Phi-3 and SmolLM3 checkpoints, each with its family's chat format.

The tokenizer's own template renders the conversation (as a real checkpoint's does);
the engine generates from exactly those tokens, with each turn marker as one special
token. Template arguments reach the template, and a template's own error reaches the caller.
"""

import jinja2
import pytest

from nbllm import LLM, SamplingParams
from tests.tiny_models import CHAT_FORMATS, make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
HELLO = [{"role": "user", "content": "Hello there"}]
WITH_SYSTEM = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module", params=sorted(CHAT_FORMATS))
def family(request, tmp_path_factory):
    """(architecture, engine) on a tiny checkpoint whose tokenizer carries the family's template."""
    folder = make_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=32)
    yield request.param, llm
    llm.shutdown()


def test_chat_renders_the_tokenizer_template_and_generates(family):
    arch, llm = family
    tokenizer = llm.get_tokenizer()
    conversation = HELLO if arch == "Gemma2ForCausalLM" else WITH_SYSTEM
    expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    [output] = llm.chat(conversation, GREEDY, use_tqdm=False)

    assert output.prompt == expected
    assert output.prompt_token_ids == tokenizer.encode(expected, add_special_tokens=False)
    markers = [m for m in CHAT_FORMATS[arch][1] if m in expected]
    assert markers and all(tokenizer.convert_tokens_to_ids(m) in output.prompt_token_ids for m in markers)
    assert len(output.outputs[0].token_ids) == GREEDY.max_tokens


def test_family_specific_rendering(family):
    arch, llm = family
    if arch == "Gemma2ForCausalLM":
        with pytest.raises(jinja2.TemplateError, match="System role not supported"):
            llm.chat(WITH_SYSTEM, GREEDY, use_tqdm=False)
        return
    [prompt] = llm.render_chat_prompts(WITH_SYSTEM, chat_template_kwargs={"enable_thinking": False})
    text = prompt["prompt"]
    if arch == "Gemma3ForCausalLM":  # the system message opens the first user turn
        assert "<start_of_turn>user\nYou are terse.\n\nHello there<end_of_turn>" in text
    elif arch == "Phi3ForCausalLM":
        assert text.startswith("<|system|>\nYou are terse.<|end|>\n") and text.endswith("<|assistant|>\n")
    else:  # SmolLM3: the template argument turns thinking off
        assert "Reasoning Mode: /no_think" in text and text.endswith("<think>\n\n</think>\n")
