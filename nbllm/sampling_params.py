"""Sampling parameters with vLLM's field names, defaults and validation.

Every invalid value raises ValueError (or TypeError for a wrong type) naming the
field and what is allowed; nothing here asserts. Parameters are plain data: the
engine never mutates a caller's object, it works on a copy.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Union

from nbllm.structured_outputs import GuidedDecodingParams, StructuredOutputsParams

_SAMPLING_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    """What each streamed RequestOutput holds (vLLM's RequestOutputKind)."""

    CUMULATIVE = 0  # all text and tokens so far
    DELTA = 1  # only what is new since the last output
    FINAL_ONLY = 2  # nothing until the request finishes


def _check_type(name: str, value: Any, types: tuple, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"{name} must be {' or '.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"{name} must be {names}, got {type(value).__name__}: {value!r}")


def _check_finite(name: str, value: float) -> None:
    """NaN and infinities pass every range comparison; vLLM rejects them (advisory GHSA-7h4p-rffg-7823)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _as_str_list(name: str, value: Union[None, str, list]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{name} must be a str or a list of str, got {value!r}")


def _as_int_list(name: str, value: Optional[list]) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise TypeError(f"{name} must be a list of int, got {value!r}")


@dataclass
class SamplingParams:
    """How to sample one request's completions (vLLM's SamplingParams).

    temperature 0 means greedy. max_tokens=None means "until the model's length
    limit". Stop strings are cut from the text unless include_stop_str_in_output.
    logprobs/prompt_logprobs=-1 ask for the whole vocabulary. logits_processors are
    vLLM's classic per-request callables, `(output_ids, logits) -> logits` or
    `(prompt_ids, output_ids, logits) -> logits`, applied to each row's float32 logits
    before penalties and sampling. extra_args is carried along for the caller's use;
    flat_logprobs is accepted for vLLM compatibility (logprobs are a list of dicts either way).
    structured_outputs constrains the output to a JSON schema, regex, choice or grammar
    (guided_decoding, its older name, is moved there).
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Union[None, str, list[str]] = None
    stop_token_ids: Optional[list[int]] = None
    bad_words: Optional[list[str]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: Optional[dict[int, float]] = None
    allowed_token_ids: Optional[list[int]] = None
    logits_processors: Optional[list[Callable]] = None
    extra_args: Optional[dict[str, Any]] = None
    flat_logprobs: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: Optional[StructuredOutputsParams] = None
    guided_decoding: Optional[GuidedDecodingParams] = None

    def __post_init__(self) -> None:
        self.stop = _as_str_list("stop", self.stop)
        self.stop_token_ids = _as_int_list("stop_token_ids", self.stop_token_ids)
        self.bad_words = _as_str_list("bad_words", self.bad_words)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _as_int_list("allowed_token_ids", self.allowed_token_ids)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise TypeError(f"logit_bias must be a dict of token id to float, got {self.logit_bias!r}")
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            for token, bias in self.logit_bias.items():
                _check_finite(f"logit_bias[{token}]", bias)
        if self.logits_processors is not None:
            if callable(self.logits_processors):
                self.logits_processors = [self.logits_processors]
            if not isinstance(self.logits_processors, (list, tuple)) or not all(
                    callable(f) for f in self.logits_processors):
                raise TypeError(f"logits_processors must be a list of callables, got {self.logits_processors!r}")
            self.logits_processors = list(self.logits_processors)
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise TypeError(f"extra_args must be a dict, got {type(self.extra_args).__name__}")
        self._take_structured_outputs()
        self._validate()

    def _take_structured_outputs(self) -> None:
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError("give structured_outputs or guided_decoding (its older name), not both")
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise TypeError(f"structured_outputs must be StructuredOutputsParams, got "
                            f"{type(self.structured_outputs).__name__}: {self.structured_outputs!r}")

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        _check_type("n", self.n, (int,))
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p"):
            _check_type(name, getattr(self, name), (int, float))
            _check_finite(name, getattr(self, name))
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_type("top_k", self.top_k, (int,))
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (disable) or at least 1, got {self.top_k}")
        if self.top_k == -1:
            self.top_k = 0
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        _check_type("seed", self.seed, (int,), allow_none=True)
        _check_type("max_tokens", self.max_tokens, (int,), allow_none=True)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        _check_type("min_tokens", self.min_tokens, (int,))
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check_type(name, value, (int,), allow_none=True)
            if value is not None and value < -1:
                raise ValueError(f"{name} must be non-negative, or -1 for the whole vocabulary, got {value}")
        if any(s == "" for s in self.stop):
            raise ValueError("stop must not contain empty strings")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids must not be empty")
        for name in ("include_stop_str_in_output", "ignore_eos", "detokenize", "skip_special_tokens",
                     "spaces_between_special_tokens", "flat_logprobs"):
            _check_type(name, getattr(self, name), (bool,))
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize=True")

    def validate_for_vocab(self, vocab_size: int) -> None:
        """Check token ids against the model's vocabulary (called by the engine)."""
        for name, ids in (("stop_token_ids", self.stop_token_ids),
                          ("allowed_token_ids", self.allowed_token_ids or []),
                          ("logit_bias", list((self.logit_bias or {}).keys()))):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")

    # ------------------------------------------------------------------ helpers
    def _shared_objects(self) -> dict[int, Any]:
        """deepcopy's memo: objects that copies share instead of duplicating."""
        return {id(f): f for f in self.logits_processors or ()}

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def needs_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    def clone(self) -> "SamplingParams":
        """A deep copy that shares the logits processors (they may hold state or big tables), as vLLM's."""
        return copy.deepcopy(self, self._shared_objects())

    def updated(self, **changes: Any) -> "SamplingParams":
        """A validated copy with some fields changed."""
        shared = self._shared_objects()
        values = {f.name: copy.deepcopy(getattr(self, f.name), shared) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"unknown SamplingParams fields: {sorted(unknown)}")
        values.update(changes)
        return SamplingParams(**values)


@dataclass
class BeamSearchParams:
    """Beam search settings (vLLM's BeamSearchParams)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    # nbllm's addition: CUMULATIVE also streams the search so far (its tree) after every step
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY

    def __post_init__(self) -> None:
        if self.output_kind not in (RequestOutputKind.FINAL_ONLY, RequestOutputKind.CUMULATIVE):
            raise ValueError(f"a beam search's output_kind must be FINAL_ONLY or CUMULATIVE, got {self.output_kind!r}")
        _check_type("beam_width", self.beam_width, (int,))
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}")
        _check_type("max_tokens", self.max_tokens, (int,))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        _check_type("temperature", self.temperature, (int, float))
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        _check_type("length_penalty", self.length_penalty, (int, float))


SAMPLING_PARAM_NAMES = tuple(f.name for f in fields(SamplingParams))

__all__ = ["SamplingParams", "BeamSearchParams", "RequestOutputKind", "StructuredOutputsParams",
           "GuidedDecodingParams", "SAMPLING_PARAM_NAMES"]
