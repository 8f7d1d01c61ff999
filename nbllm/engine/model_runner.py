"""Everything that touches tensors: weights, the KV pool, a step's inputs, forward and sampling.

The runner turns a SchedulerOutput into packed input tensors (decoding sequences
first, then prefill chunks), performs copy-on-write block copies, runs the model,
and samples one token for every request whose chunk reached its last token. It
also computes prompt logprobs for requests that ask for them.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import nn

from nbllm.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from nbllm.engine.block_manager import NULL_BLOCK_ID
from nbllm.engine.cpu_compile import CompiledDecode, compiled_decode_for
from nbllm.engine.cuda_graphs import decode_graph_runner_for
from nbllm.engine.scheduler import ScheduledRequest, SchedulerOutput
from nbllm.engine.step_result import StepResult
from nbllm.layers.attention import Attention
from nbllm.layers.attention_backend import AttentionMetadata
from nbllm.layers.attention_selector import get_attention_backend
from nbllm.layers.paged_attention import load_for as load_paged_attention_for
from nbllm.layers.packed_linear import prepack_linears
from nbllm.layers.quantized_linear import DENSE_MIN_ROWS, DenseProducts
from nbllm.layers.sampler import Sampler, SamplingRow
from nbllm.layers.torch_attention import TorchAttentionBackend
from nbllm.loader import iter_weights
from nbllm.models.registry import model_class_for
from nbllm.outputs import Logprob
from nbllm.quant.loading import build_quantized_model, resolve_quantization

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def build_model(hf_config: Any, model_path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Instantiate our model class without initialising weights, then load the checkpoint."""
    model_cls = model_class_for(hf_config)
    with torch.device("meta"):
        model = model_cls(hf_config)
    model = model.to(dtype).to_empty(device=device)
    for module in model.modules():  # buffers (rotary tables) were not materialised on meta
        if hasattr(module, "init_buffers"):
            module.init_buffers(device)
    model.load_weights(iter_weights(model_path))
    return model.eval()


class ModelRunner:
    def __init__(self, config: EngineConfig, hf_config: Any, model_path, device: torch.device,
                 dtype: torch.dtype, max_model_len: int):
        self.config = config
        self.hf_config = hf_config
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.quantized = False  # set by _load_model
        self.model: Optional[nn.Module] = self._load_model()
        self.dense_products = DenseProducts(self.model)
        self.weights_offloaded = False  # True while asleep with the weights moved to the CPU (CUDA, level 1)
        self.vocab_size = hf_config.vocab_size
        self.attention_backend = get_attention_backend(config.attention_backend, device)
        attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.num_layers = len(attn_layers)
        self.num_kv_heads = attn_layers[0].num_kv_heads
        self.head_dim = attn_layers[0].head_dim
        self.block_size = config.block_size
        self.num_blocks = self._decide_num_blocks(max_model_len)
        self.kv_caches = self._allocate_kv_caches()
        if isinstance(self.attention_backend, TorchAttentionBackend) and self.kv_caches:
            load_paged_attention_for(self.kv_caches[0][0])  # its decodes' kernel: built now, not mid-generation
        self.decode_graphs = self._capture_decode_graphs()
        self.compiled_decode = self._compiled_decode()
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed)
        self.sampler = Sampler(generator, config.logprobs_mode)

    def _load_model(self) -> nn.Module:
        quantization = resolve_quantization(self.config.quantization, self.config.dtype, self.model_path,
                                            self.device)
        self.quantized = quantization is not None
        if quantization is not None:
            return build_quantized_model(self.hf_config, self.model_path, quantization,
                                         dense_copies=self.config.dense_weight_copies)
        model = build_model(self.hf_config, self.model_path, self.dtype, self.device)
        if self.device.type == "cpu" and self.dtype == torch.float32:
            prepack_linears(model)  # oneDNN's packed layout: faster small matmuls on x86 CPUs
        return model

    def _capture_decode_graphs(self):
        return decode_graph_runner_for(
            self.model, self.kv_caches, self.attention_backend, enforce_eager=self.config.enforce_eager,
            device=self.device, block_size=self.block_size, max_num_seqs=self.config.max_num_seqs,
            max_model_len=self.max_model_len, log=logger.info)

    def _compiled_decode(self) -> Optional[CompiledDecode]:
        if self.decode_graphs is not None:
            return None
        return compiled_decode_for(self.model, self.config, self.device, self.quantized)

    # ----------------------------------------------------------------- sleep mode
    @property
    def is_sleeping(self) -> bool:
        return self._pool is None or self.model is None or self.weights_offloaded

    def sleep(self, level: int) -> None:
        """Free the KV pool; level 2 also frees the weights (reloaded from the checkpoint on wake-up).

        On CUDA, level 1 moves the weights to the CPU (vLLM's offload), freeing GPU memory.
        """
        self._drop_decode_graphs()
        self.kv_caches = []
        self._pool = None
        if level == 2:
            self.model = None
            self.dense_products = DenseProducts(None)
            self.compiled_decode = None
        elif self.device.type == "cuda" and self.model is not None:
            self.model.to("cpu")
            self.weights_offloaded = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Restore the weights and/or the KV pool ("weights", "kv_cache"; None: both)."""
        tags = ["weights", "kv_cache"] if tags is None else tags
        if "weights" in tags:
            if self.model is None:
                self.model = self._load_model()
                self.dense_products = DenseProducts(self.model)
                self.compiled_decode = self._compiled_decode()
            elif self.weights_offloaded:
                self.model.to(self.device)
            self.weights_offloaded = False
        if "kv_cache" in tags and self._pool is None:
            self.kv_caches = self._allocate_kv_caches()
        if self.decode_graphs is None and self.model is not None and self._pool is not None \
                and not self.weights_offloaded:
            self.decode_graphs = self._capture_decode_graphs()

    def _drop_decode_graphs(self) -> None:
        if self.decode_graphs is not None:
            self.decode_graphs.release()
            self.decode_graphs = None

    # ----------------------------------------------------------------- KV pool
    @property
    def bytes_per_block(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element

    def _decide_num_blocks(self, max_model_len: int) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        useful = self.config.max_num_seqs * (-(-max_model_len // self.block_size)) + 1
        if self.config.kv_cache_memory_bytes is not None:
            budget = self.config.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            activations = self.config.max_num_batched_tokens * self.vocab_size * 4 * 2
            budget = int(total * self.config.gpu_memory_utilization) - (total - free) - activations
        else:
            budget = DEFAULT_CPU_KV_CACHE_BYTES
            useful = min(useful, max(2, budget // self.bytes_per_block))
            return max(2, useful)
        num_blocks = budget // self.bytes_per_block
        if num_blocks < 2:
            raise ValueError(
                f"the KV cache budget ({budget} bytes) holds no block ({self.bytes_per_block} bytes each); "
                f"raise kv_cache_memory_bytes or gpu_memory_utilization")
        return int(num_blocks)

    def _allocate_kv_caches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (2, self.num_layers, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        pool = torch.empty(shape, dtype=self.dtype, device=self.device)  # pages are touched lazily
        pool[:, :, NULL_BLOCK_ID].zero_()
        self._pool = pool
        return [(pool[0, i], pool[1, i]) for i in range(self.num_layers)]

    def release(self) -> None:
        """Drop the model and the KV pool so their memory can be returned."""
        self._drop_decode_graphs()
        self.kv_caches = []
        self._pool = None
        self.model = None
        self.compiled_decode = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------- a step
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, rows: dict[str, SamplingRow]) -> dict[str, StepResult]:
        """Run one step; `rows` maps the request id of each sampling sequence to its sampling row.

        Returns a StepResult per scheduled sequence, keyed by its request id.
        """
        for src, dst in out.block_copies:
            self._pool[:, :, dst].copy_(self._pool[:, :, src])
        # Single-token chunks first: the attention backends batch them as decodes.
        scheduled = sorted(out.scheduled, key=lambda s: s.num_new_tokens != 1)
        input_ids, positions, meta = self._prepare_inputs(scheduled)
        self.dense_products.set(meta.num_decodes == meta.num_seqs >= DENSE_MIN_ROWS)
        if self.decode_graphs is not None and self.decode_graphs.can_run(meta):
            hidden = self.decode_graphs.run(input_ids, positions, meta)  # [T, H]
        elif self.compiled_decode is not None and self.compiled_decode.can_run(meta):
            hidden = self.compiled_decode.run(input_ids, positions, self.kv_caches, meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)

        results: dict[str, StepResult] = {}
        sample_index, sample_rows, offset = [], [], 0
        for item in scheduled:
            request = item.request
            key = request.request_id
            results[key] = StepResult()
            if request.sampling_params.prompt_logprobs is not None and request.is_prefilling_prompt:
                results[key].prompt_logprobs = self._prompt_logprobs(hidden[offset:offset + item.num_new_tokens], item)
            offset += item.num_new_tokens
            if item.samples_this_step:
                sample_index.append(offset - 1)
                sample_rows.append((key, rows[key]))
        if sample_rows:
            index = torch.tensor(sample_index, device=self.device)
            logits = self.model.compute_logits(hidden.index_select(0, index))
            sampled = self.sampler(logits[:, :self.vocab_size], [row for _, row in sample_rows])
            for i, (key, _) in enumerate(sample_rows):
                result = results[key]
                result.token_id = sampled.token_ids[i]
                result.logprob = sampled.logprobs[i]
                result.top_logprobs = sampled.top_logprobs[i]
        return results

    def _prepare_inputs(self, scheduled: list[ScheduledRequest]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, seq_lens, tables = [], [], []
        num_decodes = 0
        for item in scheduled:
            request = item.request
            start, n = request.num_computed_tokens, item.num_new_tokens
            if n == 1 and num_decodes == len(query_lens):
                num_decodes += 1
            input_ids += request.all_token_ids[start:start + n]
            positions += range(start, start + n)
            table = request.block_ids
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            query_lens.append(n)
            seq_lens.append(start + n)
            tables.append(table)
        max_blocks = max(len(t) for t in tables)
        padded = [t + [NULL_BLOCK_ID] * (max_blocks - len(t)) for t in tables]
        dev = self.device
        query_start = [0]
        for n in query_lens:
            query_start.append(query_start[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=dev),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            num_decodes=num_decodes,
            block_size=bs,
            backend=self.attention_backend,
        )
        self.attention_backend.prepare(meta)
        return (torch.tensor(input_ids, dtype=torch.int64, device=dev),
                torch.tensor(positions, dtype=torch.int64, device=dev), meta)

    def _prompt_logprobs(self, hidden: torch.Tensor, item: ScheduledRequest) -> list[Optional[dict[int, Logprob]]]:
        """Logprob entries for the prompt tokens this chunk predicts (position p predicts p + 1)."""
        request = item.request
        start = request.num_computed_tokens
        entries: list[Optional[dict[int, Logprob]]] = [None] if start == 0 else []
        last = min(start + item.num_new_tokens, request.num_prompt_tokens - 1)
        if last <= start:
            return entries
        logits = self.model.compute_logits(hidden[:last - start])[:, :self.vocab_size].float()
        logprobs = torch.log_softmax(logits, dim=-1)  # [n, V]
        targets = torch.tensor(request.prompt_token_ids[start + 1:last + 1], device=self.device)
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
        ranks = (logprobs > chosen[:, None]).sum(dim=-1) + 1
        k = request.sampling_params.prompt_logprobs
        k = self.vocab_size if k == -1 else k
        top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
        for j in range(last - start):
            entry = {int(targets[j]): Logprob(float(chosen[j]), int(ranks[j]))}
            if k:
                for r, (tid, value) in enumerate(zip(top_ids[j].tolist(), top_values[j].tolist())):
                    entry.setdefault(tid, Logprob(value, r + 1))
            entries.append(entry)
        return entries
