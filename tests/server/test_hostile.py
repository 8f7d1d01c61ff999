"""The hostile inputs of issue 17 as a table: each is a 4xx naming the field (or the limit), never a 5xx,
and all of them go over one keep-alive connection, which survives every answer.

The table runs against the session's default server (default limits); the limits
that need a small setting to test cheaply run against a server with small limits.
"""

import json
import time

import httpx
import pytest

from http_testing import wait_idle
from nbllm.server import ServerOptions, serve_in_background

CHAT = [{"role": "user", "content": "Hi"}]
BOMB = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]

# (path, body: a dict, or JSON text for values JSON itself cannot hold but Python's parser takes), status, param
HOSTILE = [
    ("/v1/completions", '{"prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", '{"prompt": "x", "temperature": Infinity}', 400, "temperature"),
    ("/v1/completions", '{"prompt": "x", "temperature": 1e400}', 400, "temperature"),
    ("/v1/completions", '{"prompt": "x", "repetition_penalty": NaN}', 400, "repetition_penalty"),
    ("/v1/completions", '{"prompt": "x", "repetition_penalty": -Infinity}', 400, "repetition_penalty"),
    ("/v1/completions", '{"prompt": "x", "top_p": NaN}', 400, "top_p"),
    ("/v1/completions", '{"prompt": "x", "logit_bias": {"5": NaN}}', 400, "logit_bias"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "presence_penalty": NaN}', 400,
     "presence_penalty"),
    ("/v1/completions", '{"prompt": "x", "n": 2, "use_beam_search": true, "length_penalty": NaN}', 400,
     "length_penalty"),
    ("/v1/completions", '{"prompt": "x", "n": 2, "use_beam_search": true, "length_penalty": Infinity}', 400,
     "length_penalty"),
    ("/v1/completions", {"prompt": "x", "n": 2, "use_beam_search": True, "length_penalty": 1e308}, 400,
     "length_penalty"),
    ("/v1/completions", '{"prompt": "x\\ud800"}', 400, "prompt"),
    ("/v1/completions", '{"prompt": ["ok", "x\\udfff y"]}', 400, "prompt"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages"),
    ("/v1/completions", '{"prompt": "x", "stop": ["\\ud800"]}', 400, "stop"),
    ("/v1/completions", '{"prompt": "x", "bad_words": ["\\ud800"]}', 400, "bad_words"),
    ("/tokenize", '{"prompt": "\\ud800"}', 400, "prompt"),
    ("/v1/completions", {"prompt": ["p"] * 100, "n": 128}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "n": 10**6}, 400, "n"),
    ("/v1/completions", {"prompt": "word " * 2_000_000}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 200_000}, 400, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": BOMB}, 400, "chat_template"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template_kwargs": {"chat_template": BOMB}}, 400,
     "chat_template"),
    ("/tokenize", {"messages": CHAT, "chat_template": BOMB}, 400, "chat_template"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": TOOLS}, 400, "tool_choice"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": TOOLS, "tool_choice": "required"}, 400, "tool_choice"),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "auto"}, 400, "tool_choice"),
    ("/v1/chat/completions", {"messages": CHAT, "functions": [{"name": "f"}]}, 400, "functions"),
    ("/v1/chat/completions", {"messages": CHAT, "audio": {"voice": "x"}}, 400, "audio"),
    ("/v1/chat/completions", {"messages": CHAT, "modalities": ["text", "audio"]}, 400, "modalities"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "structural_tag"}}, 400,
     "response_format"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ("/v1/completions", {"prompt": "x", "structured_outputs": {"regex": "[.*"}}, 400, "structured_outputs"),
    ("/v1/completions", {"prompt": "x", "structured_outputs": {"backend": "outlines", "regex": "a"}}, 400,
     "structured_outputs"),
    ("/v1/completions", {"prompt": "x", "guided_regex": "a", "response_format": {"type": "json_object"}}, 400,
     "guided_regex"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "prompt_logprobs": -1}, 400, "prompt_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": -1}, 400, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "logprob_token_ids": [1]}, 400, "logprob_token_ids"),
    ("/v1/completions", {"prompt": "x", "logprobs": 1, "logprob_token_ids": []}, 400, "logprob_token_ids"),
    ("/v1/completions", {"prompt": "x", "logprobs": 1, "logprob_token_ids": [10**6]}, 400, "logprob_token_ids"),
    ("/v1/completions", {"prompt": [1, 2, 3], "truncate_prompt_tokens": 10**6}, 400, "truncate_prompt_tokens"),
    ("/v1/completions", {"prompt": [1, 2, 3], "truncation_side": "left"}, 400, "truncation_side"),
    ("/v1/completions", {"prompt": [[1, 2], []]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**6]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "seed": 2**70}, 400, "seed"),
    ("/v1/completions", '{"prompt": "x", "n": 1e999}', 400, "n"),
    ("/v1/completions", "[]", 400, None),
    ("/v1/completions", '{"prompt": "x", "stream": true, "n": 2, "use_beam_search": true}', 400, "use_beam_search"),
    ("/invocations", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/invocations", {"nothing": 1}, 400, "messages"),
]


@pytest.fixture(scope="module")
def one_connection(server):
    """A client that sends everything over a single keep-alive connection."""
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        yield client


def _peer(response: httpx.Response) -> tuple:
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.mark.parametrize("path, body, status, param", HOSTILE, ids=[f"{i}-{row[0]}" for i, row in enumerate(HOSTILE)])
def test_hostile_input_is_a_4xx_naming_the_field(one_connection, tiny_llm, path, body, status, param):
    start = time.monotonic()
    content = body if isinstance(body, str) else json.dumps(body)
    response = one_connection.post(path, content=content, headers={"content-type": "application/json"})
    elapsed = time.monotonic() - start
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param, error
    assert elapsed < 30, f"{path} took {elapsed:.1f}s to refuse"
    wait_idle(tiny_llm)


def test_the_connection_survived_the_whole_table(one_connection):
    first = one_connection.get("/v1/models")
    second = one_connection.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert second.status_code == 200 and _peer(first) == _peer(second)
    assert "close" not in second.headers.get("connection", "")


def test_a_500_keeps_the_connection(tiny_llm):
    class Broken:
        """An engine whose submit has a bug (not the client's fault): a 500."""

        def __init__(self, llm):
            self._llm = llm

        def __getattr__(self, name):
            return getattr(self._llm, name)

        def submit(self, *args, **kwargs):
            raise RuntimeError("a bug")

    with serve_in_background(Broken(tiny_llm)) as handle:
        with httpx.Client(base_url=handle.url, timeout=30, limits=httpx.Limits(max_connections=1)) as client:
            failed = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            after = client.get("/v1/models")
            assert _peer(failed) == _peer(after), "the same connection answered again"
    assert failed.status_code == 500 and failed.json()["error"]["code"] == 500
    assert after.status_code == 200 and "close" not in failed.headers.get("connection", "")


# ------------------------------------------------------------------------------------------- small limits
@pytest.fixture(scope="module")
def limited(tiny_llm):
    options = ServerOptions(max_request_bytes=20_000, max_sequences_per_request=8, max_messages=4,
                            max_prompt_chars_per_token=2, trust_request_chat_template=True, chat_template_timeout=0.5)
    with serve_in_background(tiny_llm, options=options) as handle:
        with httpx.Client(base_url=handle.url, timeout=60) as client:
            yield client


@pytest.mark.parametrize("path, body, status, param, flag", [
    ("/v1/completions", {"prompt": "x" * 30_000}, 413, None, "--max-request-bytes"),
    ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, 400, "n", "--max-sequences-per-request"),
    ("/v1/completions", {"prompt": "a", "n": 4, "use_beam_search": True, "max_tokens": 2}, 200, None, None),
    ("/v1/chat/completions", {"messages": CHAT * 5}, 400, "messages", "--max-messages"),
    ("/v1/completions", {"prompt": "word " * 200}, 400, "prompt", "--max-prompt-chars-per-token"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": BOMB}, 400, "messages", "--chat-template-timeout"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": "{{ 'x' * 10**10 }}"}, 400, "messages",
     "--chat-template-memory-bytes"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template": "{{ 'x' * 600 }}"}, 400, "messages",
     "context window"),
])
def test_each_limit_names_its_flag(limited, tiny_llm, path, body, status, param, flag):
    response = limited.post(path, json=body)
    assert response.status_code == status, response.text[:300]
    if status != 200:
        error = response.json()["error"]
        assert error["param"] == param and flag in error["message"], error
    wait_idle(tiny_llm)


def test_a_runaway_template_is_stopped_and_others_keep_being_served(limited, tiny_llm):
    start = time.monotonic()
    bomb = limited.post("/v1/chat/completions", json={"messages": CHAT, "chat_template": BOMB})
    took = time.monotonic() - start
    ok = limited.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3})
    assert bomb.status_code == 400 and ok.status_code == 200
    print(f"runaway template answered in {took:.2f}s (limit 0.5s)")
    assert took < 10
