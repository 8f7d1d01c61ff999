"""A client that goes away aborts its requests: the engine stops generating for it and frees its blocks.

The bridge between the engine and the event loop needs no thread per request: outputs
arrive through each request's deliver function, aborts are only queued.
"""

import asyncio
import json
import random
import threading

import httpx
import pytest

from http_testing import wait_idle
from nbllm.outputs import CompletionOutput, RequestOutput
from nbllm.sampling_params import SamplingParams
from nbllm.server.bridge import EngineRequests, PreparedPrompt, cancel_on_disconnect
from nbllm.streams import RequestStream

LONG = {"prompt": "Once upon a time", "max_tokens": 240, "ignore_eos": True, "temperature": 0}


def _generated(llm) -> int:
    return llm.get_stats().generation_tokens_total


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", LONG),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200, "ignore_eos": True}),
])
def test_closing_a_stream_midway_aborts(server, tiny_llm, path, body):
    before = _generated(tiny_llm)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", path, json={**body, "stream": True}) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 3:
                    break  # leaving the block closes the connection mid-stream
    idle = wait_idle(tiny_llm)
    assert idle.num_requests_running == 0 and idle.num_blocks_used == 0
    assert idle.generation_tokens_total - before < body["max_tokens"]


def test_a_plain_request_whose_client_times_out_is_aborted(server, tiny_llm):
    before = _generated(tiny_llm)
    with httpx.Client(base_url=server.url, timeout=0.1) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json={**LONG, "n": 4})
    idle = wait_idle(tiny_llm)
    assert idle.generation_tokens_total - before < 4 * LONG["max_tokens"]


def test_concurrent_streams_with_random_disconnects(server, tiny_llm):
    """32 streaming clients; half hang up early. Survivors get every token; nothing leaks."""
    rng = random.Random(0)
    plans = [rng.choice([None, 1, 3, 8]) if i % 2 else None for i in range(32)]
    results: dict[int, tuple[str, int]] = {}

    def client(i: int, hang_up_after) -> None:
        body = {"prompt": f"Story {i}:", "max_tokens": 40, "ignore_eos": True, "temperature": 0.7, "seed": i,
                "stream": True, "return_token_ids": True}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=body) as response:
                tokens, last = 0, ""
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    last = line
                    if line != "data: [DONE]":
                        tokens += sum(len(c["token_ids"]) for c in json.loads(line[6:])["choices"])
                    if hang_up_after is not None and tokens >= hang_up_after:
                        return
                results[i] = (last, tokens)

    threads = [threading.Thread(target=client, args=(i, plan)) for i, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    survivors = [i for i, plan in enumerate(plans) if plan is None]
    assert sorted(results) == survivors
    assert all(last == "data: [DONE]" and tokens == 40 for last, tokens in results.values())
    wait_idle(tiny_llm)


def test_cancel_on_disconnect_cancels_the_work_and_returns_none():
    class GoneClient:
        async def receive(self):
            return {"type": "http.disconnect"}

    cleaned_up = []

    async def work():
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.append(True)

    async def main():
        result = await cancel_on_disconnect(GoneClient(), work())
        await asyncio.sleep(0)  # one loop turn: the cancelled work runs its finally-block
        return result

    assert asyncio.run(main()) is None and cleaned_up == [True]


class QueueingEngine:
    """Takes requests and records aborts; the test delivers the outputs, from a thread of its own."""

    def __init__(self, reject_at: int = -1):
        self.delivers, self.aborted, self._reject_at = {}, [], reject_at

    def submit(self, prompt, sampling_params=None, request_id=None, deliver=None):
        if len(self.delivers) == self._reject_at:
            raise ValueError("prompt is too long")
        self.delivers[request_id] = deliver
        return RequestStream(request_id, deliver)

    def abort(self, request_ids):
        self.aborted.extend(request_ids)


def _output(request_id: str, finished: bool) -> RequestOutput:
    completion = CompletionOutput(0, "x", [5], None, None, "stop" if finished else None)
    return RequestOutput(request_id, None, [1], None, [completion], finished)


PROMPTS = [PreparedPrompt("p", [1], SamplingParams()) for _ in range(50)]


def test_requests_take_no_thread_and_leaving_aborts_the_unfinished():
    engine = QueueingEngine()

    async def main():
        threads = threading.active_count()
        requests = EngineRequests.submit(engine, PROMPTS, "cmpl-x")
        assert threading.active_count() == threads, "no thread per request"
        feeder = threading.Thread(target=lambda: (engine.delivers["cmpl-x-0"](_output("cmpl-x-0", True)),
                                                  engine.delivers["cmpl-x-7"](_output("cmpl-x-7", False))))
        feeder.start()
        feeder.join()
        outputs = requests.outputs()
        received = [await outputs.__anext__(), await outputs.__anext__()]
        await outputs.aclose()  # the client went away
        return received

    received = asyncio.run(main())
    assert [(index, output.finished) for index, output in received] == [(0, True), (7, False)]
    assert sorted(engine.aborted) == sorted(f"cmpl-x-{i}" for i in range(1, 50)), "all but the finished one"
    engine.delivers["cmpl-x-7"](_output("cmpl-x-7", True))  # after the event loop closed: dropped quietly


def test_bad_input_aborts_the_prompts_already_submitted():
    engine = QueueingEngine(reject_at=3)

    async def main():
        with pytest.raises(ValueError, match="too long"):
            EngineRequests.submit(engine, PROMPTS, "cmpl-y")

    asyncio.run(main())
    assert engine.aborted == ["cmpl-y-0", "cmpl-y-1", "cmpl-y-2"]


def test_a_beam_search_whose_client_leaves_is_aborted(server, tiny_llm):
    # 16 beams for 240 steps take well over the client's 0.2 s on any machine: the client leaves mid-search
    body = {"prompt": "Once upon a time", "n": 16, "max_tokens": 240, "ignore_eos": True, "use_beam_search": True}
    with httpx.Client(base_url=server.url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json=body)
    idle = wait_idle(tiny_llm)
    assert idle.num_requests_running == 0 and idle.num_blocks_used == 0
