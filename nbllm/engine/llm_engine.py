"""LLMEngine: the loaded model and the three roles around it, built from an EngineConfig.

`LLMEngine.from_config` does the file I/O (config, tokenizer, generation config,
weights), picks device, dtype and threads, and sizes the context window to the KV
pool. The engine itself is the composition vLLM v1 uses: an InputProcessor (caller's
thread: validate, tokenize), an EngineCore (engine thread: schedule, run, and its
OutputProcessor: stop checks, detokenize, outputs). The constructor takes built parts,
so tests can assemble an engine around a fake model runner.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from nbllm.config import EngineConfig
from nbllm.engine.core import EngineCore, ModelExecutor
from nbllm.engine.grammar import GrammarCompiler
from nbllm.engine.input_processor import InputProcessor
from nbllm.loader import (apply_hf_overrides, load_generation_config, load_hf_config, load_tokenizer,
                          resolve_model_path, resolve_tokenizer_path, torch_dtype)
from nbllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# generation_config.json key -> SamplingParams field, the keys vLLM's get_diff_sampling_param reads.
GENERATION_CONFIG_FIELDS = {"repetition_penalty": "repetition_penalty", "temperature": "temperature",
                            "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "max_new_tokens": "max_tokens",
                            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                            "skip_special_tokens": "skip_special_tokens"}


class LLMEngine:
    def __init__(self, config: EngineConfig, runner: ModelExecutor, tokenizer: Any, max_model_len: int,
                 eos_token_ids: frozenset[int], generation_config: Optional[dict] = None,
                 model_path: Optional[Path] = None):
        self.config = config
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.generation_config = generation_config or {}
        self.model_path = model_path
        self.grammars = (GrammarCompiler(tokenizer, runner.vocab_size, eos_token_ids)  # structured outputs' cache
                         if tokenizer is not None else None)
        self.input_processor = InputProcessor(tokenizer, runner.vocab_size, max_model_len, self.grammars,
                                              config.max_logprobs)
        self.core = EngineCore(config, runner, tokenizer, max_model_len, eos_token_ids)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLMEngine":
        """Load the model named by the config (call in the thread that will step the engine)."""
        from nbllm.engine.model_runner import ModelRunner, resolve_device

        model_path = resolve_model_path(config.model, config.revision, config.download_dir)
        hf_config = apply_hf_overrides(load_hf_config(model_path, config.trust_remote_code), config.hf_overrides)
        tokenizer = None  # skip_tokenizer_init: token ids in, token ids out
        if not config.skip_tokenizer_init:
            tokenizer_path = resolve_tokenizer_path(config.tokenizer, model_path, config.tokenizer_revision,
                                                    config.download_dir)
            tokenizer = load_tokenizer(tokenizer_path, config.trust_remote_code, config.tokenizer_mode)
        generation_config = load_generation_config(Path(config.generation_config).expanduser()
                                                   if config.generation_config not in ("auto", "vllm") else model_path)
        generation_config.update(config.override_generation_config or {})
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        device = resolve_device(config.device)
        dtype = torch_dtype(config.dtype, hf_config, device)
        max_model_len = derive_max_model_len(hf_config, config.max_model_len)
        runner = ModelRunner(config, hf_config, model_path, device, dtype, max_model_len)
        pool_tokens = (runner.num_blocks - 1) * config.block_size
        if pool_tokens < max_model_len:
            logger.warning("max_model_len lowered from %d to %d to fit the KV pool", max_model_len, pool_tokens)
            max_model_len = pool_tokens
        eos = eos_token_ids(generation_config, hf_config, tokenizer)
        return cls(config, runner, tokenizer, max_model_len, eos, generation_config, model_path)

    # ----------------------------------------------------------------- read-only views
    @property
    def runner(self) -> ModelExecutor:
        return self.core.runner

    @property
    def vocab_size(self) -> int:
        return self.core.runner.vocab_size

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json defaults and override_generation_config
        over them; mode "vllm" ignores the file and takes override_generation_config alone (as vLLM does)."""
        source = (self.config.override_generation_config or {} if self.config.generation_config == "vllm"
                  else self.generation_config)
        overrides = {ours: source[theirs] for theirs, ours in GENERATION_CONFIG_FIELDS.items()
                     if source.get(theirs) is not None}
        return SamplingParams(**overrides)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        """vLLM's name: requests queued or running (read from another thread, a moment's picture)."""
        return self.core.get_num_unfinished_requests()


def derive_max_model_len(hf_config: Any, requested: Optional[int]) -> int:
    """The context window: the model's position limit, or less if asked (more is an error)."""
    limits = [getattr(hf_config, name) for name in ("max_position_embeddings", "n_positions", "max_sequence_length")
              if isinstance(getattr(hf_config, name, None), int)]
    model_limit = min(limits) if limits else 2048
    if requested is None:
        return model_limit
    if requested > model_limit:
        raise ValueError(f"max_model_len={requested} exceeds the model's maximum of {model_limit} positions")
    return requested


def eos_token_ids(generation_config: dict, hf_config: Any, tokenizer: Any) -> frozenset[int]:
    """Every end-of-sequence id the generation config, the model config and the tokenizer name."""
    ids: set[int] = set()
    for source in (generation_config.get("eos_token_id"), getattr(hf_config, "eos_token_id", None),
                   tokenizer.eos_token_id if tokenizer is not None else None):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)
