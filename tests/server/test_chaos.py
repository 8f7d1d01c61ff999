"""One request's failure inside the engine ends that request alone (issue 17, item 1).

A proxy engine injects failures: a prompt with "CHAOS" gets a logits processor that
raises on its third step, and a beam search on such a prompt gets a length penalty
that overflows the beam score inside the engine step. Streams running beside them
finish with every token and no error event; the failed requests get an error (an SSE
error event, or a 500 that keeps the connection); the engine ends idle.
"""

import json
import threading
from dataclasses import replace

import httpx
import pytest

from http_testing import wait_idle
from nbllm.server import serve_in_background

LONG = 40


class ChaosEngine:
    """The tiny engine, with failures injected into requests whose prompt says CHAOS."""

    def __init__(self, llm):
        self._llm = llm

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def submit(self, prompt, sampling_params=None, request_id=None, deliver=None):
        if "CHAOS" in (prompt.get("prompt") or ""):
            calls = []

            def explode(output_ids, logits):
                calls.append(1)
                if len(calls) == 3:
                    raise RuntimeError("injected failure in this request's logits processor")
                return logits

            sampling_params = sampling_params.updated(logits_processors=[explode])
        return self._llm.submit(prompt, sampling_params, request_id=request_id, deliver=deliver)

    def submit_beam_search(self, prompt, params, request_id=None, deliver=None):
        if "CHAOS" in (prompt.get("prompt") or ""):
            params = replace(params, length_penalty=1e308)  # past the server's check: overflows in the step
        return self._llm.submit_beam_search(prompt, params, request_id=request_id, deliver=deliver)


@pytest.fixture(scope="module")
def chaos_server(tiny_llm):
    handle = serve_in_background(ChaosEngine(tiny_llm))
    yield handle
    handle.stop()


def _stream(url, prompt, results, key):
    body = {"prompt": prompt, "max_tokens": LONG, "ignore_eos": True, "temperature": 0.8, "seed": 1,
            "stream": True, "return_token_ids": True}
    events = []
    with httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
    results[key] = events


def test_one_failing_request_leaves_the_others_untouched(chaos_server, tiny_llm):
    results = {}
    threads = [threading.Thread(target=_stream, args=(chaos_server.url, f"Story {i}:", results, i)) for i in range(3)]
    threads.append(threading.Thread(target=_stream, args=(chaos_server.url, "CHAOS story", results, "chaos")))
    with httpx.Client(base_url=chaos_server.url, timeout=60) as client:
        for thread in threads:
            thread.start()
        beam = client.post("/v1/completions", json={"prompt": "CHAOS beams", "n": 2, "max_tokens": 6,
                                                    "use_beam_search": True})
        plain = client.post("/v1/completions", json={"prompt": "CHAOS plain", "max_tokens": LONG,
                                                     "ignore_eos": True})
        for thread in threads:
            thread.join(60)
        after = client.post("/v1/completions", json={"prompt": "after", "max_tokens": 2})  # the same connection
    for i in range(3):
        events = results[i]
        assert not any("error" in e for e in events), events[-1]
        assert sum(len(c["token_ids"]) for e in events for c in e["choices"]) == LONG
        assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert "injected failure" in results["chaos"][-1]["error"]["message"]
    assert beam.status_code == 500 and "Overflow" in beam.json()["error"]["message"]
    assert plain.status_code == 500 and "injected failure" in plain.json()["error"]["message"]
    assert after.status_code == 200
    wait_idle(tiny_llm)


def test_the_server_refuses_an_overflowing_length_penalty_up_front(http):
    response = http.post("/v1/completions", json={"prompt": "Hi", "n": 2, "max_tokens": 4, "use_beam_search": True,
                                                  "length_penalty": 1e308})
    assert response.status_code == 400 and response.json()["error"]["param"] == "length_penalty"
