"""Convert a llama.cpp GGUF file into a plain Hugging Face model folder.

The weights are read and dequantized with the ``gguf`` package, renamed to transformers'
parameter names and written as ``model.safetensors``; config, tokenizer and chat template come
from transformers' own GGUF readers. The folder appears whole or not at all: it is written next
to ``out_dir`` under a hidden temporary name and renamed into place at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Optional

import numpy as np
import torch
from gguf import GGUFReader
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize
from safetensors.torch import save_file

# GGUF architecture -> the transformers class that runs it. Only dense Llama-style decoders are
# mapped so far; anything else is refused rather than converted half-right.
SUPPORTED_ARCHITECTURES: Mapping[str, str] = MappingProxyType({"llama": "LlamaForCausalLM"})

_TOP_LEVEL_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    }
)
_BLOCK_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
)
GGUF_SOURCE_NAME = "model.gguf"  # in a converted folder: a link to the GGUF file it came from
_TENSOR_NAME = re.compile(r"(?:blk\.(?P<layer>\d+)\.)?(?P<module>\w+)\.(?P<kind>weight|bias)")


def convert_gguf_to_hf_folder(
    gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """Write ``out_dir`` as a transformers-loadable folder holding the model in ``gguf_path``.

    The folder holds ``config.json``, ``generation_config.json``, the tokenizer files (chat
    template included) and ``model.safetensors`` with weights dequantized to ``dtype``.
    Raises ``ValueError`` for an architecture other than those in ``SUPPORTED_ARCHITECTURES``
    and ``FileExistsError`` if ``out_dir`` already exists. Nothing touches the network.
    """
    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir).resolve()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or pick another folder")
    reader = GGUFReader(gguf_path)
    architecture = _required_field(reader, "general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {architecture!r} ({gguf_path.name}) is not supported; "
            f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Made with mkdir rather than tempfile.mkdtemp, whose 0700 mode would outlive the rename.
    tmp_dir = out_dir.parent / f"{_temporary_prefix(out_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        weights = read_hf_state_dict(reader, dtype)
        _write_config(gguf_path, tmp_dir, architecture, tied="lm_head.weight" not in weights, dtype=dtype)
        _write_tokenizer(gguf_path, reader, tmp_dir)
        _write_generation_config(reader, tmp_dir)
        save_file(weights, tmp_dir / "model.safetensors", metadata={"format": "pt"})
        link_gguf_source(tmp_dir, gguf_path)
        # safetensors writes 0600 whatever the umask; give it the mode its neighbours got.
        shutil.copymode(tmp_dir / "config.json", tmp_dir / "model.safetensors")
        tmp_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def link_gguf_source(folder: Path, gguf_path: Path) -> None:
    """Make ``folder/model.gguf`` a link to ``gguf_path`` (replacing a stale one atomically)."""
    link, target = folder / GGUF_SOURCE_NAME, Path(gguf_path).resolve()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = folder / f".{GGUF_SOURCE_NAME}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.symlink_to(target)
    os.replace(tmp, link)


def gguf_source(folder: Path) -> Optional[Path]:
    """The GGUF file a converted folder came from, or None (not converted, or the file is gone)."""
    link = Path(folder) / GGUF_SOURCE_NAME
    return link.resolve() if link.is_file() else None


def temporary_dirs(out_dir: str | Path) -> list[Path]:
    """The unfinished folders of conversions into ``out_dir``: running, or left by a killed process."""
    out_dir = Path(out_dir)
    return sorted(out_dir.parent.glob(f"{_temporary_prefix(out_dir)}*"))


def _temporary_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.tmp-"


def read_hf_state_dict(reader: GGUFReader, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of a Llama-architecture GGUF file, dequantized, under its transformers name."""
    state_dict: dict[str, torch.Tensor] = {}
    for hf_name, tensor, shape, rows in hf_tensors(reader):
        values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if rows is not None:
            values = values[rows]
        # The copy detaches the tensor from the read-only memory map of the file.
        state_dict[hf_name] = torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype)
    return state_dict


def hf_tensors(reader: GGUFReader) -> Iterator[tuple[str, ReaderTensor, tuple[int, ...], Optional[np.ndarray]]]:
    """(transformers name, GGUF tensor, torch shape, row order or None) for every tensor of a Llama file.

    The row order undoes llama.cpp's q/k permutation (``unpermute_rotary``): row i of the
    transformers weight is row ``rows[i]`` of the stored one, quantized or not.
    """
    architecture = _required_field(reader, "general.architecture")
    n_heads = _required_field(reader, f"{architecture}.attention.head_count")
    n_kv_heads = _field(reader, f"{architecture}.attention.head_count_kv") or n_heads
    for tensor in reader.tensors:
        hf_name = gguf_to_hf_name(tensor.name)
        # GGUF lists dimensions fastest-first (ne0, ne1, ...); torch wants them slowest-first.
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        rows = None
        if ".self_attn.q_proj." in hf_name:
            rows = unpermute_rotary(np.arange(shape[0]), n_heads)
        elif ".self_attn.k_proj." in hf_name:
            rows = unpermute_rotary(np.arange(shape[0]), n_kv_heads)
        yield hf_name, tensor, shape, rows


def gguf_to_hf_name(gguf_name: str) -> str:
    """The transformers parameter name for a Llama GGUF tensor name, e.g. ``blk.3.attn_q.weight``."""
    match = _TENSOR_NAME.fullmatch(gguf_name)
    if match is not None:
        layer, module, kind = match["layer"], match["module"], match["kind"]
        if layer is None and module in _TOP_LEVEL_NAMES:
            return f"{_TOP_LEVEL_NAMES[module]}.{kind}"
        if layer is not None and module in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[module]}.{kind}"
    # e.g. rope_freqs (Llama 3 rope scaling): silently dropping it would change the model.
    raise ValueError(f"GGUF tensor {gguf_name!r} has no transformers Llama equivalent")


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k projection rows.

    llama.cpp's converter stores each head's rows interleaved as (half, 2) pairs, for its
    GPT-J-style rotary, where transformers rotates the two halves of the head: its forward
    permutation is ``w.reshape(n_heads, 2, half, ...).swapaxes(1, 2)``, and this is its inverse
    (the same as transformers' ``LlamaTensorProcessor._reverse_permute_weights``).
    """
    half = weight.shape[0] // n_heads // 2
    # weight rows: [n_heads * half * 2] -> [n_heads, half, 2] -> [n_heads, 2, half]
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------------------------
# Metadata: config, tokenizer and generation defaults


def _field(reader: GGUFReader, key: str) -> object | None:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _required_field(reader: GGUFReader, key: str) -> object:
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF file lacks the metadata key {key!r}")
    return value


def _write_config(gguf_path: Path, out_dir: Path, architecture: str, tied: bool, dtype: torch.dtype) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    config.architectures = [SUPPORTED_ARCHITECTURES[architecture]]
    # The weights written decide this, not a guess: llama.cpp omits `output` when it is tied.
    config.tie_word_embeddings = tied
    config.dtype = dtype
    config.save_pretrained(out_dir)


def _write_tokenizer(gguf_path: Path, reader: GGUFReader, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    chat_template = _field(reader, "tokenizer.chat_template")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)


def _write_generation_config(reader: GGUFReader, out_dir: Path) -> None:
    from transformers import GenerationConfig

    def token_id(name: str) -> int | None:
        value = _field(reader, f"tokenizer.ggml.{name}_token_id")
        return None if value is None else int(value)

    # Chat models often end a turn with a distinct end-of-turn token; stop on either.
    stop_ids = [i for i in (token_id("eos"), token_id("eot"), token_id("eom")) if i is not None]
    stop_ids = list(dict.fromkeys(stop_ids))
    generation_config = GenerationConfig(
        bos_token_id=token_id("bos"),
        eos_token_id=stop_ids[0] if len(stop_ids) == 1 else (stop_ids or None),
        pad_token_id=token_id("padding"),
    )
    generation_config.save_pretrained(out_dir)
