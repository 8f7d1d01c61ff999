"""Request and response bodies of the OpenAI API, with vLLM's extra fields.

Field names, defaults and response shapes follow OpenAI and vLLM, so the official
`openai` client and tools written for vLLM work unchanged. Requests only check
types here; values are checked where they become SamplingParams (sampling.py).
Unknown request fields are ignored, as OpenAI and vLLM do.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# Integers the engine turns into tensors must fit int64; larger ones are a 400, not a failed step.
Int = Annotated[int, Field(ge=-2**63, lt=2**63)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------------------- requests
class StreamOptions(_Model):
    include_usage: Optional[bool] = True


class SamplingRequest(_Model):
    """Fields that /v1/completions and /v1/chat/completions share; None means "the model's default"."""

    model: Optional[str] = None
    n: Optional[Int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    seed: Optional[Int] = None
    stop: Union[str, list[str], None] = None
    logit_bias: Optional[dict[str, float]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # vLLM's extra sampling parameters
    top_k: Optional[Int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    stop_token_ids: Optional[list[Int]] = None
    bad_words: Optional[list[str]] = None
    allowed_token_ids: Optional[list[Int]] = None
    ignore_eos: bool = False
    min_tokens: Int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: Optional[Int] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    return_token_ids: Optional[bool] = None
    return_tokens_as_token_ids: Optional[bool] = None


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[Int], list[list[Int]]]
    max_tokens: Optional[Int] = 16
    echo: Optional[bool] = False
    logprobs: Optional[Int] = None
    suffix: Optional[str] = None
    add_special_tokens: bool = True


class ContentPart(_Model):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class ChatMessageParam(_Model):
    """One message; extra keys (name, tool_call_id, ...) are passed on to the chat template."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[ContentPart], None] = None


class ChatTemplateFields(_Model):
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class ChatCompletionRequest(SamplingRequest, ChatTemplateFields):
    messages: list[ChatMessageParam]
    max_tokens: Optional[Int] = None
    max_completion_tokens: Optional[Int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[Int] = None


class TokenizeRequest(ChatTemplateFields):
    """vLLM's /tokenize: either `prompt` (a completion) or `messages` (a chat)."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessageParam]] = None
    add_special_tokens: Optional[bool] = None
    return_token_strs: Optional[bool] = False


class DetokenizeRequest(_Model):
    model: Optional[str] = None
    tokens: list[Int]


# ---------------------------------------------------------------------------------------- responses
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


class DeltaMessage(_Model):
    role: Optional[str] = None
    content: Optional[str] = None

    @model_serializer(mode="wrap")
    def _only_present(self, handler: Any) -> dict:
        return {key: value for key, value in handler(self).items() if value is not None}


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
