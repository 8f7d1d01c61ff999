"""Submitting a cell's or a column's prompts as one batch, each output tied to its prompt.

`submit_prompts` starts one request per prompt through `EngineClient.submit` (all of
them before any output is read, so continuous batching serves them together) and
returns an nbllm.batch Batch: `collect` it for final outputs or `drain` it for
outputs as they come. Chat prompts are one-turn conversations sent with
`EngineClient.submit_chat`: a local engine renders its chat template, a remote server
its own (so servers without a /tokenize endpoint work too).
"""

from __future__ import annotations

from typing import Optional, Sequence

from nbllm.batch import Batch, submit_all
from nbllm.inputs import PromptType
from nbllm.protocol import EngineClient
from nbllm.sampling_params import SamplingParams


def conversation(prompt: str, system: Optional[str] = None) -> list[dict]:
    """A one-turn chat: an optional system message and the prompt as the user's message."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def engine_prompts(llm: EngineClient, texts: Sequence[str], chat: bool = False,
                   system: Optional[str] = None) -> list[PromptType]:
    """The texts as prompts, or, with `chat`, as one-turn chats rendered by the engine's template (beam search)."""
    if not chat:
        return list(texts)
    return llm.render_chat_prompts([conversation(text, system) for text in texts])


def submit_prompts(llm: EngineClient, texts: Sequence[str], params: SamplingParams, chat: bool = False,
                   system: Optional[str] = None) -> Batch:
    """One request per text, all submitted before any is read; bad input raises here (nothing is left running)."""
    if chat:
        return submit_all(llm, len(texts), lambda i, deliver: llm.submit_chat(
            conversation(texts[i], system), params, deliver=deliver))
    return submit_all(llm, len(texts), lambda i, deliver: llm.submit(texts[i], params, deliver=deliver))
