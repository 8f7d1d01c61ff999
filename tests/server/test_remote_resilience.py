"""RemoteLLM when servers misbehave: retries with backoff (only of what can succeed), per-row failures, the
concurrency bound, timeouts, and vLLM's /metrics text. Fake servers are httpx.MockTransport handlers, which
answer the connection probe like a vLLM server first."""

import json
import socket
import threading
import time

import httpx
import pytest

from http_testing import wait_idle
from nbllm import SamplingParams
from nbllm.client import RemoteError, RemoteLLM
from nbllm.client.prometheus_text import snapshot_from_text

PARAMS = SamplingParams(temperature=0, max_tokens=4)


def _completion(text: str = "ok") -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "stop_reason": None,
                         "token_ids": [1, 2], "prompt_token_ids": [9]}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


def _probe_answer(request) -> httpx.Response:
    """What a vLLM server answers RemoteLLM's connection probe."""
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 64}]})
    if request.url.path == "/v1/completions":
        choice = {"index": 0, "text": "a", "finish_reason": "length", "token_ids": [1],
                  "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [-0.1], "top_logprobs": [None]}}
        return httpx.Response(200, json={"choices": [choice, {**choice, "index": 1}]})
    return httpx.Response(404, json={"detail": "Not Found"})


def _remote(handler, **kwargs) -> RemoteLLM:
    connected = []
    transport = httpx.MockTransport(lambda request: handler(request) if connected else _probe_answer(request))
    remote = RemoteLLM("http://fake/v1", model="m", transport=transport, retry_backoff_s=0.001, **kwargs)
    connected.append(True)
    return remote


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retries_then_succeeds(status):
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(status, json={"error": {"message": "busy"}}) if len(calls) < 3 else \
            httpx.Response(200, json=_completion())

    [output] = _remote(handler).generate("hi", PARAMS, use_tqdm=False)
    assert len(calls) == 3 and output.outputs[0].text == "ok" and output.outputs[0].token_ids == [1, 2]
    assert output.prompt_token_ids == [9] and output.finished


@pytest.mark.parametrize("status", [500, 400, 422])
def test_deterministic_answers_are_not_retried(status):
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(status, json={"error": {"message": "the engine failed on this prompt"}})

    [output] = _remote(handler).generate({"prompt_token_ids": [1, 2]}, PARAMS, use_tqdm=False)
    assert len(calls) == 1, "a deterministic answer is not asked again"
    assert output.outputs[0].finish_reason == "error" and "engine failed" in output.outputs[0].stop_reason


def test_gives_up_after_max_retries_with_a_row_error():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    [output] = _remote(handler, max_retries=2).generate("hi", PARAMS, use_tqdm=False)
    assert len(calls) == 3
    failed = output.outputs[0]
    assert output.finished and failed.finish_reason == "error" and failed.text == ""
    assert "3 attempts" in failed.stop_reason and "overloaded" in failed.stop_reason


def test_retry_after_is_honoured():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        return httpx.Response(429, headers={"Retry-After": "0.3"}) if len(calls) == 1 else \
            httpx.Response(200, json=_completion())

    _remote(handler).generate("hi", PARAMS, use_tqdm=False)
    assert calls[1] - calls[0] >= 0.3


def test_failures_are_reported_per_row():
    def handler(request):
        prompt = json.loads(request.content)["prompt"]
        if prompt == "bad":
            return httpx.Response(400, json={"error": {"message": "prompt is too long", "param": "prompt"}})
        return httpx.Response(200, json=_completion(prompt.upper()))

    outputs = _remote(handler).generate(["a", "bad", "c", "bad", "e"], PARAMS, use_tqdm=False)
    assert [o.outputs[0].finish_reason for o in outputs] == ["length", "error", "length", "error", "length"]
    assert [o.outputs[0].text for o in outputs] == ["A", "", "C", "", "E"]
    assert "prompt is too long" in outputs[1].outputs[0].stop_reason


def test_concurrency_is_bounded():
    lock, active, peak = threading.Lock(), [0], [0]

    def handler(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return httpx.Response(200, json=_completion())

    outputs = _remote(handler, max_concurrency=3).generate([str(i) for i in range(12)], PARAMS, use_tqdm=False)
    assert len(outputs) == 12 and peak[0] == 3


def test_wrong_key_raises_for_the_batch():
    remote = _remote(lambda request: httpx.Response(401, json={"error": {"message": "bad key"}}))
    with pytest.raises(RemoteError, match="bad key"):
        remote.generate(["a", "b"], PARAMS, use_tqdm=False)


def test_a_dead_url_fails_on_connect():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match="ConnectError"):
        RemoteLLM(f"http://127.0.0.1:{port}", model="m", max_retries=1, retry_backoff_s=0.01)


def test_broken_connections_are_retried_then_reported():
    calls = []

    def handler(request):
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    [output] = _remote(handler, max_retries=2).generate("hi", PARAMS, use_tqdm=False)
    assert len(calls) == 3
    assert output.outputs[0].finish_reason == "error" and "ConnectError" in output.outputs[0].stop_reason


def test_timeout_is_a_row_error_and_the_server_aborts(server, tiny_llm):
    with RemoteLLM(server.url, timeout=0.1) as remote:
        [output] = remote.generate("Once", SamplingParams(n=4, max_tokens=240, ignore_eos=True), use_tqdm=False)
    assert output.outputs[0].finish_reason == "error" and "timed out" in output.outputs[0].stop_reason
    wait_idle(tiny_llm)


def test_stream_retries_then_reads_events():
    calls = []
    chunk = {"id": "cmpl-2", "choices": [{"index": 0, "text": "he", "token_ids": [3], "finish_reason": None}]}
    last = {"id": "cmpl-2", "choices": [{"index": 0, "text": "llo", "token_ids": [4], "finish_reason": "stop",
                                         "stop_reason": "!"}]}
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in (chunk, last)) + "data: [DONE]\n\n"

    def handler(request):
        calls.append(request)
        return httpx.Response(503) if len(calls) == 1 else \
            httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    outputs = list(_remote(handler).submit("hi", PARAMS, request_id="mine"))
    assert [o.outputs[0].text for o in outputs] == ["he", "hello"]
    assert outputs[-1].outputs[0].token_ids == [3, 4] and outputs[-1].outputs[0].stop_reason == "!"
    assert outputs[-1].finished and {o.request_id for o in outputs} == {"mine"}


def test_without_metrics_stats_count_this_clients_usage():
    remote = _remote(lambda request: httpx.Response(200, json=_completion()))
    assert not remote.capabilities.metrics and remote.capabilities.token_ids
    remote.generate(["a", "b"], PARAMS, use_tqdm=False)
    stats = remote.get_stats()
    assert stats.requests_finished_total == 2 and stats.prompt_tokens_total == 2
    assert stats.generation_tokens_total == 4 and stats.num_blocks_total == 0


VLLM_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.75
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_total{engine="1",model_name="m"} 50.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 6.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 6.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 4.5
"""


def test_vllm_metrics_text_parses_into_a_snapshot():
    snapshot = snapshot_from_text(VLLM_METRICS)
    assert snapshot.num_requests_running == 5 and snapshot.generation_tokens_total == 150
    assert snapshot.kv_cache_usage_perc == 0.5 and snapshot.num_blocks_total == 1000
    assert snapshot.num_blocks_used == 500 and snapshot.block_size == 16
    ttft = snapshot.time_to_first_token
    assert ttft.buckets == (0.1, 1.0) and ttft.counts == [2, 3, 1] and ttft.count == 6 and ttft.total == 4.5


def test_missing_choices_are_reported_not_left_empty():
    [output] = _remote(lambda request: httpx.Response(200, json=_completion())).generate(
        "hi", PARAMS.updated(n=2), use_tqdm=False)  # the server said it answers n > 1, then sent one choice
    assert output.finished and output.outputs[0].finish_reason == "length" and output.outputs[0].text == "ok"
    assert output.outputs[1].finish_reason == "error" and "1 of 2 choices" in output.outputs[1].stop_reason
