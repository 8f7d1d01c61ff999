"""`nbllm serve` as a real process: it binds 127.0.0.1, answers the API, and stops on SIGTERM."""

import socket
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command(tiny_llama_path):
    port = _free_port()
    command = [sys.executable, "-m", "nbllm.server.cli", "serve", str(tiny_llama_path), "--port", str(port),
               "--served-model-name", "tiny-cli", "--max-model-len", "128", "--block-size", "8",
               "--kv-cache-memory-bytes", str(1 << 22), "--log-level", "warning", "--api-key", "k"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        models = httpx.get(f"{url}/v1/models", headers=headers).json()
        assert models["data"][0]["id"] == "tiny-cli" and models["data"][0]["max_model_len"] == 128
        body = httpx.post(f"{url}/v1/completions", headers=headers,
                          json={"model": "tiny-cli", "prompt": "Hello", "max_tokens": 3, "ignore_eos": True}).json()
        assert body["usage"]["completion_tokens"] == 3
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown


def test_bad_model_path_exits_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nbllm.server.cli", "serve", str(tmp_path / "missing"),
                             "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "nbllm serve:" in result.stderr


def test_server_flags_become_server_options():
    from nbllm.server.cli import _parser, server_options

    args = _parser().parse_args(["serve", "--host", "0.0.0.0", "--max-sequences-per-request", "64",
                                 "--trust-request-chat-template", "--allowed-origins", '["http://a.example"]',
                                 "--allowed-hosts", "a.lan,b.lan", "--shutdown-timeout", "0", "--max-logprobs", "-1"])
    options = server_options(args)
    assert options.max_sequences_per_request == 64 and options.trust_request_chat_template
    assert options.allowed_origins == ("http://a.example",) and options.allowed_hosts == ("a.lan", "b.lan")
    assert options.bound_host == "0.0.0.0" and options.shutdown_timeout == 0 and options.max_messages == 2048
    assert args.max_logprobs == -1, "vLLM's --max-logprobs is an engine option"
