"""EngineConfig: every engine setting in one plain dataclass.

Pure data plus validation; reading model files happens in loader.py and sizing the
KV pool in the model runner. Names and defaults follow vLLM's EngineArgs, so vLLM code
runs unchanged: a vLLM argument set to its default is always accepted, and one nbllm
cannot honour (a second GPU, a pooling task) is refused by name. Invalid settings raise
ValueError (TypeError for a wrong type) naming the field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

# vLLM's dtype spellings -> the torch dtype name nbllm stores ("auto" is resolved by the loader).
DTYPE_ALIASES = {"auto": "auto", "half": "float16", "float16": "float16", "bfloat16": "bfloat16",
                 "float": "float32", "float32": "float32"}
QUANTIZATION_METHODS = (None, "gguf", "int8", "int4")  # weight-only, CPU (nbllm/quant)
ATTENTION_BACKENDS = ("auto", "torch", "triton")
GENERATION_CONFIG_MODES = ("auto", "vllm")
TASKS = ("auto", "generate")  # vLLM's pooling and transcription tasks need models nbllm does not run
RUNNERS = ("auto", "generate")
TOKENIZER_MODES = ("auto", "hf", "slow")  # "mistral" and "custom" need tokenizers other than transformers'
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")

# vLLM leaves these None to mean "its default"; None here means nbllm's default likewise.
NONE_MEANS_DEFAULT = ("block_size", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                      "attention_backend")

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30  # pages are touched lazily, so unused blocks cost no RSS

HfOverrides = Union[dict, Callable[[Any], Any]]


@dataclass
class EngineConfig:
    """Settings of one engine (names follow vLLM's engine arguments)."""

    # ----------------------------------------------------------------- model and tokenizer
    model: Optional[str] = None  # None: the embedded default; a folder, a .gguf file or a hub id
    tokenizer: Optional[str] = None  # None: the model's own
    revision: Optional[str] = None  # hub branch, tag or commit of the model (None: main)
    tokenizer_revision: Optional[str] = None  # of a separately named tokenizer (None: main)
    download_dir: Optional[str] = None  # Hugging Face cache folder (None: HF_HUB_CACHE)
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    hf_overrides: Optional[HfOverrides] = None  # dict set on the HF config, or a function config -> config
    task: str = "auto"
    runner: str = "auto"
    dtype: str = "auto"
    # None: as the checkpoint is (a .gguf loads its quantized blocks on CPUs unless dtype="float32");
    # "int8" / "int4": weight-only, groups of 32, quantized on load (CPU only; nbllm/quant)
    quantization: Optional[str] = None
    seed: Optional[int] = 0  # None: a random seed, drawn once here
    generation_config: str = "auto"
    override_generation_config: Optional[dict] = None  # merged over generation_config.json
    max_logprobs: int = 20
    logprobs_mode: str = "raw_logprobs"
    # ----------------------------------------------------------------- scheduling and KV cache
    max_model_len: Optional[int] = None
    block_size: int = 16
    max_num_seqs: int = 256
    scheduling_policy: str = "fcfs"  # "fcfs" or "priority" (generate(..., priority=...): lower runs first)
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: Optional[bool] = None  # nbllm always splits long prompts into chunks
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: Optional[int] = None  # explicit KV pool budget (CPU or GPU)
    num_kv_blocks: Optional[int] = None  # overrides the budget: exactly this many blocks
    num_gpu_blocks_override: Optional[int] = None  # vLLM's name for num_kv_blocks
    swap_space: float = 4  # GiB in vLLM; nbllm preempts by recomputation, so nothing is swapped
    cpu_offload_gb: float = 0  # nbllm keeps all weights on the device it runs on
    # ----------------------------------------------------------------- execution
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    attention_backend: str = "auto"
    enforce_eager: bool = False  # True: no CUDA graphs (CUDA) and no compiled decode steps (CPU)
    max_seq_len_to_capture: int = 8192  # nbllm's decode graphs cover every length up to max_model_len
    # vLLM's level (or a dict with "level"/"mode"): 0 runs CPU decode steps eagerly, > 0 compiles their dense
    # regions (nbllm/engine/cpu_compile.py); None: compiled for quantized CPU models unless NBLLM_COMPILE=0
    compilation_config: Optional[Union[int, dict]] = None
    num_threads: Optional[int] = None  # torch intra-op threads on CPU; None keeps torch's choice
    # nbllm's own: quantized CPU linears also keep bfloat16 copies of their weights (2 bytes a weight) for decode
    # steps of 12 or more sequences, which then see bfloat16-rounded weights; None: where the CPU has bfloat16
    # instructions and the copies take at most 1 GiB (nbllm/quant/loading.py)
    dense_weight_copies: Optional[bool] = None
    disable_log_stats: bool = False  # nbllm logs no periodic stats; get_stats() works either way

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in NONE_MEANS_DEFAULT and getattr(self, f.name) is None:
                setattr(self, f.name, f.default)
        self._check_choices()
        self._check_model_options()
        self._check_sizes()
        if self.num_gpu_blocks_override is not None:
            if self.num_kv_blocks not in (None, self.num_gpu_blocks_override):
                raise ValueError(f"num_gpu_blocks_override={self.num_gpu_blocks_override} and num_kv_blocks="
                                 f"{self.num_kv_blocks} disagree; they are one setting, give one of them")
            self.num_kv_blocks = self.num_gpu_blocks_override
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError(f"num_kv_blocks must be at least 2 (one is the padding block), got {self.num_kv_blocks}")
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**63)

    def _check_choices(self) -> None:
        dtype = self.dtype if isinstance(self.dtype, str) else str(self.dtype).removeprefix("torch.")
        if dtype not in DTYPE_ALIASES:
            raise ValueError(f"dtype must be one of {tuple(DTYPE_ALIASES)}, got {self.dtype!r}")
        self.dtype = DTYPE_ALIASES[dtype]
        if self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS}, got {self.quantization!r}")
        for name, allowed, why in (
                ("task", TASKS, "nbllm runs generative (decoder-only) models only"),
                ("runner", RUNNERS, "nbllm runs generative (decoder-only) models only"),
                ("tokenizer_mode", TOKENIZER_MODES, "nbllm loads tokenizers with transformers"),
                ("logprobs_mode", LOGPROBS_MODES, "vLLM's logprobs modes"),
                ("attention_backend", ATTENTION_BACKENDS, "nbllm's attention backends")):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed} ({why}), got {getattr(self, name)!r}")
        if self.generation_config not in GENERATION_CONFIG_MODES and not (
                isinstance(self.generation_config, str) and Path(self.generation_config).expanduser().is_dir()):
            raise ValueError(f"generation_config must be 'auto', 'vllm' or an existing folder holding "
                             f"generation_config.json, got {self.generation_config!r}")

    def _check_model_options(self) -> None:
        overrides = self.override_generation_config
        if overrides is not None and not (isinstance(overrides, dict) and all(isinstance(k, str) for k in overrides)):
            raise TypeError(f"override_generation_config must be a dict with str keys, got {overrides!r}")
        if self.hf_overrides is not None and not (isinstance(self.hf_overrides, dict) or callable(self.hf_overrides)):
            raise TypeError(f"hf_overrides must be a dict or a function of the HF config, got {self.hf_overrides!r}")
        if self.compilation_config is not None and (
                isinstance(self.compilation_config, bool) or not isinstance(self.compilation_config, (int, dict))):
            raise TypeError(f"compilation_config must be an int level or a dict, got {self.compilation_config!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise TypeError(f"seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.max_logprobs, int) or isinstance(self.max_logprobs, bool) or self.max_logprobs < -1:
            raise ValueError(f"max_logprobs must be an int >= -1 (-1: the whole vocabulary), got {self.max_logprobs!r}")

    def _check_sizes(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            if value > 1:
                raise ValueError(f"{name}={value} is not supported: nbllm runs a model on one device "
                                 f"(leave {name} at 1)")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_seq_len_to_capture"):
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
        for name in ("swap_space", "cpu_offload_gb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineConfig":
        """Build from keyword arguments, rejecting unknown names with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine arguments {unknown}; known: {sorted(known)}")
        return cls(**kwargs)
