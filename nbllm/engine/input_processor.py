"""InputProcessor: a user's prompt and parameters made into a request the engine core accepts.

Runs in the caller's thread and touches no engine state: it parses the prompt
(nbllm/inputs.py), tokenizes it, checks it against the model (vocabulary, context
length) and prepares what sampling needs (bad words as token ids, the structured-output
constraint compiled by the engine's GrammarCompiler). Every problem raises
ValueError/TypeError here, before anything is queued. The result is plain
data; the engine core builds its sequences (one per completion, `n` of them) from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from nbllm.engine.grammar import GrammarCompiler
from nbllm.errors import InvalidParameter
from nbllm.inputs import PromptType, parse_prompt
from nbllm.metrics import now
from nbllm.sampling_params import BeamSearchParams, SamplingParams


@dataclass(frozen=True)
class NewRequest:
    """A validated request: the core fans it out into `params.n` sequences."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams  # the engine's own copy
    bad_words_token_ids: list[list[int]]
    arrival_time: float
    priority: int = 0
    grammar: Optional[Any] = None  # xgrammar's CompiledGrammar of params.structured_outputs


@dataclass(frozen=True)
class NewBeamSearch:
    """A validated beam search request."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: BeamSearchParams
    arrival_time: float


class InputProcessor:
    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int,
                 grammars: Optional[GrammarCompiler] = None, max_logprobs: int = 20):
        self.tokenizer = tokenizer
        self.max_logprobs = vocab_size if max_logprobs == -1 else max_logprobs
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.grammars = grammars  # None: this engine refuses structured outputs

    def process(self, request_id: str, prompt: PromptType, params: SamplingParams, priority: int = 0) -> NewRequest:
        """Tokenize and validate one prompt with its parameters.

        `priority` orders requests under scheduling_policy="priority" (lower first); under
        "fcfs" it is accepted and has no effect, as in vLLM's current offline API.
        """
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, got {priority!r}")
        text, token_ids = self.tokenize(prompt)
        params.validate_for_vocab(self.vocab_size)
        self._check_logprobs(params)
        if self.tokenizer is None:
            params = self._without_detokenizing(params)
        bad_words = [self.tokenizer.encode(prefix + word, add_special_tokens=False)
                     for prefix in ("", " ") for word in params.bad_words]
        grammar = None
        if params.structured_outputs is not None:
            if self.grammars is None:
                raise ValueError("this engine has no grammar compiler: structured_outputs are not supported")
            grammar = self.grammars.compile(params.structured_outputs)
        return NewRequest(request_id, text, token_ids, params.clone(), [w for w in bad_words if w], now(),
                          priority, grammar)

    def process_beam_search(self, request_id: str, prompt: PromptType, params: BeamSearchParams) -> NewBeamSearch:
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        if self.tokenizer is None:
            raise ValueError("beam search decodes its beams, but this engine has no tokenizer "
                             "(skip_tokenizer_init=True)")
        text, token_ids = self.tokenize(prompt)
        return NewBeamSearch(request_id, text, token_ids, params, now())

    def tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        """The prompt's text (if any) and its checked token ids."""
        parsed = parse_prompt(prompt)
        if parsed.token_ids is None and self.tokenizer is None:
            raise InvalidParameter("this engine has no tokenizer (skip_tokenizer_init=True): pass prompts as "
                                   "token ids, {'prompt_token_ids': [...]}", "prompt")
        token_ids = parsed.token_ids if parsed.token_ids is not None else self.tokenizer.encode(parsed.text)
        return parsed.text, self.check_prompt_tokens(token_ids)

    def _check_logprobs(self, params: SamplingParams) -> None:
        """vLLM's max_logprobs cap (an engine argument; -1 lifts it), with vLLM's wording."""
        for name, kind in (("logprobs", "sample"), ("prompt_logprobs", "prompt")):
            wanted = getattr(params, name)
            count = self.vocab_size if wanted == -1 else wanted
            if count is not None and count > self.max_logprobs:
                raise InvalidParameter(f"Requested {kind} logprobs of {count}, which is greater than max allowed: "
                                       f"{self.max_logprobs} (raise max_logprobs in LLM(...), -1 for no cap)", name)

    @staticmethod
    def _without_detokenizing(params: SamplingParams) -> SamplingParams:
        """With skip_tokenizer_init, outputs are token ids only; text-based options cannot work."""
        for name in ("stop", "bad_words", "structured_outputs"):
            if getattr(params, name):
                raise InvalidParameter(f"{name} needs a tokenizer, but this engine has none "
                                       f"(skip_tokenizer_init=True)", name)
        return params.updated(detokenize=False) if params.detokenize else params

    def check_prompt_tokens(self, token_ids: Sequence[int]) -> list[int]:
        token_ids = [int(t) for t in token_ids]
        # The wording follows vLLM's, which its tests and users' code match on.
        if not token_ids:
            raise InvalidParameter("The decoder prompt cannot be empty: it must contain at least one token",
                                   "prompt")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidParameter(f"Token id {bad[0]} is out of vocabulary (the vocabulary has "
                                   f"{self.vocab_size} tokens, ids 0 to {self.vocab_size - 1})", "prompt")
        if len(token_ids) >= self.max_model_len:
            raise InvalidParameter(f"The prompt is {len(token_ids)} tokens long, but this model's maximum context "
                                   f"length is {self.max_model_len} tokens, and at least one token must be "
                                   f"generated; shorten the prompt", "prompt")
        return token_ids
