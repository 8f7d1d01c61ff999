"""llama.cpp's side of benchmarks/bench_cpu.py; runs in the bench-only venv (setup_llamacpp.sh).

    benchmarks/.venv-llamacpp/bin/python benchmarks/llamacpp_child.py WORK.json

WORK.json holds the GGUF path, the thread count and the scenarios' prompt token ids (the same
ids nbllm and transformers get). Greedy decoding is an argmax over the logits, never stopping at
EOS, so every engine produces the same number of tokens. Prints one line "RESULT {json}".
On CPUs with AMX the model is loaded with use_extra_bufts=False: llama.cpp's repacked (AMX)
buffers fault on the AMX Xeon VMs these benchmarks also run on; elsewhere llama.cpp keeps its
defaults (its repacked buffers are part of its speed). Imports neither torch nor nbllm.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import llama_cpp as L
import numpy as np


class Engine:
    def __init__(self, gguf: str, threads: int, n_ctx: int, n_seq: int, n_batch: int, extra_bufts: bool):
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.use_extra_bufts = extra_bufts
        t0 = time.perf_counter()
        self.model = L.llama_model_load_from_file(gguf.encode(), params)
        ctx_params = L.llama_context_default_params()
        ctx_params.n_ctx, ctx_params.n_seq_max = n_ctx, n_seq
        ctx_params.kv_unified = True  # one cache for all sequences: the single stream may use all of it
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, ctx_params)
        self.load_s = time.perf_counter() - t0
        if not self.model or not self.ctx:
            raise RuntimeError("llama.cpp could not load the model")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def reset(self) -> None:
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def decode(self, items: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, position, sequence, wants logits) items; the argmax for each that wants logits."""
        picked = []
        for start in range(0, len(items), self.n_batch):
            chunk = items[start:start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for i, (token, pos, seq, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, int(logits)
                b.seq_id[i][0] = seq
            if L.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
            for i, (_, _, _, logits) in enumerate(chunk):
                if logits:
                    row = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                    picked.append(int(row.argmax()))
        return picked

    def generate(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Greedy `new_tokens` for every prompt, all sequences batched; returns seconds to the first tokens."""
        self.reset()
        t0 = time.perf_counter()
        items = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        last = self.decode(items)
        ttft = time.perf_counter() - t0
        for step in range(new_tokens - 1):
            last = self.decode([(tok, len(p) + step, seq, True) for seq, (tok, p) in enumerate(zip(last, prompts))])
        return ttft

    def close(self) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def main() -> None:
    with open(sys.argv[1]) as f:
        work = json.load(f)
    scenarios = work["scenarios"]
    n_ctx = max(len(scenarios["b"]["prompts"]) * (len(scenarios["b"]["prompts"][0]) + scenarios["b"]["max_tokens"][0]),
                len(scenarios["a"]["prompts"][0]) + scenarios["a"]["max_tokens"][0]) + 64
    extra_bufts = not work["cpu_has_amx"]
    engine = Engine(work["gguf"], work["threads"], n_ctx, len(scenarios["b"]["prompts"]), 512, extra_bufts)
    out = {"load_s": engine.load_s, "extra_bufts": extra_bufts}
    engine.generate([scenarios["a"]["prompts"][0][:16]], 4)  # warm-up, as for the other engines
    for name in ("a", "b"):
        prompts, new = scenarios[name]["prompts"], scenarios[name]["max_tokens"][0]
        t0 = time.perf_counter()
        engine.generate(prompts, new)
        elapsed = time.perf_counter() - t0
        out[name] = {"tokens": new * len(prompts), "seconds": elapsed, "tokens_per_s": new * len(prompts) / elapsed}
    out["peak_rss_through_b_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # as the others report
    out["d"] = {"ttft_s": statistics.median(engine.generate(scenarios["d"]["prompts"], 1) for _ in range(3))}
    engine.close()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["version"] = L.__version__
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
