"""From a model name to config, tokenizer, generation defaults and weight tensors.

Accepted: a Hugging Face-format folder (config.json, *.safetensors sharded or not,
or pytorch_model*.bin, tokenizer files, generation_config.json), a .gguf file
(converted once into a cached folder), a Hugging Face hub id ("org/name", through
hub.py: cached or downloaded, only the files listed here), a GGUF file on the hub
("org/repo/file.gguf" or vLLM's "org/repo:QUANT"), or None for the embedded default.
Weights are streamed as (name, tensor) pairs from memory-mapped files; no
transformers model is ever built.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

from nbllm.hub import HubModelError, fetch_file, fetch_snapshot, is_repo_id

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt", "*.tiktoken",
                   "chat_template.jinja", "chat_template.json")
MODEL_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
SAFETENSORS_FILES = ("*.safetensors", "model.safetensors.index.json")
BIN_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# Mistral's repositories repeat the weights in their own format beside the transformers shards.
IGNORED_FILES = ("consolidated*.safetensors",)
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_model_path(model: Optional[str], revision: Optional[str] = None,
                       download_dir: Optional[str] = None) -> Path:
    """The local HF-format folder holding `model` (None: the default model)."""
    if model is None:
        from nbllm.default_model import default_model_path

        return default_model_path()
    name = str(model)
    path = Path(os.path.expanduser(name))
    if path.is_file() and path.suffix == ".gguf":
        return _converted_gguf_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path
    if (gguf_file := _hub_gguf_file(name)) is not None:
        return _converted_gguf_folder(fetch_file(*gguf_file, revision, download_dir))
    if (gguf_quant := _hub_gguf_quant(name)) is not None:
        return _converted_gguf_folder(_fetch_gguf_quant(*gguf_quant, revision, download_dir))
    if is_repo_id(name):
        return _fetch_model(name, revision, download_dir)
    raise FileNotFoundError(
        f"model {model!r} not found: nbllm loads a local Hugging Face-format folder, a .gguf file, or a Hugging "
        f"Face hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'; pass no model for the embedded default")


def resolve_tokenizer_path(tokenizer: Optional[str], model_path: Path, revision: Optional[str] = None,
                           download_dir: Optional[str] = None) -> Path:
    """The folder to load the tokenizer from: the model's own (None), a local folder, or a hub id."""
    if tokenizer is None:
        return model_path
    path = Path(os.path.expanduser(str(tokenizer)))
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return _converted_gguf_folder(path)
    if is_repo_id(str(tokenizer)):
        return fetch_snapshot(str(tokenizer), revision, download_dir, ("config.json", *TOKENIZER_FILES),
                              has_tokenizer)
    raise FileNotFoundError(f"tokenizer {tokenizer!r} not found: give a local folder or a Hugging Face hub id")


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def has_model(folder: Path) -> bool:
    """Whether `folder` holds a config and every weight file nbllm would read."""
    if not (folder / "config.json").is_file():
        return False
    try:
        return all(f.is_file() for f in weight_files(folder))
    except FileNotFoundError:
        return False


def _fetch_model(repo_id: str, revision: Optional[str], download_dir: Optional[str]) -> Path:
    """Config, tokenizer and weights of a hub model: safetensors, or .bin if the repository has none."""
    folder = fetch_snapshot(repo_id, revision, download_dir, (*MODEL_FILES, *SAFETENSORS_FILES), has_model,
                            IGNORED_FILES)
    if not has_model(folder) and (folder / "config.json").is_file():
        folder = fetch_snapshot(repo_id, revision, download_dir, BIN_FILES, has_model)
    if not has_model(folder):
        raise FileNotFoundError(f"the Hugging Face repository {repo_id!r} has no config.json with safetensors or "
                                f"pytorch_model.bin weights (a GGUF repository? name its file: "
                                f"'{repo_id}/<file>.gguf' or '{repo_id}:<QUANT>')")
    return folder


def _hub_gguf_file(name: str) -> Optional[tuple[str, str]]:
    """(repo id, file) for "org/repo/file.gguf" (the file may sit in a subfolder), else None."""
    parts = name.split("/")
    if len(parts) >= 3 and name.endswith(".gguf") and is_repo_id("/".join(parts[:2])):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return None


def _hub_gguf_quant(name: str) -> Optional[tuple[str, str]]:
    """(repo id, quantization) for vLLM's "org/repo:QUANT" (e.g. "unsloth/Qwen3-0.6B-GGUF:Q4_K_M"), else None."""
    repo_id, colon, quant = name.partition(":")
    return (repo_id, quant) if colon and quant and is_repo_id(repo_id) and "/" not in quant else None


def _fetch_gguf_quant(repo_id: str, quant: str, revision: Optional[str], download_dir: Optional[str]) -> Path:
    """The one .gguf file of the repository whose name ends in "-QUANT.gguf" (or ".QUANT", "_QUANT")."""
    patterns = tuple(f"*{sep}{quant}.gguf" for sep in "-._")
    folder = fetch_snapshot(repo_id, revision, download_dir, patterns, lambda f: len(_gguf_files(f, quant)) == 1)
    found = _gguf_files(folder, quant)
    if len(found) != 1:
        raise HubModelError(repo_id, "file_not_found", (
            f"'{repo_id}:{quant}' names {len(found)} .gguf files ({[f.name for f in found]}); nbllm needs exactly "
            f"one: name it as '{repo_id}/<file>.gguf'"))
    return found[0]


def _gguf_files(folder: Path, quant: str) -> list[Path]:
    return sorted(f for f in folder.glob("*.gguf") if any(f.name.endswith(f"{sep}{quant}.gguf") for sep in "-._"))


def _converted_gguf_folder(gguf_path: Path) -> Path:
    from nbllm.default_model import cache_dir
    from nbllm.gguf_convert import convert_gguf_to_hf_folder, link_gguf_source

    stat = gguf_path.stat()
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / "config.json").is_file():
        convert_gguf_to_hf_folder(gguf_path, target)
    link_gguf_source(target, gguf_path)  # folders converted before the link existed get it now
    return target


def load_hf_config(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)


def apply_hf_overrides(hf_config: Any, overrides: Union[dict, Callable[[Any], Any], None]) -> Any:
    """vLLM's hf_overrides: a function config -> config, or a dict of attributes to set.

    A dict value given for a nested config (such as `text_config`) updates that config.
    """
    if overrides is None:
        return hf_config
    if not isinstance(overrides, dict):
        return overrides(hf_config)
    from transformers import PretrainedConfig

    for key, value in overrides.items():
        current = getattr(hf_config, key, None)
        if isinstance(current, PretrainedConfig) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(hf_config, key, value)
    return hf_config


def load_tokenizer(path: Path, trust_remote_code: bool = False, tokenizer_mode: str = "auto") -> Any:
    """transformers' tokenizer; mode "slow" asks for the Python one (transformers 5 has only fast ones)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True,
                                         use_fast=tokenizer_mode != "slow")


def load_generation_config(path: Path) -> dict:
    """generation_config.json as a dict ({} when the folder has none)."""
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    with open(file) as f:
        return json.load(f)


def weight_files(path: Path) -> list[Path]:
    """The checkpoint files to read: those a shard index names, else safetensors, else PyTorch .bin."""
    for index in _INDEX_FILES:
        if (path / index).is_file():
            with open(path / index) as f:
                return [path / name for name in sorted(set(json.load(f)["weight_map"].values()))]
    safetensors = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("consolidated"))
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
    """Resolve the dtype setting: "auto" is float32 on CPU and the checkpoint's dtype elsewhere.

    Half precision on a CPU without instructions for it runs, but slower than float32: a warning says so.
    """
    if name != "auto":
        dtype = getattr(torch, name)
        if device.type == "cpu" and dtype in _FAST_HALF_CPU_FLAGS and not cpu_runs_fast(dtype):
            logger.warning("dtype=%r: this CPU has no %s instructions, so torch emulates them; it runs, but "
                           "slower than dtype='float32'", name, name)
        return dtype
    if device.type == "cpu":
        return torch.float32
    config_dtype = getattr(hf_config, "torch_dtype", None) or getattr(hf_config, "dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# CPU feature flags (x86 "flags", Arm "Features" in /proc/cpuinfo) that give native half-precision math.
_FAST_HALF_CPU_FLAGS = {torch.float16: frozenset({"avx512_fp16", "amx_fp16", "asimdhp"}),
                        torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16", "bf16"})}


def cpu_runs_fast(dtype: torch.dtype) -> bool:
    """Whether this CPU computes `dtype` natively; True where that cannot be read (not Linux)."""
    flags = cpu_flags()
    return flags is None or bool(flags & _FAST_HALF_CPU_FLAGS[dtype])


@lru_cache(maxsize=1)
def cpu_flags() -> Optional[frozenset[str]]:
    """The CPU feature flags listed in /proc/cpuinfo, or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)
