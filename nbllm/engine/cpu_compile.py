"""Decode steps on CPUs with the dense code between two attentions compiled by torch.compile (Inductor, C++).

A decode step is about 500 small operations around the matrix products (RMSNorm, rotary, residual
adds, SiLU, dtype conversions around the int4 kernel); Inductor fuses those between one layer's
attention and the next layer's into one region call. The KV-cache writes and the paged attention
stay eager, outside the regions: compiled, the writes into the pool would be functionalized into
copies (measured: a whole copy of the layer's cache each step). On TorchAttentionBackend the attention
itself moves into the regions (``attend_in_regions``: gathers, products and sums Inductor fuses, the
backend only storing keys and values between regions): single stream 77.8 against 65.5 tokens/s on the
default model, 2 sequences 130 against 98 (nbllm.layers.torch_attention.gathered_decode_attention). A
model opts in with a ``dense_regions`` attribute (nbllm.models.llama.DenseRegions), the ``regions`` and
``attend_in_regions`` arguments of its forward, ``warm_up_regions(regions, num_tokens)`` and
``warm_up_attending_regions(regions, kv_cache, batch_sizes, context_lengths)``; the region functions are
compiled once and shared by every layer (their modules are arguments, not constants).

Regions are compiled on the first decode-only step, for one token and for a symbolic batch size, so
later batch sizes never recompile; they serve batches below DENSE_MIN_ROWS only, from where quantized
linears may switch to their dense copies (that would be a second graph, compiled mid-serving, for steps
whose overhead their larger products dwarf); Inductor's caches (under nbllm's cache folder unless
``TORCHINDUCTOR_CACHE_DIR`` is set) make a later process load them instead of compiling again.
Without a C++ compiler, or when compiling fails, the engine warns once and runs eagerly.

On by default only where it was measured to help: CPUs, quantized weights (nbllm/quant). Off with
``enforce_eager=True``, ``compilation_config=0`` or ``NBLLM_COMPILE=0`` in the environment (the test
suite sets it); ``compilation_config=3`` (any level > 0) turns it on for float weights as well.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from nbllm.default_model import cache_dir
from nbllm.layers.attention_backend import AttentionMetadata, KVCache
from nbllm.layers.quantized_linear import DENSE_MIN_ROWS
from nbllm.layers.torch_attention import TorchAttentionBackend

logger = logging.getLogger(__name__)
ENV_SWITCH = "NBLLM_COMPILE"
_WARM_UP_SIZES = (1, 2, 3)  # 1 is specialized; the second size makes the batch dimension symbolic
_WARM_UP_CONTEXTS = (16, 32)  # the attending regions: the second length makes the context length symbolic


def compile_level(compilation_config: Optional[Union[int, dict]]) -> Optional[int]:
    """vLLM's compilation level (or mode) from its argument; None: not given, nbllm decides."""
    if isinstance(compilation_config, dict):
        level = compilation_config.get("level", compilation_config.get("mode"))
        return None if level is None else int(level)
    return compilation_config


def wants_compiled_decode(config: Any, device: torch.device, quantized: bool) -> bool:
    """Whether this engine compiles its decode steps (before knowing whether the model can)."""
    if device.type != "cpu" or config.enforce_eager:
        return False
    level = compile_level(config.compilation_config)
    if level is not None:
        return level > 0
    return quantized and os.environ.get(ENV_SWITCH, "1") != "0"


def find_cxx_compiler() -> Optional[str]:
    """The C++ compiler Inductor will call (``$CXX``, else g++, c++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def use_inductor_cache_under_nbllm() -> None:
    """Point Inductor's cache at `<nbllm cache>/inductor` unless the user chose a folder.

    Inductor writes its default (a folder in /tmp) into TORCHINDUCTOR_CACHE_DIR the first time any code asks
    for its cache folder, so a value equal to that default counts as not chosen.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")


class CompiledDecode:
    """The model's forward for decode-only steps, its dense regions compiled (see the module docstring)."""

    def __init__(self, model: nn.Module, compile_fn: Callable[..., Callable] = torch.compile):
        self.model = model
        self._compile_fn = compile_fn
        self._regions = None  # compiled on the first decode step
        self.failed = False  # compiling failed: eager from then on

    def can_run(self, meta: AttentionMetadata) -> bool:
        return not self.failed and meta.num_decodes == meta.num_seqs < DENSE_MIN_ROWS

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
            meta: AttentionMetadata) -> torch.Tensor:
        if self._regions is None:
            self._compile(kv_caches)
        if not self.failed:
            try:
                attend = isinstance(meta.backend, TorchAttentionBackend)
                return self.model(input_ids, positions, kv_caches, meta, self._regions, attend_in_regions=attend)
            except Exception as exc:  # a recompile that fails; rerunning rewrites the same cache slots
                self._give_up(exc)
        return self.model(input_ids, positions, kv_caches, meta)

    def _compile(self, kv_caches: list[KVCache]) -> None:
        use_inductor_cache_under_nbllm()
        eager = self.model.dense_regions
        regions = type(eager)(*(self._compile_fn(fn, fullgraph=True) for fn in eager))
        try:
            for size in _WARM_UP_SIZES:
                self.model.warm_up_regions(regions, size)
            self.model.warm_up_attending_regions(regions, kv_caches[0], _WARM_UP_SIZES, _WARM_UP_CONTEXTS)
        except Exception as exc:  # Inductor raises many kinds (no compiler, unsupported op, C++ errors)
            self._give_up(exc)
            return
        self._regions = regions  # only now: an interrupt during the compile leaves it to the next step

    def _give_up(self, exc: Exception) -> None:
        self.failed = True
        warnings.warn(f"nbllm: compiling the CPU decode step failed, running it eagerly ({exc!r:.300})",
                      RuntimeWarning, stacklevel=3)


def compiled_decode_for(model: nn.Module, config: Any, device: torch.device, quantized: bool
                        ) -> Optional[CompiledDecode]:
    """A CompiledDecode when this engine should and can compile its decode steps, else None (with a warning
    when it should but cannot)."""
    if not wants_compiled_decode(config, device, quantized) or getattr(model, "dense_regions", None) is None:
        return None
    if find_cxx_compiler() is None:
        warnings.warn("nbllm: no C++ compiler found (g++, c++ or clang++; or set CXX), so the CPU decode step "
                      "runs eagerly; `make system-deps` installs g++", RuntimeWarning, stacklevel=2)
        return None
    logger.info("CPU decode steps: dense regions compiled with torch.compile on the first decode step")
    return CompiledDecode(model)
