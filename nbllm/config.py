"""EngineConfig: every engine setting in one plain dataclass.

Pure data plus validation; reading model files happens in loader.py and sizing the
KV pool in the model runner. Invalid settings raise ValueError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
GENERATION_CONFIG_MODES = ("auto", "vllm")

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30  # pages are touched lazily, so unused blocks cost no RSS


@dataclass
class EngineConfig:
    """Settings of one engine (names follow vLLM's engine arguments)."""

    model: Optional[str] = None  # None: the embedded default model
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    seed: int = 0
    max_model_len: Optional[int] = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: Optional[int] = None  # explicit KV pool budget (CPU or GPU)
    num_kv_blocks: Optional[int] = None  # overrides the budget: exactly this many blocks
    attention_backend: str = "auto"
    generation_config: str = "auto"
    trust_remote_code: bool = False
    enforce_eager: bool = False  # True: no CUDA graphs for decode steps (they apply on CUDA only)
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; None keeps torch's choice

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.generation_config not in GENERATION_CONFIG_MODES and not (
                isinstance(self.generation_config, str) and Path(self.generation_config).expanduser().is_dir()):
            raise ValueError(f"generation_config must be 'auto', 'vllm' or an existing folder holding "
                             f"generation_config.json, got {self.generation_config!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 1):
            raise ValueError(f"max_model_len must be a positive int, got {self.max_model_len!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError(f"num_kv_blocks must be at least 2 (one is the padding block), got {self.num_kv_blocks}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineConfig":
        """Build from keyword arguments, rejecting unknown names with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine arguments {unknown}; known: {sorted(known)}")
        return cls(**kwargs)
