"""From a request body to SamplingParams, the way vLLM's server does it.

A field the request leaves unset takes the model's default (its generation_config,
through `llm.get_default_sampling_params()`), then SamplingParams' own default.
max_tokens unset means "up to the context window". A prompt that with its
max_tokens does not fit the context window is a 400, as in vLLM. Invalid values
raise SamplingParams' ValueError/TypeError, which names the field.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Optional

from nbllm.sampling_params import RequestOutputKind, SamplingParams
from nbllm.server.errors import bad_request
from nbllm.server.protocol import SamplingRequest

# A server bound: the engine would build n sequences before failing, so a huge n is a denial of service.
MAX_N = 128
MAX_LOGPROBS = 20  # vLLM's default max_logprobs
LOGIT_BIAS_LIMIT = 100.0  # OpenAI clamps biases to [-100, 100]

# Request fields that are SamplingParams fields of the same name and meaning, copied as they are. The rest
# of the overlap is built below: max_tokens (capped by the context window), logprobs (the two endpoints
# spell it differently) and logit_bias (string keys, clamped values).
_BUILT_FIELDS = frozenset({"max_tokens", "logprobs", "logit_bias"})
_COPIED_FIELDS = tuple(sorted(({f.name for f in fields(SamplingParams)} & set(SamplingRequest.model_fields))
                              - _BUILT_FIELDS))


def model_defaults(defaults: SamplingParams) -> dict[str, Any]:
    """The fields where the model's defaults differ from SamplingParams' own (vLLM's default_sampling_params)."""
    base = SamplingParams()
    return {f.name: getattr(defaults, f.name) for f in fields(SamplingParams)
            if getattr(defaults, f.name) != getattr(base, f.name)}


def check_context_length(prompt_len: int, max_tokens: Optional[int], max_model_len: int, param: str) -> None:
    """vLLM's check: the prompt plus the tokens asked for must fit the context window."""
    if max_tokens is None or max_tokens < 1:
        if prompt_len >= max_model_len:
            raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, you "
                              f"requested {prompt_len} tokens in the {param}. Please reduce the length of the "
                              f"{param}.", param)
    elif prompt_len + max_tokens > max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, you "
                          f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the {param}, {max_tokens} "
                          f"in the completion). Please reduce the length of the {param} or completion.", param)


def check_limits(body: SamplingRequest, num_logprobs: Optional[int], logprobs_param: str) -> None:
    if body.n is not None and body.n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}, got {body.n}", "n")
    for name, value in ((logprobs_param, num_logprobs), ("prompt_logprobs", body.prompt_logprobs)):
        if value is not None and value > MAX_LOGPROBS:
            raise bad_request(f"{name} must be at most {MAX_LOGPROBS}, got {value}", name)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")


def _logit_bias(bias: Optional[dict[str, float]]) -> Optional[dict[int, float]]:
    if bias is None:
        return None
    try:
        return {int(token): max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, value)) for token, value in bias.items()}
    except ValueError:
        raise bad_request(f"logit_bias keys must be token ids, got {sorted(bias)[:5]}", "logit_bias") from None


def to_sampling_params(body: SamplingRequest, *, defaults: dict[str, Any], requested_max_tokens: Optional[int],
                       prompt_len: int, max_model_len: int, logprobs: Optional[int],
                       output_kind: RequestOutputKind) -> SamplingParams:
    """SamplingParams for one prompt of `body`; raises ValueError/TypeError/OpenAIError for bad values."""
    values: dict[str, Any] = {name: defaults[name] for name in _COPIED_FIELDS if name in defaults}
    values.update({name: getattr(body, name) for name in _COPIED_FIELDS if getattr(body, name) is not None})
    caps = (max_model_len - prompt_len, requested_max_tokens, defaults.get("max_tokens"))
    values["max_tokens"] = min(cap for cap in caps if cap is not None)
    values.update(logprobs=logprobs, logit_bias=_logit_bias(body.logit_bias), output_kind=output_kind)
    return SamplingParams(**values)


def output_kind_for(body: SamplingRequest) -> RequestOutputKind:
    return RequestOutputKind.DELTA if body.stream else RequestOutputKind.FINAL_ONLY
