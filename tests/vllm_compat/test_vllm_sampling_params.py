"""SamplingParams and outputs, field for field with vLLM's offline API.

Each test names the vLLM behaviour it holds nbllm to; where vLLM's behaviour is
surprising, a comment says why we match it.
"""

import math

import pytest

from nbllm import SamplingParams
from nbllm.outputs import RequestOutput

FLOAT_FIELDS = ["presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(field, value):
    # vLLM fixed this as a security advisory (GHSA-7h4p-rffg-7823): NaN passes every range check.
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_logit_bias_is_rejected(value):
    with pytest.raises(ValueError, match=r"logit_bias\[7\] must be a finite number"):
        SamplingParams(logit_bias={7: value})


def test_vllm_fields_exist_with_vllm_defaults():
    params = SamplingParams()
    assert params.extra_args is None and params.flat_logprobs is False and params.logits_processors is None
    params = SamplingParams(extra_args={"trace": 1}, flat_logprobs=True, logprobs=-1, prompt_logprobs=-1)
    assert params.extra_args == {"trace": 1} and params.logprobs == -1 and params.prompt_logprobs == -1


def test_logits_processors_are_shared_by_copies_not_duplicated():
    class Stateful:
        def __init__(self):
            self.calls = 0

        def __call__(self, output_ids, logits):
            self.calls += 1
            return logits

    processor = Stateful()
    params = SamplingParams(logits_processors=[processor])
    assert params.clone().logits_processors[0] is processor
    assert params.updated(max_tokens=3).logits_processors[0] is processor


def test_logits_processors_must_be_callables():
    with pytest.raises(TypeError, match="logits_processors"):
        SamplingParams(logits_processors=[42])


def test_request_output_accepts_unknown_keyword_arguments():
    # vLLM's RequestOutput takes **kwargs so that newer callers do not break older versions.
    output = RequestOutput(request_id="r", prompt="p", prompt_token_ids=[1], prompt_logprobs=None, outputs=[],
                           finished=True, some_future_field=3)
    assert output.request_id == "r" and output.kv_transfer_params is None
