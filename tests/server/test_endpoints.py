"""Every endpoint over real HTTP with httpx: shapes, values against the local engine, SSE framing, metrics."""

import json
from dataclasses import replace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_testing import MODEL
from nbllm import SamplingParams
from nbllm.server import serve_in_background

GREEDY = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}


def _local(llm, prompt, **params):
    return llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0]


def _sse(response) -> list:
    """The JSON events of an SSE stream, checking the framing and the final [DONE]."""
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_health_and_models(http, tiny_llm):
    assert http.get("/health").status_code == 200
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] == tiny_llm.max_model_len


def test_completion_matches_local_engine(http, tiny_llm):
    local = _local(tiny_llm, "Once upon a time", **GREEDY)
    body = http.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon a time", **GREEDY,
                                              "return_token_ids": True}).json()
    [choice] = body["choices"]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert choice["text"] == local.outputs[0].text and choice["token_ids"] == local.outputs[0].token_ids
    assert choice["prompt_token_ids"] == local.prompt_token_ids
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert body["usage"] == {"prompt_tokens": len(local.prompt_token_ids), "completion_tokens": 8,
                             "total_tokens": len(local.prompt_token_ids) + 8,
                             "prompt_tokens_details": body["usage"]["prompt_tokens_details"]}


def test_several_prompts_token_ids_n_and_seed(http, tiny_llm):
    ids = tiny_llm.get_tokenizer().encode("The capital of France")
    request = {"prompt": [ids, ids], "n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 6, "return_token_ids": True}
    body = http.post("/v1/completions", json=request).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 2 * len(ids)
    assert body["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in body["choices"])
    again = http.post("/v1/completions", json=request).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in body["choices"]]


def test_stop_string_is_cut_and_reported(http, tiny_llm):
    text = _local(tiny_llm, "Once upon a time", **GREEDY).outputs[0].text
    stop = text[2:4]
    body = http.post("/v1/completions", json={"prompt": "Once upon a time", **GREEDY, "stop": [stop]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == text[:text.index(stop)]


def test_echo_and_logprobs(http, tiny_llm):
    local = _local(tiny_llm, "Once upon a time", **GREEDY, logprobs=2)
    body = http.post("/v1/completions", json={"prompt": "Once upon a time", **GREEDY, "echo": True,
                                              "logprobs": 2}).json()
    choice = body["choices"][0]
    assert choice["text"] == "Once upon a time" + local.outputs[0].text
    lp = choice["logprobs"]
    n_prompt = len(local.prompt_token_ids)
    assert len(lp["tokens"]) == n_prompt + 8 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = [e[t].logprob for t, e in zip(local.outputs[0].token_ids, local.outputs[0].logprobs)]
    assert lp["token_logprobs"][n_prompt:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) >= 2 for top in lp["top_logprobs"][n_prompt:])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_tokens_as_ids_and_prompt_logprobs(http, tiny_llm):
    local = _local(tiny_llm, "Hello", **GREEDY, logprobs=1, prompt_logprobs=1)
    body = http.post("/v1/completions", json={"prompt": "Hello", **GREEDY, "logprobs": 1, "prompt_logprobs": 1,
                                              "return_tokens_as_token_ids": True}).json()
    choice = body["choices"][0]
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in local.outputs[0].token_ids]
    assert choice["prompt_logprobs"][0] is None
    assert len(choice["prompt_logprobs"]) == len(local.prompt_token_ids)


def test_chat_completion_matches_local_chat(http, tiny_llm):
    messages = [{"role": "user", "content": "Hello there"}]
    local = tiny_llm.chat(messages, SamplingParams(**GREEDY, logprobs=2), use_tqdm=False)[0]
    body = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **GREEDY,
                                                   "logprobs": True, "top_logprobs": 2}).json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == local.outputs[0].text
    content = choice["logprobs"]["content"]
    assert len(content) == 8 and all(len(c["top_logprobs"]) == 2 for c in content)
    assert body["usage"]["prompt_tokens"] == len(local.prompt_token_ids)


def test_chat_content_parts_and_template_options(http, tiny_llm):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hello\nthere"}]
    a = http.post("/v1/chat/completions", json={"messages": parts, **GREEDY}).json()
    b = http.post("/v1/chat/completions", json={"messages": plain, **GREEDY}).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    c = http.post("/v1/chat/completions", json={"messages": plain, **GREEDY, "chat_template": "plain"})
    assert c.status_code == 200


def test_completion_stream_concatenates_to_the_full_text(http, tiny_llm):
    local = _local(tiny_llm, "Once upon a time", **GREEDY)
    with http.stream("POST", "/v1/completions", json={"prompt": "Once upon a time", **GREEDY, "stream": True,
                                                      "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)
    assert "".join(c["text"] for e in events for c in e["choices"]) == local.outputs[0].text
    assert [c.get("finish_reason") for e in events for c in e["choices"]][-1] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8
    assert len({e["created"] for e in events}) == 1, "one created time per stream"


def test_chat_stream_opens_with_the_role(http, tiny_llm):
    messages = [{"role": "user", "content": "Hi"}]
    local = tiny_llm.chat(messages, SamplingParams(**GREEDY), use_tqdm=False)[0]
    with http.stream("POST", "/v1/chat/completions", json={"messages": messages, **GREEDY, "stream": True,
                                                           "n": 2}) as response:
        events = _sse(response)
    assert [e["choices"] for e in events[:2]] == [[{"index": i, "delta": {"role": "assistant", "content": ""}}]
                                                  for i in (0, 1)], "one role chunk per choice, unset fields left out"
    for index in (0, 1):
        text = "".join(c["delta"].get("content", "") for e in events[2:] for c in e["choices"] if c["index"] == index)
        assert text == local.outputs[0].text
    assert all("usage" not in e for e in events), "no usage unless stream_options.include_usage"


def test_tokenize_and_detokenize(http, tiny_llm):
    tokenizer = tiny_llm.get_tokenizer()
    body = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert body["tokens"] == tokenizer.encode("Hello world") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == tiny_llm.max_model_len and len(body["token_strs"]) == body["count"]
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    expected = tiny_llm.render_chat_prompts([{"role": "user", "content": "Hi"}])[0]["prompt_token_ids"]
    assert chat["tokens"] == expected
    assert http.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": "Hello world"}


def test_metrics_have_vllm_names_and_parse(http, tiny_llm):
    http.post("/v1/completions", json={"prompt": "Hello", **GREEDY})
    text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert families[name].type == "gauge"
    for name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:num_preemptions",
                 "vllm:prompt_tokens", "vllm:generation_tokens"):
        assert families[name].type == "counter"
        assert families[name].samples[0].name == name + "_total"
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"):
        assert families[name].type == "histogram"
    generated = families["vllm:generation_tokens"].samples[0].value
    assert generated == tiny_llm.get_stats().generation_tokens_total >= 8


def test_beam_search(http, tiny_llm):
    from nbllm import BeamSearchParams

    local = tiny_llm.beam_search(["Once upon a time"], BeamSearchParams(beam_width=3, max_tokens=6))[0]
    body = http.post("/v1/completions", json={"prompt": "Once upon a time", "n": 3, "max_tokens": 6,
                                              "temperature": 0, "use_beam_search": True}).json()
    assert [c["text"] for c in body["choices"]] == [s.text for s in local.sequences]


class _Without:
    """The tiny engine, claiming to lack some capabilities (as a remote engine may)."""

    def __init__(self, llm, **missing):
        self._llm = llm
        self.capabilities = replace(llm.capabilities, **missing)

    def __getattr__(self, name):
        return getattr(self._llm, name)


def test_missing_capabilities_are_answered_not_probed(tiny_llm):
    with serve_in_background(_Without(tiny_llm, beam_search=False, metrics=False)) as handle:
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            beams = client.post("/v1/completions", json={"prompt": "Hi", "n": 2, "max_tokens": 3,
                                                         "use_beam_search": True})
            assert beams.status_code == 400 and "use_beam_search" in beams.json()["error"]["message"]
            metrics = client.get("/metrics")
            assert metrics.status_code == 404 and "reports no metrics" in metrics.json()["error"]["message"]
            assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
