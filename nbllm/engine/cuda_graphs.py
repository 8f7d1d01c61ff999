"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode-only step (every scheduled sequence adds exactly one token) has the same
shape for every step with the same batch size, so its whole forward pass (all
layers, the cache writes and the paged attention kernels) can be recorded once as a
CUDA graph and replayed with one launch instead of hundreds. The model reads its
inputs from static buffers owned here; a step of n sequences copies its inputs into
the first n rows and replays the graph of the smallest bucket >= n. The padding rows
write nowhere (slot -1) and attend to nothing (length 0), so they cannot disturb the
cache or the real rows.

Only the Triton attention backend can be captured: its decode kernel takes the
split count as an argument (fixed here from max_model_len), where the PyTorch backend
sizes tensors from the step's longest context on the host.

``DecodeGraphRunner(..., use_graphs=False)`` runs the same static-buffer and padding
path eagerly; the tests use it on CPUs, where there are no CUDA graphs.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from nbllm.layers.attention_backend import AttentionBackend, AttentionMetadata, KVCache


def batch_size_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, every 32 up to 256, every 64 up to 512; capped at max_num_seqs."""
    sizes = [1, 2, 4] + list(range(8, 64, 8)) + list(range(64, 256, 32)) + list(range(256, 513, 64))
    capped = [s for s in sizes if s < max_num_seqs] + [min(max_num_seqs, 512)]
    return sorted(set(capped))


class DecodeGraphRunner:
    """The model's forward for decode-only steps of up to ``max(buckets)`` sequences."""

    def __init__(self, model: nn.Module, kv_caches: list[KVCache], backend: AttentionBackend, *,
                 block_size: int, max_num_seqs: int, max_model_len: int, device: torch.device,
                 use_graphs: bool = True):
        if not backend.supports_cuda_graphs:
            raise ValueError(f"the {backend.name!r} attention backend cannot be captured in CUDA graphs")
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.block_size = block_size
        self.buckets = batch_size_buckets(max_num_seqs)
        self.use_graphs = use_graphs
        max_bs = self.buckets[-1]
        max_blocks = -(-max_model_len // block_size)
        self.max_model_len = max_model_len
        self.input_ids = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        if use_graphs:
            self._capture_all()

    # ----------------------------------------------------------------- capture
    def _metadata(self, batch: int) -> AttentionMetadata:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch],
            query_start_loc=self.query_start_loc[:batch + 1],
            seq_lens=self.seq_lens[:batch],
            block_tables=self.block_tables[:batch],
            query_lens_cpu=[1] * batch,
            seq_lens_cpu=[self.max_model_len] * batch,  # an upper bound: the real lengths live on the device
            num_decodes=batch,
            block_size=self.block_size,
            backend=self.backend,
        )
        self.backend.prepare_static_decode(meta, self.max_model_len)
        return meta

    def _forward(self, batch: int) -> torch.Tensor:
        return self.model(self.input_ids[:batch], self.positions[:batch], self.kv_caches, self._metadata(batch))

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Warm up (compiles the kernels) and capture every bucket, largest first, in one memory pool."""
        self.slot_mapping.fill_(-1)
        self.seq_lens.zero_()
        pool = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        for batch in reversed(self.buckets):
            with torch.cuda.stream(side):
                self._forward(batch)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[batch] = self._forward(batch)
            pool = graph.pool() if pool is None else pool
            self._graphs[batch] = graph
        torch.cuda.synchronize()

    # ----------------------------------------------------------------- a step
    def can_run(self, meta: AttentionMetadata) -> bool:
        """True for a decode-only step that fits the largest bucket."""
        return meta.num_decodes == meta.num_seqs and 0 < meta.num_seqs <= self.buckets[-1]

    def bucket_for(self, batch: int) -> int:
        return next(b for b in self.buckets if b >= batch)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, H] for a decode-only step of n sequences (see can_run)."""
        n = meta.num_seqs
        batch = self.bucket_for(n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:batch].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:batch].zero_()
        self.block_tables[:n, :width].copy_(meta.block_tables)
        if self.use_graphs:
            self._graphs[batch].replay()
            return self._outputs[batch][:n]
        return self._forward(batch)[:n]

    def release(self) -> None:
        self._graphs.clear()
        self._outputs.clear()


def decode_graph_runner_for(model: nn.Module, kv_caches: list[KVCache], backend: AttentionBackend, *,
                            enforce_eager: bool, device: torch.device, block_size: int, max_num_seqs: int,
                            max_model_len: int,
                            log: Optional[Callable[[str], None]] = None) -> Optional[DecodeGraphRunner]:
    """A graph runner when CUDA graphs apply (CUDA device, Triton backend, not enforce_eager), else None."""
    if enforce_eager or device.type != "cuda" or not backend.supports_cuda_graphs:
        return None
    start = time.perf_counter()
    runner = DecodeGraphRunner(model, kv_caches, backend, block_size=block_size, max_num_seqs=max_num_seqs,
                               max_model_len=max_model_len, device=device)
    if log is not None:
        log(f"captured {len(runner.buckets)} decode CUDA graphs (batch sizes {runner.buckets[0]}.."
            f"{runner.buckets[-1]}) in {time.perf_counter() - start:.1f} s")
    return runner
