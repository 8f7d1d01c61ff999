"""The thin client stays thin: importing nbllm, its data types or RemoteLLM loads no torch (nor the server's
FastAPI), RemoteLLM is an EngineClient, and aborting a remote request before its first token ends it at once."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from nbllm.client import RemoteLLM
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams

HEAVY = ("torch", "fastapi", "uvicorn", "nbllm.engine", "nbllm.llm", "nbllm.models", "nbllm.layers", "nbllm.server")


@pytest.mark.parametrize("statement", [
    "import nbllm", "from nbllm.client import RemoteLLM", "from nbllm import RemoteLLM, SamplingParams, EngineClient",
    "from nbllm import RequestOutput, EngineConfig, RequestStream, load_chat_template"])
def test_importing_loads_nothing_heavy(statement):
    check = f"import sys; {statement}; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", f"{statement} imported {result.stdout.strip()}"


def test_llm_still_loads_on_first_use():
    check = "import sys, nbllm; assert 'torch' not in sys.modules; from nbllm import LLM; print(LLM.__module__)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "nbllm.llm"


def test_remote_llm_is_an_engine_client():
    def models(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 2048}]})

    with RemoteLLM("http://fake/v1", transport=httpx.MockTransport(models)) as remote:
        assert isinstance(remote, EngineClient)
        assert (remote.model_name, remote.max_model_len, remote.is_running) == ("m", 2048, True)
    assert not remote.is_running


# ----------------------------------------------------------------------------- abort before the first token
class SilentStream(http.server.BaseHTTPRequestHandler):
    """Answers a streamed POST with the headers of an event stream, then sends nothing until the client leaves
    (RemoteLLM's connection probe, which streams nothing, gets short answers)."""

    timeout = 10  # seconds a handler waits at most, so a failing test cannot hang the server
    arrived: threading.Event
    left: threading.Event

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/v1/models" else 404, {"data": [{"id": "m"}]})

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if not body.get("stream"):
            self._answer(404, {"detail": "Not Found"})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()
        self.arrived.set()
        try:
            if self.rfile.read(1) == b"":  # the client shut its side: the request is over
                self.left.set()
        except OSError:
            self.left.set()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def silent_server():
    handler = type("Handler", (SilentStream,), {"arrived": threading.Event(), "left": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


def test_abort_before_the_first_token_ends_the_stream_and_closes_the_connection(silent_server):
    url, handler = silent_server
    with RemoteLLM(url, model="m", max_retries=0) as remote:
        stream = remote.submit("Hello", SamplingParams(max_tokens=8))
        assert handler.arrived.wait(10), "the request reached the server"
        started = time.monotonic()
        remote.abort(stream.request_id)
        last = stream.result()
        assert time.monotonic() - started < 1.0
        assert last.finished and last.outputs[0].finish_reason == "abort" and last.outputs[0].token_ids == []
        assert handler.left.wait(2), "the server saw the client close the stream"


def test_abort_of_a_request_still_queued_never_sends_it(silent_server):
    url, handler = silent_server
    with RemoteLLM(url, model="m", max_concurrency=1, max_retries=0) as remote:
        first = remote.submit("Hello", SamplingParams(max_tokens=8))
        assert handler.arrived.wait(10)
        handler.arrived.clear()
        queued = remote.submit("World", SamplingParams(max_tokens=8), request_id="queued")
        remote.abort("queued")
        assert queued.result().outputs[0].finish_reason == "abort"
        first.close()  # aborts the first too, which frees the only slot
        assert first.finished and handler.left.wait(2)
        assert not handler.arrived.wait(0.3), "an aborted request is never sent"


def test_the_request_body_carries_every_set_field():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m", "owned_by": "vllm"}]})
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})

    params = SamplingParams(temperature=0.5, top_k=7, seed=3, stop=["\n"], min_tokens=2, logprobs=1,
                            logit_bias={5: -1.0}, extra_args={"tag": "a"}, flat_logprobs=True)
    with RemoteLLM("http://fake/v1", model="m", transport=httpx.MockTransport(handler)) as remote:
        remote.generate("Hi", params, use_tqdm=False)
        with pytest.raises(ValueError, match="logits_processors"):
            remote.generate("Hi", SamplingParams(logits_processors=[lambda ids, logits: logits]), use_tqdm=False)
    [body] = [b for b in bodies if b.get("prompt") == "Hi"]  # not the connection probe's
    assert body["temperature"] == 0.5 and body["top_k"] == 7 and body["seed"] == 3 and body["stop"] == ["\n"]
    assert body["min_tokens"] == 2 and body["logprobs"] == 1 and body["logit_bias"] == {"5": -1.0}
    assert body["stream"] is False and body["max_tokens"] == 16 and body["n"] == 1
    assert body["vllm_xargs"] == {"tag": "a"}
    assert not {"detokenize", "output_kind", "flat_logprobs", "extra_args", "min_p", "bad_words"} & set(body)
