"""A client that goes away aborts its requests: the engine stops generating for it and frees its blocks."""

import asyncio
import json
import random
import threading

import httpx
import pytest

from http_testing import wait_idle
from nbllm.server.bridge import cancel_on_disconnect

LONG = {"prompt": "Once upon a time", "max_tokens": 240, "ignore_eos": True, "temperature": 0}


def _generated(llm) -> int:
    return llm.get_metrics().generation_tokens_total


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
