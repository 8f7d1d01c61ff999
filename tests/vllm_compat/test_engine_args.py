"""vLLM's engine arguments: what single-machine vLLM code passes to `LLM(...)` works unchanged.

Every argument at vLLM's default is accepted; arguments nbllm cannot honour (a second GPU,
a pooling task) are refused by name; the rest are applied or, where documented as such,
accepted and stored. Most checks build an EngineConfig (fast); a few load the tiny model.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from nbllm import LLM, SamplingParams
from nbllm.config import EngineConfig
from nbllm.loader import apply_hf_overrides, load_tokenizer, torch_dtype

# Each argument at the value vLLM's EngineArgs (or its LLM class) gives it when left out. vLLM spells several
# "pick the default" as None (block_size, max_num_seqs, enable_prefix_caching, ...): nbllm takes None the same way.
VLLM_DEFAULTS = dict(
    model=None, tokenizer=None, revision=None, tokenizer_revision=None, download_dir=None, tokenizer_mode="auto",
    skip_tokenizer_init=False, trust_remote_code=False, hf_overrides={}, task="auto", runner="auto", dtype="auto",
    seed=0, generation_config="auto", override_generation_config={}, max_logprobs=20, logprobs_mode="raw_logprobs",
    max_model_len=None, block_size=None, max_num_seqs=None, max_num_batched_tokens=None,
    enable_chunked_prefill=None, enable_prefix_caching=None, gpu_memory_utilization=0.9, kv_cache_memory_bytes=None,
    num_gpu_blocks_override=None, swap_space=4, cpu_offload_gb=0, tensor_parallel_size=1, pipeline_parallel_size=1,
    attention_backend=None, enforce_eager=False, max_seq_len_to_capture=8192, compilation_config=None,
    disable_log_stats=False,
)


def test_every_vllm_default_is_accepted_and_means_nbllms_default():
    assert EngineConfig.from_kwargs(**VLLM_DEFAULTS) == EngineConfig(hf_overrides={}, override_generation_config={})


def test_unknown_argument_lists_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown engine arguments \['gpu_mem'\]; known: .*tensor_parallel_size"):
        EngineConfig.from_kwargs(gpu_mem=0.5)


# ----------------------------------------------------------------------------- refused by name
@pytest.mark.parametrize("task", ["auto", "generate"])
def test_generate_task_accepted(task):
    assert EngineConfig(task=task).task == task


@pytest.mark.parametrize("name, value", [("task", "embed"), ("task", "classify"), ("task", "score"),
                                         ("task", "reward"), ("task", "transcription"), ("runner", "pooling"),
                                         ("runner", "draft")])
def test_pooling_tasks_and_runners_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"{name} must be one of .*generative.*got '{value}'"):
        EngineConfig(**{name: value})


@pytest.mark.parametrize("name", ["tensor_parallel_size", "pipeline_parallel_size"])
def test_more_than_one_device_is_a_clear_error(name):
    assert getattr(EngineConfig(**{name: 1}), name) == 1
    with pytest.raises(ValueError, match=f"{name}=2 is not supported: nbllm runs a model on one device"):
        EngineConfig(**{name: 2})
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        EngineConfig(**{name: 0})


def test_tensor_parallel_error_reaches_the_llm_caller(tiny_llama_path):
    with pytest.raises(ValueError, match="tensor_parallel_size=4"):
        LLM(str(tiny_llama_path), tensor_parallel_size=4)


# ----------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("value, stored", [("auto", "auto"), ("half", "float16"), ("float16", "float16"),
                                           ("bfloat16", "bfloat16"), ("float", "float32"), ("float32", "float32"),
                                           (torch.float16, "float16"), (torch.bfloat16, "bfloat16")])
def test_dtype_aliases(value, stored):
    assert EngineConfig(dtype=value).dtype == stored


@pytest.mark.parametrize("value", ["float8", "int8", "fp16", torch.int8])
def test_unknown_dtype_lists_the_accepted_ones(value):
    with pytest.raises(ValueError, match="dtype must be one of .*'half'"):
        EngineConfig(dtype=value)


@pytest.mark.parametrize("flags, dtype, warns", [
    (frozenset({"avx2"}), "float16", True), (frozenset({"avx2"}), "bfloat16", True),
    (frozenset({"avx512_fp16"}), "float16", False), (frozenset({"amx_bf16"}), "bfloat16", False),
    (frozenset({"asimdhp"}), "float16", False), (None, "float16", False), (frozenset(), "float32", False),
])
def test_half_precision_on_a_cpu_without_it_warns(monkeypatch, caplog, flags, dtype, warns):
    monkeypatch.setattr("nbllm.loader.cpu_flags", lambda: flags)
    with caplog.at_level(logging.WARNING, logger="nbllm.loader"):
        assert torch_dtype(dtype, None, torch.device("cpu")) == getattr(torch, dtype)
    assert ("slower than dtype='float32'" in caplog.text) is warns


def test_half_precision_runs_on_any_cpu(monkeypatch, caplog, tiny_llama_path):
    monkeypatch.setattr("nbllm.loader.cpu_flags", lambda: frozenset())  # a CPU with no half-precision math
    with caplog.at_level(logging.WARNING, logger="nbllm.loader"), \
            LLM(str(tiny_llama_path), dtype="half", num_kv_blocks=32) as llm:
        out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
        assert llm.llm_engine.runner.dtype == torch.float16
    assert len(out.outputs[0].token_ids) == 4
    assert "dtype='float16'" in caplog.text


# ----------------------------------------------------------------------------- accepted and stored
@pytest.mark.parametrize("name, values", [
    ("enable_chunked_prefill", [None, True, False]),
    ("disable_log_stats", [True, False]),
    ("skip_tokenizer_init", [True, False]),
    ("max_logprobs", [20, 0, 5, -1]),
    ("logprobs_mode", ["raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"]),
    ("tokenizer_mode", ["auto", "slow", "hf"]),
    ("revision", [None, "main", "0123456789abcdef0123456789abcdef01234567"]),
    ("tokenizer_revision", [None, "v1"]),
    ("download_dir", [None, "/tmp/models"]),
    ("max_seq_len_to_capture", [8192, 1]),
    ("compilation_config", [None, 0, 3, {"level": 3, "cudagraph_capture_sizes": [1, 2, 4]}]),
    ("swap_space", [0, 4, 16.5]),
    ("cpu_offload_gb", [0, 2.5]),
    ("seed", [0, 1234]),
])
def test_accepted_values_are_stored(name, values):
    for value in values:
        assert getattr(EngineConfig(**{name: value}), name) == value


@pytest.mark.parametrize("name, value, error, words", [
    ("max_logprobs", -2, ValueError, "max_logprobs must be an int >= -1"),
    ("max_logprobs", 1.5, ValueError, "max_logprobs"),
    ("logprobs_mode", "logits", ValueError, "logprobs_mode must be one of .*'processed_logits'"),
    ("tokenizer_mode", "mistral", ValueError, "tokenizer_mode must be one of .*transformers"),
    ("tokenizer_mode", "custom", ValueError, "tokenizer_mode"),
    ("max_seq_len_to_capture", 0, ValueError, "max_seq_len_to_capture must be a positive int"),
    ("compilation_config", "O3", TypeError, "compilation_config must be an int level or a dict"),
    ("compilation_config", True, TypeError, "compilation_config"),
    ("swap_space", -1, ValueError, "swap_space must be a number >= 0"),
    ("cpu_offload_gb", "2", ValueError, "cpu_offload_gb"),
    ("seed", "x", TypeError, "seed must be an int or None"),
    ("seed", True, TypeError, "seed"),
    ("override_generation_config", [("temperature", 0.5)], TypeError, "override_generation_config must be a dict"),
    ("hf_overrides", "max_position_embeddings=128", TypeError, "hf_overrides must be a dict or a function"),
    ("num_gpu_blocks_override", 1, ValueError, "num_kv_blocks must be at least 2"),
])
def test_invalid_values_name_the_argument(name, value, error, words):
    with pytest.raises(error, match=words):
        EngineConfig(**{name: value})


def test_seed_none_draws_a_random_seed():
    seeds = {EngineConfig(seed=None).seed for _ in range(3)}
    assert all(isinstance(seed, int) for seed in seeds) and len(seeds) == 3


def test_num_gpu_blocks_override_is_num_kv_blocks(tiny_llama_path):
    assert EngineConfig(num_gpu_blocks_override=40).num_kv_blocks == 40
    assert EngineConfig(num_gpu_blocks_override=40, num_kv_blocks=40).num_kv_blocks == 40
    with pytest.raises(ValueError, match="num_gpu_blocks_override=40 and num_kv_blocks=50 disagree"):
        EngineConfig(num_gpu_blocks_override=40, num_kv_blocks=50)
    with LLM(str(tiny_llama_path), num_gpu_blocks_override=24) as llm:
        assert llm.llm_engine.runner.num_blocks == 24


def test_slow_tokenizer_mode_loads_a_tokenizer(tiny_llama_path):
    tokenizer = load_tokenizer(tiny_llama_path, tokenizer_mode="slow")
    assert tokenizer.decode(tokenizer.encode("Once upon a time")) == "Once upon a time"


# ----------------------------------------------------------------------------- applied
def test_hf_overrides_dict_or_function_change_the_model_config(tiny_llama_path):
    with LLM(str(tiny_llama_path), hf_overrides={"max_position_embeddings": 128}, num_kv_blocks=64) as llm:
        assert llm.max_model_len == 128
    from transformers import AutoConfig, Qwen2VLConfig

    def halve_layers(config):
        config.num_hidden_layers = 1
        return config

    assert apply_hf_overrides(AutoConfig.from_pretrained(tiny_llama_path), halve_layers).num_hidden_layers == 1
    nested = apply_hf_overrides(Qwen2VLConfig(), {"text_config": {"max_position_embeddings": 64}, "extra_field": 1})
    assert nested.text_config.max_position_embeddings == 64 and nested.extra_field == 1


@pytest.fixture
def model_with_generation_config(tiny_llama_path, tmp_path):
    folder = tmp_path / "genconf"
    shutil.copytree(tiny_llama_path, folder)
    (folder / "generation_config.json").write_text(json.dumps({"top_k": 7, "temperature": 0.3, "eos_token_id": 0}))
    return folder


def test_override_generation_config_merges_over_the_file(model_with_generation_config):
    overrides = {"temperature": 0.5, "max_new_tokens": 5}
    with LLM(str(model_with_generation_config), override_generation_config=overrides, num_kv_blocks=32) as llm:
        params = llm.get_default_sampling_params()
        assert (params.temperature, params.top_k, params.max_tokens) == (0.5, 7, 5)
        assert len(llm.generate("Hello", use_tqdm=False)[0].outputs[0].token_ids) <= 5
        assert llm.llm_engine.generation_config["top_k"] == 7
    # vLLM: with generation_config="vllm" the file is ignored and the overrides alone apply.
    with LLM(str(model_with_generation_config), generation_config="vllm", override_generation_config=overrides,
             num_kv_blocks=32) as llm:
        assert llm.get_default_sampling_params() == SamplingParams(temperature=0.5, max_tokens=5)


def test_vllm_style_arguments_together(tiny_llama_path):
    """Engine arguments as vLLM example code passes them, all at once, on the tiny model."""
    with LLM(model=str(tiny_llama_path), task="generate", runner="generate", tensor_parallel_size=1,
             pipeline_parallel_size=1, dtype="float", seed=None, enable_chunked_prefill=True, disable_log_stats=True,
             max_logprobs=5, logprobs_mode="raw_logprobs", tokenizer_mode="auto", swap_space=0, cpu_offload_gb=0,
             enforce_eager=True, max_seq_len_to_capture=256, compilation_config=0, num_gpu_blocks_override=32,
             gpu_memory_utilization=0.9, trust_remote_code=False) as llm:
        out = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
