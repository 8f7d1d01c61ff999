"""Engine logprobs (one {token id: Logprob} dict per position) in OpenAI's formats, and vLLM's prompt logprobs.

Completions use the legacy format (parallel lists of tokens, logprobs, top-k dicts
and text offsets); chat uses a list of entries with the token's UTF-8 bytes. An
engine entry holds the sampled token first, then the top alternatives by rank, and
the alternatives are listed in that order, as vLLM does: a completion's top dict takes
the first `k + 1` entries (the sampled token and k more), a chat's top list the first
`k` (-1: all). With vLLM's `return_tokens_as_token_ids`, tokens are written
"token_id:<id>" so a client gets exact ids. Log probabilities of -inf are clamped to
-9999.0, as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from nbllm.outputs import Logprob
from nbllm.server.responses import (ChatLogProb, ChatLogProbs, ChatLogProbsContent, CompletionLogProbs, PromptLogprob,
                                   PromptLogprobs)

Entry = Optional[dict[int, Logprob]]
_FLOOR = -9999.0


@dataclass
class TokenNamer:
    """How a token is written in logprobs: its text, or "token_id:<id>"."""

    tokenizer: Any
    as_ids: bool = False

    def __call__(self, token_id: int, logprob: Optional[Logprob] = None) -> str:
        if self.as_ids:
            return f"token_id:{token_id}"
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.tokenizer.decode([token_id])


def _value(logprob: Logprob) -> float:
    return max(logprob.logprob, _FLOOR)


def _first(entry: dict[int, Logprob], count: int) -> list[tuple[int, Logprob]]:
    """The entry's first `count` items (all for a negative count), in the engine's order."""
    items = list(entry.items())
    return items if count < 0 else items[:count]


def completion_logprobs(token_ids: Sequence[int], entries: Sequence[Entry], num_top: int, name: TokenNamer,
                        text_offset: int) -> CompletionLogProbs:
    """Legacy logprobs for `token_ids`, whose text starts at `text_offset` in the choice's text."""
    result = CompletionLogProbs()
    for token_id, entry in zip(token_ids, entries):
        chosen = entry.get(token_id) if entry else None
        token = name(token_id, chosen)
        result.tokens.append(token)
        result.token_logprobs.append(_value(chosen) if chosen else None)
        result.text_offset.append(text_offset)
        text_offset += len(name.tokenizer.decode([token_id]) if name.as_ids else token)
        if entry is None:
            result.top_logprobs.append(None)
        else:
            result.top_logprobs.append({name(t, lp): _value(lp) for t, lp in
                                        _first(entry, num_top + 1 if num_top >= 0 else -1)})
    return result


def chat_logprobs(token_ids: Sequence[int], entries: Sequence[Entry], num_top: int, name: TokenNamer) -> ChatLogProbs:
    content = []
    for token_id, entry in zip(token_ids, entries):
        entry = entry or {}
        chosen = entry.get(token_id)
        top = [_chat_logprob(name(t, lp), _value(lp)) for t, lp in _first(entry, num_top)]
        token = name(token_id, chosen)
        content.append(ChatLogProbsContent(token=token, logprob=_value(chosen) if chosen else _FLOOR,
                                           bytes=_utf8(token), top_logprobs=top))
    return ChatLogProbs(content=content)


def prompt_logprobs(entries: Optional[Sequence[Entry]], name: TokenNamer) -> Optional[PromptLogprobs]:
    """vLLM's prompt_logprobs: per prompt position, {token id: {logprob, rank, decoded_token}} (None first)."""
    if entries is None:
        return None
    return [None if entry is None else
            {t: PromptLogprob(logprob=_value(lp), rank=lp.rank, decoded_token=name.tokenizer.decode([t]))
             for t, lp in entry.items()}
            for entry in entries]


def _chat_logprob(token: str, value: float) -> ChatLogProb:
    return ChatLogProb(token=token, logprob=value, bytes=_utf8(token))


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))
