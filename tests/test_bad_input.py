"""Bad input gets a clear error naming what is wrong, and the engine keeps serving."""

import json

import pytest

from nbllm import LLM, SamplingParams
from nbllm.models.registry import UnsupportedArchitectureError


@pytest.mark.parametrize("field, value, error, words", [
    ("n", 0, ValueError, "n must be at least 1"),
    ("n", 1.5, TypeError, "n must be int"),
    ("temperature", -0.1, ValueError, "temperature"),
    ("temperature", "hot", TypeError, "temperature"),
    ("top_p", 0.0, ValueError, "top_p"),
    ("top_p", 1.5, ValueError, "top_p"),
    ("top_k", -2, ValueError, "top_k"),
    ("min_p", 1.5, ValueError, "min_p"),
    ("presence_penalty", 3.0, ValueError, "presence_penalty"),
    ("frequency_penalty", -2.5, ValueError, "frequency_penalty"),
    ("repetition_penalty", 0.0, ValueError, "repetition_penalty"),
    ("max_tokens", 0, ValueError, "max_tokens"),
    ("min_tokens", -1, ValueError, "min_tokens"),
    ("logprobs", -2, ValueError, "logprobs"),
    ("prompt_logprobs", -2, ValueError, "prompt_logprobs"),
    ("stop", [""], ValueError, "stop"),
    ("stop", 5, TypeError, "stop"),
    ("stop_token_ids", ["a"], TypeError, "stop_token_ids"),
    ("seed", "x", TypeError, "seed"),
    ("allowed_token_ids", [], ValueError, "allowed_token_ids"),
    ("logit_bias", [1, 2], TypeError, "logit_bias"),
    ("bad_words", [1], TypeError, "bad_words"),
    ("ignore_eos", "yes", TypeError, "ignore_eos"),
])
def test_invalid_sampling_params_name_the_field(field, value, error, words):
    with pytest.raises(error, match=words):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=3)


def _still_serves(llm):
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert out.finished and len(out.outputs[0].token_ids) >= 1
    assert llm.get_stats().num_blocks_used == 0


@pytest.mark.parametrize("call, error, words", [
    (lambda llm: llm.generate([], use_tqdm=False), ValueError, "empty"),
    (lambda llm: llm.generate("", use_tqdm=False), ValueError, "empty"),
    (lambda llm: llm.generate("word " * 400, use_tqdm=False), ValueError, "maximum context length is"),
    (lambda llm: llm.generate({"prompt_token_ids": [10**7]}, use_tqdm=False), ValueError, "vocabulary"),
    (lambda llm: llm.generate({"prompt_token_ids": ["a"]}, use_tqdm=False), TypeError, "prompt_token_ids"),
    (lambda llm: llm.generate({"text": "hi"}, use_tqdm=False), ValueError, "prompt"),
    (lambda llm: llm.generate(42, use_tqdm=False), TypeError, "prompt"),
    (lambda llm: llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False), ValueError, "SamplingParams"),
    (lambda llm: llm.generate("hi", SamplingParams(stop_token_ids=[10**7]), use_tqdm=False), ValueError,
     "stop_token_ids"),
    (lambda llm: llm.generate("hi", SamplingParams(logit_bias={10**7: 1.0}), use_tqdm=False), ValueError,
     "logit_bias"),
])
def test_bad_requests_raise_and_engine_survives(tiny_llm, call, error, words):
    with pytest.raises(error, match=words):
        call(tiny_llm)
    _still_serves(tiny_llm)


def test_bad_request_in_a_batch_submits_nothing(tiny_llm):
    with pytest.raises(ValueError):
        tiny_llm.generate(["fine", {"prompt_token_ids": [10**7]}], use_tqdm=False)
    assert not tiny_llm.llm_engine.has_unfinished_requests()
    _still_serves(tiny_llm)


def test_unknown_model_path():
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM("/no/such/model")


def test_unsupported_architecture_lists_supported(tiny_llama_path, tmp_path):
    folder = tmp_path / "weird"
    folder.mkdir()
    for f in tiny_llama_path.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FancyNewForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM"):
        LLM(str(folder))


def test_unknown_engine_argument(tiny_llama_path):
    with pytest.raises(TypeError, match="unknown engine arguments"):
        LLM(str(tiny_llama_path), gpu_mem=0.5)


@pytest.mark.parametrize("kwargs, words", [
    ({"dtype": "float8"}, "dtype"),
    ({"block_size": 12}, "block_size"),
    ({"max_model_len": 10**6}, "max_model_len"),
])
def test_bad_engine_settings(tiny_llama_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        LLM(str(tiny_llama_path), **kwargs)


def test_huge_top_k_is_clamped_to_the_vocabulary(tiny_llm):
    out = tiny_llm.generate("Hello", SamplingParams(top_k=10**30, max_tokens=3, seed=0), use_tqdm=False)[0]
    assert out.finished
