"""LLM.chat: template rendering equals transformers', batching, shipped templates and errors."""

import pytest

import nbllm
from nbllm import SamplingParams

CONV = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def test_rendered_prompt_equals_transformers(tiny_llm):
    tokenizer = tiny_llm.get_tokenizer()
    expected = tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    [prompt] = tiny_llm.render_chat_prompts(CONV)
    assert prompt["prompt"] == expected
    assert prompt["prompt_token_ids"] == tokenizer.encode(expected, add_special_tokens=False)


def test_chat_equals_generate_on_rendered_prompt(tiny_llm):
    text = tiny_llm.get_tokenizer().apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    chat = tiny_llm.chat(CONV, GREEDY, use_tqdm=False)[0]
    direct = tiny_llm.generate({"prompt_token_ids": tiny_llm.get_tokenizer().encode(text, add_special_tokens=False)},
                               GREEDY, use_tqdm=False)[0]
    assert chat.outputs[0].token_ids == direct.outputs[0].token_ids
    assert chat.prompt == text


def test_batched_conversations_keep_order(tiny_llm):
    convs = [[{"role": "user", "content": "Hello"}], CONV, [{"role": "user", "content": "The capital of"}]]
    batched = tiny_llm.chat(convs, GREEDY, use_tqdm=False)
    alone = [tiny_llm.chat(c, GREEDY, use_tqdm=False)[0] for c in convs]
    assert [o.outputs[0].token_ids for o in batched] == [o.outputs[0].token_ids for o in alone]


def test_continue_final_message(tiny_llm):
    conv = CONV + [{"role": "assistant", "content": "Hi, I am"}]
    [prompt] = tiny_llm.render_chat_prompts(conv, add_generation_prompt=False, continue_final_message=True)
    assert prompt["prompt"].endswith("Hi, I am")


def test_shipped_and_custom_templates(tiny_llm):
    [prompt] = tiny_llm.render_chat_prompts(CONV, chat_template="plain")
    assert prompt["prompt"] == "You are terse.\n\nUser: Hello there\nAssistant:"
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}>>"
    [prompt] = tiny_llm.render_chat_prompts(CONV, chat_template=custom)
    assert prompt["prompt"] == "[system] You are terse. [user] Hello there >>"
    assert "<|im_start|>" in nbllm.load_chat_template("chatml")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(add_generation_prompt=True, continue_final_message=True), ValueError, "continue_final_message"),
    (dict(chat_template="no-such-template"), ValueError, "chat template"),
])
def test_chat_errors(tiny_llm, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny_llm.chat(CONV, GREEDY, use_tqdm=False, **kwargs)


@pytest.mark.parametrize("messages, words", [
    ([], "empty"),
    ([{"content": "no role"}], "role"),
    (["just a string"], "role"),
])
def test_malformed_conversations(tiny_llm, messages, words):
    with pytest.raises(ValueError, match=words):
        tiny_llm.chat(messages, GREEDY, use_tqdm=False)


def test_model_without_template_says_how_to_pass_one(tiny_llm):
    tokenizer = tiny_llm.get_tokenizer()
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(ValueError, match="load_chat_template"):
            tiny_llm.chat(CONV, GREEDY, use_tqdm=False)
        assert tiny_llm.chat(CONV, GREEDY, use_tqdm=False, chat_template="chatml")[0].finished
    finally:
        tokenizer.chat_template = saved
