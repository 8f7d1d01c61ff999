"""A small OpenAI-compatible server that is not nbllm nor vLLM, for RemoteLLM's tests (llama.cpp's server as model).

Like llama.cpp's: /v1/models says `owned_by: llamacpp` and no context window; there is
no /metrics; /tokenize reads `content` (so a vLLM-style `prompt` tokenizes to nothing)
and there is no /detokenize; every answer has one choice whatever `n` asks and no
token ids; a completion's logprobs name tokens by their text only; a plain answer has
`usage`, a stream none (llama-cpp-python ignores stream_options). The reply is the
prompt's words reversed.
Prompts steer it: "CUT" cuts a stream (or a plain response) off mid-way, "FAIL500"
answers 500. It counts the calls it gets and the most it served at once.
"""

import asyncio
import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

MODEL = "mimic"


class Counters:
    def __init__(self):
        self.calls: list[dict] = []
        self.active = 0
        self.peak = 0


def _prompt_of(body: dict) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _reply(prompt: str) -> list[str]:
    return [f"{w} " for w in reversed(prompt.split())] or ["ok"]


def build(counters: Counters, delay_s: float = 0.0) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "llamacpp"}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        content = (await request.json()).get("content", "")
        return {"tokens": [ord(c) for c in content]}

    async def generate(request: Request, chat: bool):
        body = await request.json()
        counters.calls.append(body)
        counters.active += 1
        counters.peak = max(counters.peak, counters.active)
        try:
            await asyncio.sleep(delay_s)
            prompt = _prompt_of(body)
            if "FAIL500" in prompt:
                return JSONResponse({"error": {"message": "the model crashed", "code": 500}}, status_code=500)
            words = _reply(prompt)
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                     "total_tokens": len(prompt.split()) + len(words)}
            if body.get("stream"):
                return StreamingResponse(_events(words, chat, cut="CUT" in prompt, logprobs=body.get("logprobs")),
                                         media_type="text/event-stream")
            text = "".join(words)
            choice = {"index": 0, "finish_reason": "stop",
                      **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
                      **({"logprobs": _text_logprobs(words)} if body.get("logprobs") and not chat else {})}
            payload = json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                  "created": int(time.time()), "model": MODEL, "choices": [choice], "usage": usage})
            if "CUT" in prompt:
                return StreamingResponse(_cut_body(payload), media_type="application/json")
            return Response(payload, media_type="application/json")
        finally:
            counters.active -= 1

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    return app


def _text_logprobs(words: list[str]) -> dict:
    """llama.cpp's completion logprobs: tokens named by their text, with no id to key them by."""
    return {"tokens": words, "token_logprobs": [-0.5] * len(words), "top_logprobs": [{w: -0.5} for w in words],
            "text_offset": list(range(len(words)))}


async def _events(words: list[str], chat: bool, cut: bool, logprobs):
    for i, word in enumerate(words):
        if cut and i == 2:
            raise ConnectionAbortedError("cut on purpose")  # uvicorn drops the connection mid-stream
        last = i == len(words) - 1
        choice = {"index": 0, "finish_reason": "stop" if last else None,
                  **({"delta": {"content": word}} if chat else {"text": word}),
                  **({"logprobs": _text_logprobs([word])} if logprobs and not chat else {})}
        yield f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"
        await asyncio.sleep(0)
    yield "data: [DONE]\n\n"


async def _cut_body(payload: str):
    yield payload[:len(payload) // 2]
    raise ConnectionAbortedError("cut on purpose")


class ThirdPartyServer:
    """The app above on 127.0.0.1 at a free port, in a daemon thread; `stop()` ends it."""

    def __init__(self, delay_s: float = 0.0):
        self.counters = Counters()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(build(self.counters, delay_s), log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the third-party server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
