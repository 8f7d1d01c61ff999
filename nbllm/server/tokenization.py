"""vLLM's POST /tokenize and POST /detokenize, with the engine's own tokenizer.

/tokenize takes either `prompt` (special tokens added by default) or `messages`
(rendered by the chat template, which writes its own special tokens).
"""

from __future__ import annotations

from fastapi import APIRouter

from nbllm.server.chat import render
from nbllm.server.errors import bad_request
from nbllm.server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from nbllm.server.state import ServerState


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("send exactly one of prompt or messages", "prompt")
        return await state.run(_tokenize, state, body)

    @router.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        state.check_model(body.model)
        vocab = len(state.tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"tokens has ids outside the vocabulary [0, {vocab}): {bad[:5]}", "tokens")
        return DetokenizeResponse(prompt=await state.run(state.tokenizer.decode, body.tokens))

    return router


def _tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    if body.messages is not None:
        rendered = render(state, body.messages, body)
        ids = rendered["prompt_token_ids"]
        if body.add_special_tokens:
            ids = state.tokenizer.encode(rendered["prompt"], add_special_tokens=True)
    else:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = state.tokenizer.encode(body.prompt, add_special_tokens=add_special)
    strs = state.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)
