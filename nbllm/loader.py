"""From a model name on disk to config, tokenizer, generation defaults and weight tensors.

Accepted: a Hugging Face-format folder (config.json, *.safetensors sharded or not,
or pytorch_model*.bin, tokenizer files, generation_config.json), a .gguf file
(converted once into a cached folder), or None for the embedded default model.
Nothing is downloaded: a name that is not a local path is an error that says so.
Weights are streamed as (name, tensor) pairs from memory-mapped files; no
transformers model is ever built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def resolve_model_path(model: Optional[str]) -> Path:
    """The local HF-format folder holding `model` (None: the default model)."""
    if model is None:
        from nbllm.default_model import default_model_path

        return default_model_path()
    path = Path(os.path.expanduser(str(model)))
    if path.is_file() and path.suffix == ".gguf":
        return _converted_gguf_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path
    raise FileNotFoundError(
        f"model {model!r} not found: nbllm loads a local Hugging Face-format folder or a .gguf file "
        f"(no model hub is contacted); pass a path, or no model for the embedded default")


def _converted_gguf_folder(gguf_path: Path) -> Path:
    from nbllm.default_model import cache_dir
    from nbllm.gguf_convert import convert_gguf_to_hf_folder

    stat = gguf_path.stat()
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / "config.json").is_file():
        convert_gguf_to_hf_folder(gguf_path, target)
    return target


def load_hf_config(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)


def load_generation_config(path: Path) -> dict:
    """generation_config.json as a dict ({} when the folder has none)."""
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    with open(file) as f:
        return json.load(f)


def weight_files(path: Path) -> list[Path]:
    """The checkpoint files to read: safetensors preferred, then PyTorch .bin."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    bins = sorted(p for p in path.glob("*.bin") if p.name != "training_args.bin")
    if bins:
        return bins
    raise FileNotFoundError(f"no *.safetensors or *.bin weights in {path}")


def iter_weights(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, memory-mapped where possible."""
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
            yield from state.items()


def torch_dtype(name: str, hf_config: Any, device: torch.device) -> torch.dtype:
    """Resolve the dtype setting: "auto" is float32 on CPU and the checkpoint's dtype elsewhere."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32
    config_dtype = getattr(hf_config, "torch_dtype", None) or getattr(hf_config, "dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
