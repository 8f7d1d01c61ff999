"""From a request body to SamplingParams, the way vLLM's server does it.

A field the request leaves unset takes the model's default (its generation_config,
through `llm.get_default_sampling_params()`), then SamplingParams' own default.
max_tokens unset means "up to the context window". A prompt that with its
max_tokens does not fit the context window is a 400, as in vLLM. Invalid values
raise SamplingParams' ValueError/TypeError (one validation, shared with the offline
API: NaN and infinities included), which names the field. `response_format`,
`structured_outputs` and vLLM's older `guided_*` fields become the engine's
StructuredOutputsParams.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Optional

from nbllm.sampling_params import RequestOutputKind, SamplingParams
from nbllm.server.errors import bad_request
from nbllm.server.protocol import SamplingRequest
from nbllm.structured_outputs import StructuredOutputsParams

LOGIT_BIAS_LIMIT = 100.0  # OpenAI clamps biases to [-100, 100]

# Request fields that are SamplingParams fields of the same name and meaning, copied as they are. The rest
# of the overlap is built below: max_tokens (capped by the context window), logprobs (the two endpoints
# spell it differently), logit_bias (string keys, clamped values) and structured_outputs (several spellings).
_BUILT_FIELDS = frozenset({"max_tokens", "logprobs", "logit_bias", "structured_outputs"})
_COPIED_FIELDS = tuple(sorted(({f.name for f in fields(SamplingParams)} & set(SamplingRequest.model_fields))
                              - _BUILT_FIELDS))
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_STRUCTURED_KEYS = frozenset(f.name for f in fields(StructuredOutputsParams))


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


def truncate(ids: list[int], body: SamplingRequest, max_model_len: int) -> list[int]:
    """vLLM's truncate_prompt_tokens (-1: the context window) and truncation_side ("left" keeps the end)."""
    keep = body.truncate_prompt_tokens
    if keep is None:
        return ids
    if keep == -1:
        keep = max_model_len
    if keep < 1:
        raise bad_request(f"truncate_prompt_tokens must be -1 or at least 1, got {keep}", "truncate_prompt_tokens")
    if keep > max_model_len:
        raise bad_request(f"truncate_prompt_tokens value ({keep}) is greater than max_model_len ({max_model_len}). "
                          f"Please, select a smaller truncation size.", "truncate_prompt_tokens")
    if len(ids) <= keep:
        return ids
    return ids[:keep] if body.truncation_side == "right" else ids[-keep:]


def check_request(body: SamplingRequest, max_model_len: int) -> None:
    """Checks that need no tokenizer: text fields, stream options, truncation, beam search's length penalty."""
    for name in ("stop", "bad_words"):
        value = getattr(body, name)
        for text in [value] if isinstance(value, str) else value or []:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(f"{name} is not valid Unicode (a lone UTF-16 surrogate?)", name) from None
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")
    if body.truncation_side is not None and body.truncate_prompt_tokens is None:
        raise bad_request("truncation_side needs truncate_prompt_tokens", "truncation_side")
    if body.use_beam_search:
        # The score divides by length ** length_penalty, which must stay a finite, non-zero float.
        penalty = body.length_penalty
        if not math.isfinite(penalty) or abs(penalty) * math.log(max(max_model_len, 2)) > 700:
            raise bad_request(f"length_penalty must be a finite number of magnitude at most "
                              f"{700 / math.log(max(max_model_len, 2)):.1f} for this model's context length, "
                              f"got {penalty}", "length_penalty")


def _constraints(body: SamplingRequest) -> dict[str, dict[str, Any]]:
    """{request field: StructuredOutputsParams fields} for each field that asks for a constraint."""
    given = {name: value for name, value in (("response_format", _from_response_format(body.response_format)),
                                             ("structured_outputs", body.structured_outputs))
             if value is not None}
    for name, kind in _GUIDED.items():
        if getattr(body, name) is not None:
            given[name] = {kind: getattr(body, name)}
            if body.guided_whitespace_pattern is not None:
                given[name]["whitespace_pattern"] = body.guided_whitespace_pattern
    return given


def renamed_fields(body: SamplingRequest) -> dict[str, str]:
    """The request's name for `structured_outputs` when the engine refuses the constraint (a schema it cannot
    compile): the field the client used, response_format or guided_json say."""
    given = _constraints(body)
    return {"structured_outputs": next(iter(given))} if len(given) == 1 else {}


def structured_outputs(body: SamplingRequest) -> Optional[StructuredOutputsParams]:
    """The constraint asked for by response_format, structured_outputs or a guided_* field (at most one)."""
    given = _constraints(body)
    if len(given) > 1:
        raise bad_request(f"give one output constraint, got {' and '.join(sorted(given))}", sorted(given)[0])
    if not given:
        return None
    [(param, spec)] = given.items()
    unknown = sorted(set(spec) - _STRUCTURED_KEYS)
    if unknown:
        raise bad_request(f"{param} has fields this server does not support: {unknown} "
                          f"(supported: {sorted(_STRUCTURED_KEYS)})", param)
    try:
        return StructuredOutputsParams(**spec)
    except (ValueError, TypeError) as exc:
        raise bad_request(f"{param}: {exc}", param) from None


def _from_response_format(response_format: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise bad_request("response_format of type json_schema needs json_schema.schema (a JSON schema object)",
                              "response_format")
        return {"json": schema}
    raise bad_request(f"response_format type {kind!r} is not supported (text, json_object or json_schema)",
                      "response_format")


def _logit_bias(bias: Optional[dict[str, float]]) -> Optional[dict[int, float]]:
    if bias is None:
        return None
    bad = [token for token in bias if not token.lstrip("-").isdigit()]
    if bad:
        raise bad_request(f"logit_bias keys must be token ids (integers as strings); not ids: {bad[:10]}",
                          "logit_bias")
    # NaN is passed on, for SamplingParams to refuse (clamping would turn it into +100).
    return {int(token): value if math.isnan(value) else max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, value))
            for token, value in bias.items()}


def to_sampling_params(body: SamplingRequest, *, defaults: dict[str, Any], requested_max_tokens: Optional[int],
                       prompt_len: int, max_model_len: int, logprobs: Optional[int],
                       output_kind: RequestOutputKind) -> SamplingParams:
    """SamplingParams for one prompt of `body`; raises ValueError/TypeError/OpenAIError for bad values."""
    values: dict[str, Any] = {name: defaults[name] for name in _COPIED_FIELDS if name in defaults}
    values.update({name: getattr(body, name) for name in _COPIED_FIELDS if getattr(body, name) is not None})
    caps = (max_model_len - prompt_len, requested_max_tokens, defaults.get("max_tokens"))
    values["max_tokens"] = min(cap for cap in caps if cap is not None)
    values.update(logprobs=logprobs, logit_bias=_logit_bias(body.logit_bias), output_kind=output_kind,
                  structured_outputs=structured_outputs(body), extra_args=body.vllm_xargs)
    return SamplingParams(**values)


def output_kind_for(body: SamplingRequest) -> RequestOutputKind:
    return RequestOutputKind.DELTA if body.stream else RequestOutputKind.FINAL_ONLY
