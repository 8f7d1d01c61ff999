"""Servers for the HTTP tests: the shared tiny engine served on 127.0.0.1 at a free port.

Each server is stopped through its own handle at teardown. Tests leave the engine
idle with every block free (`wait_idle` checks it).
"""

import httpx
import pytest

from http_testing import API_KEY, MODEL, wait_idle
from nbllm.server import ServerOptions, serve_in_background


@pytest.fixture(scope="session")
def server(tiny_llm):
    handle = serve_in_background(tiny_llm, model_name=MODEL)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def keyed_server(tiny_llm):
    handle = serve_in_background(tiny_llm, model_name=MODEL, api_key=API_KEY)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def trusting_server(tiny_llm):
    """A server that accepts chat templates from requests (rendered under a short time limit)."""
    options = ServerOptions(trust_request_chat_template=True, chat_template_timeout=1.0)
    handle = serve_in_background(tiny_llm, model_name=MODEL, options=options)
    yield handle
    handle.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _engine_left_idle(request):
    """Every server test leaves the shared engine idle with all blocks free."""
    yield
    if "tiny_llm" in request.fixturenames or "server" in request.fixturenames:
        wait_idle(request.getfixturevalue("tiny_llm"))
