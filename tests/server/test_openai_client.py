"""The official `openai` client against the live server: completions and chat, plain and streaming, and errors."""

import pytest

from http_testing import API_KEY, MODEL
from nbllm import SamplingParams

openai = pytest.importorskip("openai")
PROMPT = "Once upon a time"
MESSAGES = [{"role": "user", "content": "Tell me a story"}]


def test_completions_plain_n_and_logprobs(openai_client, tiny_llm):
    local = tiny_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    response = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, n=2,
                                                logprobs=3, extra_body={"ignore_eos": True})
    assert [c.text for c in response.choices] == [local.outputs[0].text] * 2
    assert len(response.choices[0].logprobs.tokens) == 8
    assert response.usage.completion_tokens == 16


def test_completions_stream_with_usage(openai_client, tiny_llm):
    local = tiny_llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    chunks = list(openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                                   stream=True, stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True}))
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == local.outputs[0].text
    assert chunks[-1].usage.completion_tokens == 8


def test_chat_plain_stop_and_seed(openai_client, tiny_llm):
    local = tiny_llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)[0]
    response = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=10,
                                                     temperature=0)
    assert response.choices[0].message.content == local.outputs[0].text
    assert response.choices[0].message.role == "assistant"
    seeded = [openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=1.0,
                                                    seed=7).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    if len(local.outputs[0].text) > 3:
        stop = local.outputs[0].text[1:3]
        stopped = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                                        temperature=0, stop=[stop])
        assert stopped.choices[0].finish_reason == "stop"
        assert stop not in stopped.choices[0].message.content


def test_chat_stream_and_logprobs(openai_client, tiny_llm):
    local = tiny_llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)[0]
    stream = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0,
                                                   stream=True, logprobs=True, top_logprobs=2)
    chunks = list(stream)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == local.outputs[0].text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(len(c.logprobs.content) for chunk in chunks for c in chunk.choices if c.logprobs) == \
        len(local.outputs[0].token_ids)


def test_client_errors_map_to_openai_exceptions(openai_client, keyed_server):
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=-1)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 400}])
    wrong = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=API_KEY, max_retries=0)
    assert right.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].text is not None
    for client in (wrong, right):
        client.close()
