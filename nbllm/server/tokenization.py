"""vLLM's POST /tokenize and POST /detokenize, and GET /tokenizer_info, with the engine's own tokenizer.

/tokenize takes either `prompt` (special tokens added by default) or `messages`
(rendered by the chat template, which writes its own special tokens), under the same
limits and template rules as the generation routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from nbllm.server.chat import check_tools, render
from nbllm.server.errors import bad_request
from nbllm.server.protocol import DetokenizeRequest, TokenizeRequest
from nbllm.server.responses import DetokenizeResponse, TokenizeResponse
from nbllm.server.state import ServerState


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("send exactly one of prompt or messages", "prompt")
        if body.messages is not None:
            check_tools(body)
            text, ids = await render(state, body.messages, body)
            if body.add_special_tokens:
                ids = await state.run(lambda: state.tokenizer.encode(text, add_special_tokens=True))
        else:
            state.check_text(body.prompt, "prompt")
            add_special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = await state.run(lambda: state.tokenizer.encode(body.prompt, add_special_tokens=add_special))
        strs = await state.run(state.tokenizer.convert_ids_to_tokens, ids) if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)

    @router.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        state.check_model(body.model)
        vocab = len(state.tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"tokens has ids outside the vocabulary [0, {vocab}): {bad[:5]}", "tokens")
        return DetokenizeResponse(prompt=await state.run(state.tokenizer.decode, body.tokens))

    @router.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        """vLLM's tokenizer description: its class, vocabulary size, special tokens and chat template."""
        return await state.run(_tokenizer_info, state.tokenizer, state.max_model_len)

    return router


def _tokenizer_info(tokenizer: Any, max_model_len: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    init = getattr(tokenizer, "init_kwargs", None)  # a transformers tokenizer's settings; others have none
    if isinstance(init, dict):
        info.update({key: value for key, value in init.items() if isinstance(value, (str, int, float, bool))})
    info.update(tokenizer_class=type(tokenizer).__name__, model_max_length=max_model_len, vocab_size=len(tokenizer))
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str):
        info["chat_template"] = chat_template
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, str):
            info[name] = value
    return info
