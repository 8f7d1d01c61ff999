"""Request bodies of the OpenAI API, with vLLM's extra fields (responses are in responses.py).

Field names and defaults follow OpenAI and vLLM, so the official `openai` client and
tools written for vLLM work unchanged. Requests only check types here; values are
checked where they become SamplingParams (sampling.py). Unknown fields are ignored, as
OpenAI and vLLM do; known fields that ask for something this server does not do
(tools, audio, ...) are declared so that the routes can refuse them with a 400
naming the field instead of dropping them silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# Integers the engine turns into tensors must fit int64; larger ones are a 400, not a failed step.
Int = Annotated[int, Field(ge=-2**63, lt=2**63)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Model):
    include_usage: Optional[bool] = None  # vLLM's default: no usage chunk unless asked for
    continuous_usage_stats: Optional[bool] = None  # usage on every chunk


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
    response_format: Optional[dict[str, Any]] = None
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
    logprob_token_ids: Optional[list[Int]] = None
    truncate_prompt_tokens: Optional[Int] = None
    truncation_side: Optional[Literal["left", "right"]] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Union[str, dict[str, Any], None] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_whitespace_pattern: Optional[str] = None
    guided_decoding_backend: Optional[str] = None  # accepted for compatibility; the engine has one backend
    vllm_xargs: Optional[dict[str, Any]] = None  # vLLM's extra_args


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[Int], list[list[Int]], None] = None
    max_tokens: Optional[Int] = 16
    echo: Optional[bool] = False
    logprobs: Optional[Int] = None
    suffix: Optional[str] = None
    best_of: Optional[Int] = None
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
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None


class ChatCompletionRequest(SamplingRequest, ChatTemplateFields):
    messages: list[ChatMessageParam]
    max_tokens: Optional[Int] = None
    max_completion_tokens: Optional[Int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[Int] = None
    echo: Optional[bool] = False
    # OpenAI features this server does not offer: a 400 naming the field when they are used
    functions: Optional[list[Any]] = None
    function_call: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    audio: Optional[dict[str, Any]] = None
    modalities: Optional[list[str]] = None
    web_search_options: Optional[dict[str, Any]] = None


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
