"""Incremental detokenization and stop checking for one sequence.

Text is produced token by token by decoding a short window (a few tokens of
context, then the new ones) and emitting only what extends the window's previous
text; a window ending in an incomplete UTF-8 character (U+FFFD) waits for the next
token, so half a multi-byte character is never emitted. Stop strings are found in
the newly produced text and everything from them on is cut (kept with
include_stop_str_in_output).
"""

from __future__ import annotations

from typing import Any, Optional

from nbllm.sampling_params import SamplingParams

CONTEXT_TOKENS = 6  # prompt tokens kept as context so leading spaces decode right


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.params = params
        self._ids: list[int] = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""
        self._max_stop_len = max((len(s) for s in params.stop), default=0)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.params.skip_special_tokens,
            spaces_between_special_tokens=self.params.spaces_between_special_tokens)

    def add_token(self, token_id: int) -> str:
        """Append a token; returns the text it completed (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def check_stop_strings(self, new_char_count: int) -> Optional[str]:
        """If a stop string appears in the new text, cut the text there and return it."""
        if not self.params.stop or new_char_count == 0:
            return None
        for stop in self.params.stop:
            search_from = max(0, len(self.text) - new_char_count - len(stop) + 1)
            index = self.text.find(stop, search_from)
            if index == -1:
                continue
            end = index + len(stop) if self.params.include_stop_str_in_output else index
            self.text = self.text[:end]
            return stop
        return None

    def visible_text(self, finished: bool) -> str:
        """The text safe to show now: while running, hold back what could start a stop string."""
        if finished or self._max_stop_len <= 1 or self.params.include_stop_str_in_output:
            return self.text
        return self.text[:max(0, len(self.text) - self._max_stop_len + 1)]


_IN_CONTEXT_LIMIT = 20  # beyond this many candidates (logprobs=-1), decode each alone in one batch call


def decode_candidates(tokenizer: Any, context_ids: list[int], candidate_ids: list[int],
                      skip_special_tokens: bool = True) -> list[str]:
    """The text each candidate token adds after `context_ids` (a few preceding tokens).

    Decoding in context keeps a leading space that a lone decode may drop. Where a
    token is only part of a UTF-8 character (byte-fallback and byte-level BPE), its text
    is the tokenizer's own token string instead of a lone U+FFFD.
    """
    if len(candidate_ids) > _IN_CONTEXT_LIMIT:
        texts = tokenizer.batch_decode([[t] for t in candidate_ids], skip_special_tokens=skip_special_tokens)
    else:
        prefix = tokenizer.decode(context_ids, skip_special_tokens=skip_special_tokens)
        texts = [tokenizer.decode(context_ids + [t], skip_special_tokens=skip_special_tokens)[len(prefix):]
                 for t in candidate_ids]
    return [_raw_token(tokenizer, t) if "\ufffd" in text else text for t, text in zip(candidate_ids, texts)]


def _raw_token(tokenizer: Any, token_id: int) -> str:
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token if isinstance(token, str) else ""
