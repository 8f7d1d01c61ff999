"""Response bodies of the OpenAI API, with vLLM's extra fields.

A whole response is sent with every field (unset ones as null), as vLLM does; a
stream chunk leaves out what is unset (`chunk_json`), so a client that extends a
list with a chunk's `token_ids` never meets a null.
"""

from __future__ import annotations

import time
from typing import Literal, Optional, Union

from pydantic import BaseModel, Field

from nbllm.server.protocol import _Model


def chunk_json(chunk: BaseModel) -> str:
    """A stream chunk as JSON, fields that are None left out."""
    return chunk.model_dump_json(exclude_none=True)


def _now() -> int:
    return int(time.time())


class PromptTokensDetails(_Model):
    cached_tokens: int = 0


class UsageInfo(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class PromptLogprob(_Model):
    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


PromptLogprobs = list[Optional[dict[int, PromptLogprob]]]


class CompletionLogProbs(_Model):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)


class CompletionChoice(_Model):
    index: int
    text: str
    logprobs: Optional[CompletionLogProbs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    token_ids: Optional[list[int]] = None
    prompt_token_ids: Optional[list[int]] = None
    prompt_logprobs: Optional[PromptLogprobs] = None


class CompletionResponse(_Model):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None
    metrics: Optional[dict[str, Optional[float]]] = None  # --enable-per-request-metrics


class ChatLogProb(_Model):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatLogProbsContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatLogProbs(_Model):
    content: Optional[list[ChatLogProbsContent]] = None


class ChatMessage(_Model):
    role: str
    content: Optional[str] = None


class ChatChoice(_Model):
    index: int
    message: ChatMessage
    logprobs: Optional[ChatLogProbs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    token_ids: Optional[list[int]] = None


class ChatCompletionResponse(_Model):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_token_ids: Optional[list[int]] = None
    prompt_logprobs: Optional[PromptLogprobs] = None
    metrics: Optional[dict[str, Optional[float]]] = None  # --enable-per-request-metrics


class DeltaMessage(_Model):
    role: Optional[str] = None
    content: Optional[str] = None


class ChatStreamChoice(_Model):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChatLogProbs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    token_ids: Optional[list[int]] = None


class ChatCompletionChunk(_Model):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatStreamChoice]
    usage: Optional[UsageInfo] = None
    prompt_token_ids: Optional[list[int]] = None
    metrics: Optional[dict[str, Optional[float]]] = None


class ModelCard(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "nbllm"
    root: Optional[str] = None
    parent: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(_Model):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeResponse(_Model):
    prompt: str


class ErrorInfo(_Model):
    message: str
    type: str
    param: Optional[str] = None
    code: int


class ErrorResponse(_Model):
    error: ErrorInfo
