"""The wire format RemoteLLM speaks: SamplingParams to request fields, responses to RequestOutputs.

Only OpenAI's fields and vLLM's documented extras are sent, so nbllm's server and
vLLM's both answer; which fields are extras follows from the SamplingParams dataclass
itself, so a new field travels without a second list to update (`vllm_only_fields`
names the ones a plain OpenAI server ignores, for RemoteLLM to warn about). A
StructuredOutputsParams travels as vLLM's `structured_outputs` object, holding the
constraint that is set (a JSON schema as an object). Exact token
ids come from vLLM's `return_token_ids` (vLLM 0.10.2 and later) or, with logprobs, from
`return_tokens_as_token_ids`; a server that ignores both leaves token_ids empty.
`OutputBuilder` accumulates a full response or a stream of chunks into RequestOutputs,
and the token counts of their `usage`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from typing import Any, Optional

from nbllm.outputs import CompletionOutput, Logprob, RequestOutput
from nbllm.sampling_params import SamplingParams
from nbllm.structured_outputs import StructuredOutputsParams

# Always sent: left out, a server would apply its model's generation_config instead of the caller's value.
_OPENAI_FIELDS = ("n", "temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty")
# How this client builds its outputs: not the server's business.
_CLIENT_FIELDS = ("detokenize", "output_kind", "flat_logprobs")
_MAPPED_FIELDS = ("logprobs", "logit_bias", "extra_args", "logits_processors",  # handled one by one, below
                  "structured_outputs", "guided_decoding")
# Every other field (seed, stop, top_k, ...) is an OpenAI or vLLM extra, sent where it differs from the default.
_EXTRA_FIELDS = tuple(f.name for f in fields(SamplingParams)
                      if f.name not in _OPENAI_FIELDS + _CLIENT_FIELDS + _MAPPED_FIELDS)
_ID_PREFIX = "token_id:"
_OPENAI_EXTRAS = frozenset({"seed", "stop"})  # OpenAI's own fields among the extras


def vllm_only_fields(body: dict[str, Any]) -> list[str]:
    """The sampling fields in a request body that OpenAI's API does not define (vLLM's extras)."""
    return [name for name in _EXTRA_FIELDS if name in body and name not in _OPENAI_EXTRAS] + \
        (["extra_args"] if "vllm_xargs" in body else []) + \
        (["structured_outputs"] if "structured_outputs" in body else [])


def request_fields(params: SamplingParams, chat: bool) -> dict[str, Any]:
    """The sampling fields of a /v1/completions (chat=False) or /v1/chat/completions request."""
    if params.logits_processors:
        raise ValueError("logits_processors are Python callables that run in the engine's process; "
                         "a RemoteLLM cannot send them to a server (use a local nbllm.LLM)")
    base = SamplingParams()
    body: dict[str, Any] = {"return_token_ids": True}
    body.update({name: getattr(params, name) for name in _OPENAI_FIELDS})
    body.update({name: _plain(name, getattr(params, name)) for name in _EXTRA_FIELDS
                 if getattr(params, name) != getattr(base, name)})
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias.items()}
    if params.extra_args:
        body["vllm_xargs"] = _plain("extra_args", params.extra_args)  # vLLM's server hands these on as extra_args
    if params.structured_outputs is not None:
        body["structured_outputs"] = structured_outputs_field(params.structured_outputs)
    if params.logprobs is not None:
        body.update({"logprobs": True, "top_logprobs": params.logprobs} if chat else {"logprobs": params.logprobs})
        body["return_tokens_as_token_ids"] = True
    return body


def structured_outputs_field(constraint: StructuredOutputsParams) -> dict[str, Any]:
    """vLLM's `structured_outputs` request object: the constraint that is set, and the options not at default."""
    field: dict[str, Any] = {constraint.kind: copy.deepcopy(getattr(constraint, constraint.kind))}
    if constraint.disable_any_whitespace:
        field["disable_any_whitespace"] = True
    if constraint.whitespace_pattern is not None:
        field["whitespace_pattern"] = constraint.whitespace_pattern
    return field


def _plain(name: str, value: Any) -> Any:
    """A copy of a field's value for the body (it is sent later, from a pool); TypeError if JSON cannot hold it."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(f"SamplingParams.{name} ({type(value).__name__}) cannot be sent to a server as JSON") from None
    return copy.deepcopy(value)


def _token_id(token: str) -> Optional[int]:
    if token.startswith(_ID_PREFIX) and token[len(_ID_PREFIX):].lstrip("-").isdigit():
        return int(token[len(_ID_PREFIX):])
    return None


def _entry(token: str, logprob: Optional[float], alternatives: list[tuple[str, float]],
           fallback_id: Optional[int]) -> tuple[Optional[int], Optional[dict[int, Logprob]]]:
    """One position's {token id: Logprob}: the chosen token, then the alternatives ranked 1, 2, ..."""
    chosen = _token_id(token)
    chosen = fallback_id if chosen is None else chosen
    if chosen is None or logprob is None:
        return chosen, None
    ranked = sorted(alternatives, key=lambda item: -item[1])
    ranks = {_token_id(t): r for r, (t, _) in enumerate(ranked, start=1)}
    entry = {chosen: Logprob(logprob, ranks.get(chosen))}
    for rank, (alt, value) in enumerate(ranked, start=1):
        alt_id = _token_id(alt)
        if alt_id is not None:
            entry.setdefault(alt_id, Logprob(value, rank))
    return chosen, entry


def _parse_logprobs(logprobs: Optional[dict], token_ids: list[int]) -> tuple[list[int], list[dict[int, Logprob]]]:
    """(token ids, entries) from either logprobs format; ids from the tokens when the server sent none."""
    if not logprobs:
        return token_ids, []
    positions: list[tuple[str, Optional[float], list[tuple[str, float]]]] = []
    if logprobs.get("content") is not None:  # chat
        positions = [(c["token"], c["logprob"], [(t["token"], t["logprob"]) for t in c.get("top_logprobs") or []])
                     for c in logprobs["content"]]
    elif logprobs.get("tokens") is not None:  # completions
        tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
        positions = [(t, v, list((top or {}).items())) for t, v, top in
                     zip(logprobs["tokens"], logprobs["token_logprobs"], tops)]
    ids, entries = [], []
    for i, (token, value, alternatives) in enumerate(positions):
        chosen, entry = _entry(token, value, alternatives, token_ids[i] if i < len(token_ids) else None)
        if chosen is not None:
            ids.append(chosen)
        if entry is not None:
            entries.append(entry)
    return (token_ids or (ids if len(ids) == len(positions) else [])), entries


def _prompt_logprobs(raw: Optional[list]) -> Optional[list[Optional[dict[int, Logprob]]]]:
    if raw is None:
        return None
    return [None if position is None else
            {int(t): Logprob(v["logprob"], v.get("rank"), v.get("decoded_token")) for t, v in position.items()}
            for position in raw]


class OutputBuilder:
    """One request's choices, accumulated from a response or from stream chunks."""

    def __init__(self, request_id: str, prompt: Optional[str], n: int, want_logprobs: bool):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids: list[int] = []
        self.prompt_logprobs: Optional[list] = None
        self.num_cached_tokens = 0
        self.want_logprobs = want_logprobs
        self.choices = [CompletionOutput(index=i, text="", token_ids=[], cumulative_logprob=None,
                                         logprobs=[] if want_logprobs else None) for i in range(n)]
        self._sent = [(0, 0)] * n  # (text length, token count) already handed out, for delta outputs
        self.answered: set[int] = set()  # choices the server sent anything for
        self.prompt_tokens = 0  # from usage
        self.completion_tokens = 0
        self.index_offset = 0  # where the server's choice 0 goes (RemoteLLM asks n times when it must)
        self._call_completion_tokens: Optional[int] = None  # this call's usage, once it sends one
        self._call_text_chunks = 0  # choices that carried text in this call's chunks

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def add(self, event: dict) -> None:
        """A whole response, or one stream chunk (choices carry deltas)."""
        self.prompt_token_ids = event.get("prompt_token_ids") or self.prompt_token_ids
        if event.get("prompt_logprobs") is not None:
            self.prompt_logprobs = _prompt_logprobs(event["prompt_logprobs"])
        usage = event.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        self.num_cached_tokens = details.get("cached_tokens") or self.num_cached_tokens
        if isinstance(usage.get("completion_tokens"), int):  # the last usage of a call is its total
            self.prompt_tokens = usage.get("prompt_tokens") or self.prompt_tokens
            self._call_completion_tokens = usage["completion_tokens"]
        for choice in event.get("choices") or []:
            self._add_choice(choice)

    def end_call(self, streamed: bool) -> None:
        """One HTTP call is over: its usage counts.

        A stream that sent neither usage nor token ids (llama-cpp-python ignores stream_options)
        counts one token per chunk that carried text: such a server sends each token in its own
        chunk (a token that ends mid-character carries none, so this is a lower bound).
        """
        if self._call_completion_tokens is not None:
            self.completion_tokens += self._call_completion_tokens
        elif streamed and not any(c.token_ids for c in self.choices):
            self.completion_tokens += self._call_text_chunks
        self._call_completion_tokens, self._call_text_chunks = None, 0

    def _add_choice(self, choice: dict) -> None:
        index = choice.get("index", 0)
        index = (index if isinstance(index, int) else 0) + self.index_offset
        if not 0 <= index < len(self.choices):
            return
        self.answered.add(index)
        out = self.choices[index]
        message = choice.get("message") or choice.get("delta") or {}
        piece = choice.get("text") or message.get("content") or ""
        out.text += piece
        self._call_text_chunks += bool(piece)
        self.prompt_token_ids = choice.get("prompt_token_ids") or self.prompt_token_ids
        if choice.get("prompt_logprobs") is not None:
            self.prompt_logprobs = _prompt_logprobs(choice["prompt_logprobs"])
        token_ids, entries = _parse_logprobs(choice.get("logprobs"), list(choice.get("token_ids") or []))
        out.token_ids.extend(token_ids)
        if self.want_logprobs and out.logprobs is not None and entries:
            out.logprobs.extend(entries)
            new = sum(e[t].logprob for t, e in zip(token_ids, entries) if t in e)
            out.cumulative_logprob = (out.cumulative_logprob or 0.0) + new
        if choice.get("finish_reason") is not None:
            out.finish_reason = choice["finish_reason"]
            out.stop_reason = choice.get("stop_reason")

    def output(self, force_finish: Optional[str] = None, reason: Optional[str] = None,
               delta: bool = False) -> RequestOutput:
        """A snapshot (copies, as LLM's outputs are); force_finish ends unfinished choices.

        With delta, each choice holds only the text, tokens and logprobs not handed out before.
        """
        outputs = []
        for i, c in enumerate(self.choices):
            finish, stop = (c.finish_reason, c.stop_reason) if c.finish_reason or not force_finish \
                else (force_finish, reason)
            text_from, tokens_from = self._sent[i] if delta else (0, 0)
            logprobs = list(c.logprobs[tokens_from:]) if c.logprobs is not None else None
            outputs.append(CompletionOutput(c.index, c.text[text_from:], c.token_ids[tokens_from:],
                                            c.cumulative_logprob, logprobs, finish, stop))
            if delta:
                self._sent[i] = (len(c.text), len(c.token_ids))
        return RequestOutput(request_id=self.request_id, prompt=self.prompt,
                             prompt_token_ids=list(self.prompt_token_ids), prompt_logprobs=self.prompt_logprobs,
                             outputs=outputs, finished=force_finish is not None or self.finished,
                             num_cached_tokens=self.num_cached_tokens)
