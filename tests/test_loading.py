"""Loading: sharded safetensors (by their index), pytorch_model.bin, a .gguf file, dtypes, generation_config modes."""

import json
import shutil

import pytest
import torch

from nbllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _tokens(llm, prompt="Once upon a time"):
    return llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


@pytest.fixture(scope="module")
def reference_tokens(tiny_llama_path):
    with LLM(str(tiny_llama_path), num_kv_blocks=32) as llm:
        return _tokens(llm)


def _resave(tiny_llama_path, folder, **save_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_path), dtype=torch.float32)
    model.save_pretrained(folder, **save_kwargs)
    AutoTokenizer.from_pretrained(str(tiny_llama_path)).save_pretrained(folder)
    return folder


def test_sharded_safetensors(tiny_llama_path, tmp_path, reference_tokens):
    folder = _resave(tiny_llama_path, tmp_path / "sharded", max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) > 1
    with LLM(str(folder), num_kv_blocks=32) as llm:
        assert _tokens(llm) == reference_tokens


def test_shard_index_decides_the_weight_files(tiny_llama_path, tmp_path, reference_tokens):
    """Mistral's repositories hold the weights twice, consolidated.safetensors beside the shards: read the shards."""
    from safetensors.torch import save_file

    from nbllm.loader import weight_files

    folder = _resave(tiny_llama_path, tmp_path / "sharded", max_shard_size="100KB")
    save_file({"not.a.model.weight": torch.zeros(2)}, folder / "consolidated.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert weight_files(folder) == sorted(folder / name for name in set(index["weight_map"].values()))
    with LLM(str(folder), num_kv_blocks=32) as llm:
        assert _tokens(llm) == reference_tokens
    (folder / "model.safetensors.index.json").unlink()
    assert folder / "consolidated.safetensors" not in weight_files(folder)


def test_pytorch_bin_checkpoint(tiny_llama_path, tmp_path, reference_tokens):
    folder = tmp_path / "bin"
    folder.mkdir()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_path), dtype=torch.float32)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "generation_config.json"):
        if (tiny_llama_path / name).exists():
            shutil.copy(tiny_llama_path / name, folder / name)
    with LLM(str(folder), num_kv_blocks=32) as llm:
        assert _tokens(llm) == reference_tokens


def test_gguf_file_loads_through_the_cache(tmp_path, monkeypatch):
    from test_gguf_convert import tiny_weights, write_tiny_gguf

    monkeypatch.setenv("NBLLM_CACHE_DIR", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_weights(tied=True))
    with LLM(str(path), num_kv_blocks=32) as llm:
        assert len(_tokens(llm, "hello")) == 8
        assert str(llm.llm_engine.model_path).startswith(str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_on_cpu(tiny_llama_path, reference_tokens, dtype, torch_dtype):
    with LLM(str(tiny_llama_path), dtype=dtype, num_kv_blocks=32) as llm:
        runner = llm.llm_engine.runner
        assert runner.kv_caches[0][0].dtype == torch_dtype
        assert next(runner.model.parameters()).dtype == torch_dtype
        tokens = _tokens(llm)
    assert len(tokens) == 8
    assert tokens[:2] == reference_tokens[:2]  # low precision may drift later, not at once


def test_generation_config_auto_and_vllm(tiny_llama_path, tmp_path):
    folder = tmp_path / "genconf"
    shutil.copytree(tiny_llama_path, folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.3, "top_p": 0.8, "top_k": 7, "repetition_penalty": 1.1, "max_new_tokens": 5,
         "eos_token_id": 0}))
    with LLM(str(folder), num_kv_blocks=32) as llm:
        params = llm.get_default_sampling_params()
        assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == \
               (0.3, 0.8, 7, 1.1, 5)
        out = llm.generate("Hello", use_tqdm=False)[0]  # no SamplingParams: the file's defaults apply
        assert len(out.outputs[0].token_ids) <= 5
    with LLM(str(folder), num_kv_blocks=32, generation_config="vllm") as llm:
        assert llm.get_default_sampling_params() == SamplingParams()
