"""Prompt and parameter parsing shared by every EngineClient (LLM and RemoteLLM).

A prompt is a str, `{"prompt": str}` or `{"prompt_token_ids": [int, ...]}` (optionally
with the text beside the ids), as in vLLM. `parse_prompts` checks the shape and
`params_per_prompt` pairs each prompt with its SamplingParams; both raise TypeError
or ValueError naming what is wrong. Tokenizing is the engine's business, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from nbllm.sampling_params import SamplingParams

PromptType = Union[str, dict]
PromptsType = Union[PromptType, Sequence[PromptType]]
ParamsType = Union[None, SamplingParams, Sequence[SamplingParams]]

T = TypeVar("T")


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt's text, its token ids, or both (ids win where both are given)."""

    text: Optional[str]
    token_ids: Optional[list[int]]


def parse_prompt(prompt: Any) -> ParsedPrompt:
    """One prompt in vLLM's forms: str, {"prompt": str}, {"prompt_token_ids": [int]}."""
    if isinstance(prompt, str):
        return ParsedPrompt(prompt, None)
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise TypeError("prompt_token_ids must be a list of int")
            text = prompt.get("prompt")
            return ParsedPrompt(text if isinstance(text, str) else None, list(ids))
        if isinstance(prompt.get("prompt"), str):
            return ParsedPrompt(prompt["prompt"], None)
        raise ValueError(f"a prompt dict needs 'prompt' (str) or 'prompt_token_ids', got keys {sorted(prompt)}")
    raise TypeError(f"a prompt must be a str or a dict with 'prompt' or 'prompt_token_ids', "
                    f"got {type(prompt).__name__}")


def as_list(prompts: PromptsType) -> list[PromptType]:
    """A single prompt or a list of them, as a non-empty list."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str, a prompt dict, or a list of them, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    return list(prompts)


def parse_prompts(prompts: PromptsType) -> list[ParsedPrompt]:
    return [parse_prompt(p) for p in as_list(prompts)]


def params_per_prompt(sampling_params: ParamsType, count: int,
                      default: Callable[[], SamplingParams]) -> list[SamplingParams]:
    """One SamplingParams per prompt: the given one repeated, the list as given, or `default()`."""
    if sampling_params is None:
        return [default()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    if not isinstance(sampling_params, (list, tuple)):
        raise TypeError(f"sampling_params must be SamplingParams or a list of them, "
                        f"got {type(sampling_params).__name__}")
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} SamplingParams for {count} prompts; pass one, or one per prompt")
    if not all(isinstance(p, SamplingParams) for p in params):
        raise TypeError("sampling_params must be SamplingParams or a list of them")
    return params


def priorities_per_prompt(priority: Union[None, int, Sequence[int]], count: int) -> list[int]:
    """One priority per prompt, as vLLM's generate(priority=...) takes them: None, one int, or one each."""
    if priority is None:
        return [0] * count
    if isinstance(priority, int) and not isinstance(priority, bool):
        return [priority] * count
    if not isinstance(priority, (list, tuple)) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in priority):
        raise TypeError(f"priority must be an int or a list of int, got {priority!r}")
    if len(priority) != count:
        raise ValueError(f"got {len(priority)} priorities for {count} prompts; pass one, or one per prompt")
    return list(priority)


def conversations_of(messages: Any) -> list[list[dict]]:
    """One conversation (a list of message dicts) or a list of them, as a non-empty list."""
    single = isinstance(messages, (list, tuple)) and (not messages or isinstance(messages[0], dict))
    conversations = [list(messages)] if single else list(messages)
    if not conversations:
        raise ValueError("messages is empty: pass a conversation or a list of conversations")
    return conversations
