"""The `usage` object of responses and stream chunks, with vLLM's prompt_tokens_details switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from nbllm.server.responses import PromptTokensDetails, UsageInfo

if TYPE_CHECKING:
    from nbllm.server.state import ServerState


def usage_info(state: "ServerState", prompt_tokens: int, completion_tokens: int,
               cached_tokens: Optional[int]) -> UsageInfo:
    """Token counts; prompt_tokens_details (the prefix-cache hits) only with --enable-prompt-tokens-details."""
    details = PromptTokensDetails(cached_tokens=cached_tokens) \
        if state.options.enable_prompt_tokens_details and cached_tokens is not None else None
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)
