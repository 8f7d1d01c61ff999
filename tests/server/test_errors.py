"""Bad input gets OpenAI's error JSON with the right status and the field named; never a 500."""

import httpx
import pytest

from http_testing import API_KEY, MODEL

CHAT = [{"role": "user", "content": "Hi"}]


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 5}, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "min_p": 2}, "min_p"),
    ("/v1/completions", {"prompt": "x", "top_k": -5}, "top_k"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "n": 10_000}, "n"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [10**6]}, "stop_token_ids"),
    ("/v1/completions", {"prompt": [10**6]}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "x", "min_tokens": 20, "max_tokens": 5}, "min_tokens"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": "/etc/passwd"}, "chat_template"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": "{{ raise_exception('no') }}"}, "chat_template"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "add_generation_prompt": True, "continue_final_message": True},
     "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "seed": 2**70}, "seed"),
    ("/tokenize", {}, "prompt"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
def test_invalid_values_are_400_naming_the_field(http, path, body, param):
    error = _error(http.post(path, json=body), 400)
    assert error["param"] == param, error


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "word " * 300}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 1000}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 300}]}),
])
def test_over_long_prompt_is_400(http, path, body):
    error = _error(http.post(path, json=body), 400)
    assert "maximum context length" in error["message"]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"null", b"\xff\xfe"])
def test_malformed_bodies_are_400(http, content):
    response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    _error(response, 400)


def test_unknown_model_is_404(http):
    error = _error(http.post("/v1/chat/completions", json={"model": "gpt-17", "messages": CHAT}), 404)
    assert error["param"] == "model" and "gpt-17" in error["message"]
    _error(http.post("/tokenize", json={"model": "gpt-17", "prompt": "x"}), 404)


def test_unknown_route_is_404_in_openai_shape(http):
    _error(http.get("/v1/nothing"), 404)


def test_api_key_on_every_endpoint_but_health(keyed_server):
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                             ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize")):
            _error(client.request(method, path, json={}), 401)
            _error(client.request(method, path, json={}, headers={"Authorization": "Bearer nope"}), 401)
        ok = client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                         headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
