"""vLLM's `logprob_token_ids`: the logprobs of caller-chosen token ids at every generated position.

The engine reports the sampled token's logprob (the request runs with logprobs=0);
a logits processor on the request records, at each position, the raw log-softmax of
the logits at the chosen ids, keyed by the tokens generated before that position (so
the n completions of one request share it: equal prefixes have equal logits). The
entries a response shows are then the sampled token first and the chosen ids after
it, as vLLM's sampler fills them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

from nbllm.outputs import Logprob
from nbllm.server.errors import bad_request


class RequestedLogprobs:
    """A logits processor `(output_ids, logits) -> logits` that leaves the logits as they are."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = list(token_ids)
        self._by_prefix: dict[int, list[float]] = {}
        self._lock = threading.Lock()  # written in the engine's thread, read on the event loop

    def __call__(self, output_ids: Sequence[int], logits: Any) -> Any:
        values = logits.float().log_softmax(dim=-1)[self.token_ids].tolist()
        with self._lock:
            self._by_prefix[hash(tuple(output_ids))] = values
        return logits

    def extended(self, token_ids: Sequence[int],
                 entries: Sequence[Optional[dict[int, Logprob]]]) -> list[Optional[dict[int, Logprob]]]:
        """Copies of the entries of a completion's `token_ids`, the chosen ids' logprobs after the sampled token."""
        out = []
        with self._lock:
            for position, entry in enumerate(entries):
                values = self._by_prefix.get(hash(tuple(token_ids[:position]))) if entry is not None else None
                if values is not None:
                    entry = dict(entry)
                    for token, value in zip(self.token_ids, values):
                        entry.setdefault(token, Logprob(value))
                out.append(entry)
        return out


def requested_logprobs(token_ids: Optional[list[int]], logprobs_asked: bool, vocab_size: Callable[[], int],
                       param_for_logprobs: str) -> Optional[RequestedLogprobs]:
    """The processor for a request's `logprob_token_ids`, checked as vLLM checks it; None when not asked."""
    if token_ids is None:
        return None
    if not token_ids:
        raise bad_request("logprob_token_ids must not be an empty list", "logprob_token_ids")
    if not logprobs_asked:
        raise bad_request(f"{param_for_logprobs} must be set when using `logprob_token_ids`", "logprob_token_ids")
    size = vocab_size()
    bad = [t for t in token_ids if not 0 <= t < size]
    if bad:
        raise bad_request(f"logprob_token_ids has token ids outside the vocabulary [0, {size}): {bad[:5]}",
                          "logprob_token_ids")
    return RequestedLogprobs(token_ids)
