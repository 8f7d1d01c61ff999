"""Access rules (issue 17, item 7): 401 with WWW-Authenticate, /metrics behind the key unless --metrics-public,
no CORS unless --allowed-origins, Host checked on loopback (DNS rebinding) unless --allowed-hosts, and a
stopping server that lets in-flight requests finish (--shutdown-timeout) while refusing new ones."""

import json
import threading

import httpx
import pytest
from starlette.testclient import TestClient

from http_testing import API_KEY, wait_idle
from nbllm.server import ServerOptions, build_app, serve_in_background


def test_a_401_says_how_to_authenticate(keyed_server):
    response = httpx.get(f"{keyed_server.url}/v1/models")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{keyed_server.url}/metrics").status_code == 401, "metrics need the key by default"


def test_metrics_public_opens_only_metrics(tiny_llm):
    options = ServerOptions(metrics_public=True)
    with serve_in_background(tiny_llm, api_key=API_KEY, options=options) as handle:
        assert httpx.get(f"{handle.url}/metrics").status_code == 200
        assert httpx.get(f"{handle.url}/v1/models").status_code == 401


def test_no_cors_by_default(http):
    response = http.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = http.options("/v1/completions", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_allowed_origins(tiny_llm):
    options = ServerOptions(allowed_origins='["http://app.example"]')
    with serve_in_background(tiny_llm, api_key=API_KEY, options=options) as handle:
        ok = httpx.options(f"{handle.url}/v1/completions", headers={"Origin": "http://app.example",
                                                                    "Access-Control-Request-Method": "POST"})
        other = httpx.get(f"{handle.url}/health", headers={"Origin": "http://evil.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("host, status", [("evil.example", 403), ("evil.example:80", 403), ("localhost", 200),
                                          ("127.0.0.1:8000", 200), ("[::1]:8000", 200)])
def test_host_header_is_checked_on_loopback(http, host, status):
    response = http.get("/v1/models", headers={"Host": host})
    assert response.status_code == status
    if status == 403:
        assert "--allowed-hosts" in response.json()["error"]["message"]


def test_allowed_hosts_and_non_loopback_binding(tiny_llm):
    named = TestClient(build_app(tiny_llm, options=ServerOptions(bound_host="127.0.0.1",
                                                                allowed_hosts="notebook.lan")))
    assert named.get("/health", headers={"Host": "notebook.lan:8000"}).status_code == 200
    assert named.get("/health", headers={"Host": "evil.example"}).status_code == 403
    public = TestClient(build_app(tiny_llm, options=ServerOptions(bound_host="0.0.0.0")))
    assert public.get("/health", headers={"Host": "anything.example"}).status_code == 200, "no check off loopback"
    for client in (named, public):
        client.app.state.nbllm.close()


def _stream_all(url, results):
    body = {"prompt": "Once upon a time", "max_tokens": 80, "ignore_eos": True, "stream": True,
            "return_token_ids": True}
    with httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    results.append(lines)


def test_stopping_drains_in_flight_requests(tiny_llm):
    handle = serve_in_background(tiny_llm, options=ServerOptions(shutdown_timeout=60))
    results: list = []
    reader = threading.Thread(target=_stream_all, args=(handle.url, results))
    reader.start()
    _wait_in_flight(handle)
    handle.stop()
    reader.join(60)
    assert not handle.running
    [lines] = results
    assert lines[-1] == "data: [DONE]" and not any("error" in line for line in lines)
    tokens = sum(len(c["token_ids"]) for line in lines[:-1] for c in json.loads(line[6:])["choices"])
    assert tokens == 80, "the in-flight stream finished in full"
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{handle.url}/v1/completions", json={"prompt": "Hi"}, timeout=5)
    wait_idle(tiny_llm)


def test_a_zero_shutdown_timeout_aborts_in_flight_requests(tiny_llm):
    handle = serve_in_background(tiny_llm, options=ServerOptions(shutdown_timeout=0))
    results: list = []
    reader = threading.Thread(target=lambda: _catch(_stream_all, handle.url, results))
    reader.start()
    _wait_in_flight(handle)
    handle.stop(timeout=10)
    reader.join(30)
    assert not handle.running
    wait_idle(tiny_llm)  # the cancelled request was aborted in the engine


def _wait_in_flight(handle):
    for _ in range(1000):
        if handle._state.in_flight:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the request never started")


def _catch(fn, *args):
    try:
        fn(*args)
    except httpx.HTTPError:
        pass


def test_a_stopping_server_refuses_new_generation_requests(tiny_llm):
    client = TestClient(build_app(tiny_llm))
    client.app.state.nbllm.draining = True
    refused = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == 503
    assert client.get("/v1/models").status_code == 200
    client.app.state.nbllm.close()
