"""vLLM's server behaviour that vLLM users' code and dashboards depend on (issue 17, items 12-16).

Each test follows what vLLM's own tests under tests/entrypoints/openai/ assert:
usage in streams (test_completion_stream_options, test_enable_force_include_usage),
one choice per chunk (test_batch_completions, test_parallel_streaming), token ids
(test_return_token_ids), logprobs (test_completion, test_chat_echo,
test_logprob_token_ids), truncation, chat echo, error wording, /version, /load,
--root-path, per-request metrics and the Prometheus families vLLM's dashboard reads.
"""

import json
import math

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_testing import wait_idle
from nbllm import LLM
from nbllm.server import ServerOptions, serve_in_background

CHAT = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0, "max_tokens": 6, "ignore_eos": True}


def _sse(response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def _stream(client, path, body) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        return _sse(response)


@pytest.fixture(scope="module")
def vllm_like(tiny_llm):
    """The tiny engine served with vLLM's optional frontend flags on."""
    options = ServerOptions(enable_force_include_usage=True, enable_prompt_tokens_details=True,
                            enable_per_request_metrics=True, enable_server_load_tracking=True, root_path="/llm")
    with serve_in_background(tiny_llm, options=options) as handle:
        with httpx.Client(base_url=handle.url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def whole_vocab(tiny_llama_path):
    """A second tiny engine with max_logprobs=-1 (vLLM's --max-logprobs -1), served as tokens-as-ids."""
    llm = LLM(str(tiny_llama_path), num_kv_blocks=64, block_size=8, max_logprobs=-1)
    with serve_in_background(llm, options=ServerOptions(return_tokens_as_token_ids=True)) as handle:
        with httpx.Client(base_url=handle.url, timeout=60) as client:
            yield client, llm
    llm.shutdown()


# ------------------------------------------------------------------------------------------- 12: streaming
@pytest.mark.parametrize("options, usage_on", [
    (None, "none"), ({}, "none"), ({"include_usage": False, "continuous_usage_stats": True}, "none"),
    ({"include_usage": True}, "last"), ({"include_usage": True, "continuous_usage_stats": True}, "all"),
])
def test_stream_usage_follows_stream_options(http, options, usage_on):
    body = {"prompt": "Once upon a time", **GREEDY, **({"stream_options": options} if options is not None else {})}
    events = _stream(http, "/v1/completions", body)
    with_usage = [e for e in events if e.get("usage")]
    if usage_on == "none":
        assert not with_usage
    elif usage_on == "last":
        assert with_usage == [events[-1]] and events[-1]["choices"] == []
    else:
        assert len(with_usage) == len(events)
        assert all(e["usage"]["completion_tokens"] > 0 and e["usage"]["total_tokens"] == e["usage"]["prompt_tokens"]
                   + e["usage"]["completion_tokens"] for e in events)
    assert events[-1]["usage" if usage_on != "none" else "choices"] is not None


def test_force_include_usage_puts_growing_usage_on_every_chat_chunk(vllm_like):
    events = _stream(vllm_like, "/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 6,
                                                         "min_tokens": 6, "temperature": 0})
    last = 0
    for event in events:
        usage = event["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert last == 0 or usage["completion_tokens"] > last or (not event["choices"] and
                                                                   usage["completion_tokens"] == last)
        last = usage["completion_tokens"]
    assert events[-1]["choices"] == []
    assert isinstance(events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"], int)


def test_one_choice_per_chunk_with_n_and_several_prompts(http):
    events = _stream(http, "/v1/completions", {"prompt": ["Hi", "Hello"], "n": 2, **GREEDY, "temperature": 1.0})
    assert all(len(e["choices"]) == 1 for e in events)
    texts = {i: "".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i) for i in range(4)}
    finishes = [e["choices"][0]["index"] for e in events if e["choices"][0].get("finish_reason")]
    assert sorted(finishes) == [0, 1, 2, 3] and all(texts.values())


def test_chunks_leave_out_unset_fields(http):
    events = _stream(http, "/v1/chat/completions", {"messages": CHAT, **GREEDY, "return_token_ids": True})
    assert isinstance(events[0]["prompt_token_ids"], list) and all("prompt_token_ids" not in e for e in events[1:])
    collected = []
    for event in events:
        assert "usage" not in event and all(value is not None for value in event["choices"][0].values())
        collected.extend(event["choices"][0].get("token_ids", []))  # a client's extend() never meets a null
    assert len(collected) == 6


def test_prompt_tokens_details_only_with_its_flag(http, vllm_like):
    plain = http.post("/v1/completions", json={"prompt": "Hi", **GREEDY}).json()
    assert plain["usage"]["prompt_tokens_details"] is None
    detailed = vllm_like.post("/v1/completions", json={"prompt": "Hi", **GREEDY}).json()
    assert set(detailed["usage"]["prompt_tokens_details"]) == {"cached_tokens"}


# ------------------------------------------------------------------------------------------- 13: logprobs
def test_the_sampled_token_comes_first(http):
    chat = http.post("/v1/chat/completions", json={"messages": CHAT, **GREEDY, "logprobs": True,
                                                   "top_logprobs": 3}).json()
    for position in chat["choices"][0]["logprobs"]["content"]:
        assert position["top_logprobs"][0]["token"] == position["token"] and len(position["top_logprobs"]) == 3
    completion = http.post("/v1/completions", json={"prompt": "Hi", **GREEDY, "logprobs": 0}).json()
    lp = completion["choices"][0]["logprobs"]
    assert all(list(top) == [token] for top, token in zip(lp["top_logprobs"], lp["tokens"]))


def test_whole_vocabulary_logprobs_and_tokens_as_ids(whole_vocab):
    client, llm = whole_vocab
    vocab = len(llm.get_tokenizer())
    completion = client.post("/v1/completions", json={"prompt": "Hi", **GREEDY, "logprobs": -1,
                                                      "prompt_logprobs": -1}).json()
    choice = completion["choices"][0]
    assert all(len(top) == vocab for top in choice["logprobs"]["top_logprobs"])
    assert all(t.startswith("token_id:") for t in choice["logprobs"]["tokens"]), "the server flag, not the request"
    assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"][1]) >= vocab
    chat = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1, "logprobs": True,
                                                     "top_logprobs": -1}).json()
    assert len(chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == vocab


def test_logprob_token_ids(whole_vocab):
    client, _ = whole_vocab
    wanted = [100, 200, 300]
    body = {"messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": len(wanted),
            "logprob_token_ids": wanted}
    chat = client.post("/v1/chat/completions", json=body).json()
    full = client.post("/v1/chat/completions", json={**body, "top_logprobs": -1, "logprob_token_ids": None}).json()
    for position, whole in zip(chat["choices"][0]["logprobs"]["content"], full["choices"][0]["logprobs"]["content"]):
        got = {int(e["token"].removeprefix("token_id:")): e["logprob"] for e in position["top_logprobs"]}
        sampled = int(position["token"].removeprefix("token_id:"))
        assert list(got)[0] == sampled and len(set(got) & set(wanted)) >= len(wanted) - (sampled not in wanted)
        reference = {int(e["token"].removeprefix("token_id:")): e["logprob"] for e in whole["top_logprobs"]}
        assert all(math.isclose(value, reference[t], abs_tol=1e-3) for t, value in got.items())


def test_return_token_ids(http, tiny_llm):
    body = {"prompt": "Hello", **GREEDY, "return_token_ids": True}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["prompt_token_ids"] == tiny_llm.get_tokenizer().encode("Hello") and len(choice["token_ids"]) == 6
    without = http.post("/v1/completions", json={**body, "return_token_ids": False}).json()["choices"][0]
    assert without["token_ids"] is None and without["prompt_token_ids"] is None


# ------------------------------------------------------------------------------------------- 14: requests
@pytest.mark.parametrize("side, kept", [("right", slice(None, 4)), ("left", slice(-4, None))])
def test_truncate_prompt_tokens_and_truncation_side(http, side, kept):
    ids = list(range(10, 18))
    choice = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "return_token_ids": True,
                                                "truncate_prompt_tokens": 4, "truncation_side": side}).json()
    assert choice["choices"][0]["prompt_token_ids"] == ids[kept]


@pytest.mark.parametrize("echo", [True, False])
def test_chat_echo_with_continue_final_message(http, echo):
    saying = "An apple a day keeps"
    body = {"messages": [{"role": "user", "content": "a saying"}, {"role": "assistant", "content": saying}],
            "echo": echo, "continue_final_message": True, "add_generation_prompt": False, **GREEDY}
    content = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert content.startswith(saying) == echo
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in _stream(http, "/v1/chat/completions", body))
    assert streamed == content


def test_vllm_wording_and_pydantic_error_types(http):
    assert "[type=float_parsing]" in http.post("/v1/completions", json={"prompt": "x", "temperature": "hot"}).json()[
        "error"]["message"]
    for prompt in ("", [], None):
        error = http.post("/v1/completions", json={"prompt": prompt}).json()["error"]
        assert error["message"] == "Either prompt or prompt_embeds must be provided and non-empty."
    assert "out of vocabulary" in http.post("/v1/completions", json={"prompt": [999999]}).json()["error"]["message"]


# ------------------------------------------------------------------------------------------- 15: endpoints
def test_version_tokenizer_info_and_invocations(http, tiny_llm):
    assert set(http.get("/version").json()) == {"version"}
    info = http.get("/tokenizer_info").json()
    assert info["vocab_size"] == len(tiny_llm.get_tokenizer()) and info["tokenizer_class"]
    completion = http.post("/invocations", json={"prompt": "Hi", **GREEDY}).json()
    chat = http.post("/invocations", json={"messages": CHAT, **GREEDY}).json()
    assert completion["object"] == "text_completion" and chat["object"] == "chat.completion"
    assert http.get("/load").status_code == 404, "load tracking is off by default"


def test_root_path_serves_both_prefixes(vllm_like):
    assert vllm_like.get("/v1/models").status_code == 200
    assert vllm_like.get("/llm/v1/models").status_code == 200


def test_load_counts_requests_in_flight(vllm_like, tiny_llm):
    assert vllm_like.get("/load").json() == {"server_load": 0}
    with vllm_like.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 60, "ignore_eos": True,
                                                           "stream": True}) as response:
        lines = response.iter_lines()  # kept: a discarded iterator closes the connection
        next(lines)
        assert vllm_like.get("/load").json() == {"server_load": 1}
        assert "data: [DONE]" in list(lines)
    assert vllm_like.get("/load").json() == {"server_load": 0}
    wait_idle(tiny_llm)


def test_per_request_metrics(vllm_like):
    single = vllm_like.post("/v1/completions", json={"prompt": "Hi", **GREEDY}).json()
    metrics = single["metrics"]
    assert set(metrics) == {"time_to_first_token_ms", "generation_time_ms", "queue_time_ms", "mean_itl_ms",
                            "tokens_per_second"}
    assert metrics["tokens_per_second"] > 0 and metrics["mean_itl_ms"] > 0
    assert vllm_like.post("/v1/completions", json={"prompt": "Hi", **GREEDY, "n": 2}).json()["metrics"] is None
    events = _stream(vllm_like, "/v1/chat/completions", {"messages": CHAT, **GREEDY})
    assert [("metrics" in e) for e in events] == [False] * (len(events) - 1) + [True]


# ------------------------------------------------------------------------------------------- 16: Prometheus
def test_the_metric_families_vllm_dashboards_read(vllm_like):
    vllm_like.post("/v1/completions", json={"prompt": "Hi", **GREEDY, "n": 2})
    families = {f.name: f for f in text_string_to_metric_families(vllm_like.get("/metrics").text)}
    expected = {"vllm:iteration_tokens_total": "histogram", "vllm:request_success": "counter",
                "vllm:request_prompt_tokens": "histogram", "vllm:request_generation_tokens": "histogram",
                "vllm:request_params_n": "histogram", "vllm:request_params_max_tokens": "histogram",
                "vllm:request_queue_time_seconds": "histogram", "vllm:request_inference_time_seconds": "histogram",
                "vllm:request_prefill_time_seconds": "histogram", "vllm:request_decode_time_seconds": "histogram",
                "vllm:request_num_preemptions": "histogram", "vllm:num_requests_waiting_by_reason": "gauge",
                "vllm:cache_config_info": "gauge", "vllm:e2e_request_latency_seconds": "histogram"}
    for name, kind in expected.items():
        assert families[name].type == kind, name
    success = {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"].samples
               if s.name == "vllm:request_success_total"}
    assert success["length"] >= 2 and set(success) >= {"stop", "length", "abort", "error"}
    n_count = [s.value for s in families["vllm:request_params_n"].samples if s.name.endswith("_count")][0]
    steps = [s.value for s in families["vllm:iteration_tokens_total"].samples if s.name.endswith("_count")][0]
    assert n_count >= 1 and steps >= 6
    reasons = {s.labels["reason"] for s in families["vllm:num_requests_waiting_by_reason"].samples}
    assert reasons == {"capacity", "deferred"}
    [info] = families["vllm:cache_config_info"].samples
    assert int(info.labels["block_size"]) == 8 and int(info.labels["num_gpu_blocks"]) > 0
    assert all(s.labels["model_name"] and s.labels["engine"] == "0" for s in families["vllm:request_queue_time_seconds"]
               .samples)


# ------------------------------------------------------------------------------------------- 6: fields
@pytest.mark.parametrize("constraint", [{"guided_choice": ["yes", "no"]},
                                        {"structured_outputs": {"choice": ["yes", "no"]}},
                                        {"response_format": {"type": "json_schema", "json_schema": {
                                            "name": "answer", "schema": {"type": "string", "enum": ["yes", "no"]}}}}])
def test_output_constraints_reach_the_engine(http, constraint):
    text = http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 8, **constraint}).json()[
        "choices"][0]["message"]["content"]
    assert text.strip('"') in ("yes", "no")


def test_tools_reach_the_template_with_tool_choice_none(http):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    shown = http.post("/tokenize", json={"messages": CHAT, "tools": tools, "tool_choice": "none"})
    assert shown.status_code == 200
    answer = http.post("/v1/chat/completions", json={"messages": CHAT, "tools": tools, "tool_choice": "none",
                                                     **GREEDY})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
