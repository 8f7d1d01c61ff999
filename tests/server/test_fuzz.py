"""Property-based fuzzing of the live server against its own OpenAPI schema: no 5xx, no leaked blocks.

Schemathesis generates valid (positive) and invalid (negative) requests for every
operation. Generation length and n are capped, so the fuzz explores the API
surface rather than waiting on long generations.
"""

import pytest

from http_testing import wait_idle

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)

MAX_TOKENS, MAX_N = 8, 2
POSTS = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
CASES = [(path, "POST", mode) for path in POSTS for mode in ("positive", "negative")] + \
    [(path, "GET", "positive") for path in ("/v1/models", "/metrics", "/health")]  # nothing to get wrong in a GET


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _cap_generation(body: object) -> None:
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool) and body["n"] > MAX_N:
        body["n"] = MAX_N


@pytest.mark.parametrize("path, method, mode", CASES)
def test_no_server_errors(api_schema, tiny_llm, path, method, mode):
    operation = api_schema[path][method]
    examples = 1 if method == "GET" else 30

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        _cap_generation(case.body)
        response = case.call(timeout=60)
        assert response.status_code < 500, f"{method} {path} {case.body!r} -> {response.text[:500]}"
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            error = response.json()["error"]
            assert error["code"] == response.status_code and error["message"]

    check()
    wait_idle(tiny_llm)
