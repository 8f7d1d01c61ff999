"""nbllm vs transformers on the CPU, same weights (the default model, float32), one command.

    python benchmarks/bench_cpu.py [--reps 3] [--quick] [--json out.json]

Each repetition runs every scenario in a fresh process per engine, alternating
nbllm and transformers, so both see the same machine state; medians and ratios are
printed. Scenarios (greedy, ignore_eos):
  a  single stream: 128-token prompt, 128 new tokens
  b  batch: 64 prompts of 64 tokens, 64 new tokens each (transformers at batch 64)
  c  mixed: 64 requests, prompt lengths U(16, 512), output lengths U(16, 256); transformers
     as a user runs it: padded batches of 16, each until its longest request ends
  d  time to first token of a 64-token chat prompt, and load time from the cache
Also the machine: float32 matmul FLOP/s and weight-streaming bandwidth, turned into
a bandwidth bound for (a) and a FLOP bound for (b). Peak RSS is each process's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEED = 0


def measure_machine() -> dict:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    flops = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)
    w, x = torch.randn(16384, 8192), torch.randn(8192)  # 512 MiB of weights
    w @ x
    t0 = time.perf_counter()
    for _ in range(5):
        w @ x
    bandwidth = 5 * w.numel() * 4 / (time.perf_counter() - t0)
    return {"matmul_flops": flops, "bandwidth_bytes_s": bandwidth, "threads": torch.get_num_threads()}


def make_workloads(tokenizer, quick: bool) -> dict:
    rng = random.Random(SEED)
    vocab = [t for t in range(1000, 20000)]

    def prompt(n: int) -> list[int]:
        return [rng.choice(vocab) for _ in range(n)]

    n_mixed = 16 if quick else 64
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain in a few words why the sky looks blue during the day, "
                                     "and why sunsets are often red or orange."}],
        tokenize=False, add_generation_prompt=True)
    chat = tokenizer.encode(chat, add_special_tokens=False)
    return {
        "a": {"prompts": [prompt(128)], "max_tokens": [32 if quick else 128]},
        "b": {"prompts": [prompt(64) for _ in range(64)], "max_tokens": [16 if quick else 64] * 64},
        "c": {"prompts": [prompt(rng.randint(16, 512)) for _ in range(n_mixed)],
              "max_tokens": [rng.randint(16, 64 if quick else 256) for _ in range(n_mixed)]},
        "d": {"prompts": [list(chat)[:64]], "max_tokens": [1]},
    }


# ----------------------------------------------------------------------------- engines
def run_nbllm(quick: bool) -> dict:
    from nbllm import LLM, SamplingParams

    # transformers' own load is timed after its import, so nbllm's is too (the import is reported apart)
    t0 = time.perf_counter()
    import transformers.models.llama.configuration_llama  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = LLM()
    load = time.perf_counter() - t0
    work = make_workloads(llm.get_tokenizer(), quick)
    llm.generate({"prompt_token_ids": work["a"]["prompts"][0][:16]}, SamplingParams(max_tokens=4), use_tqdm=False)
    out = {"load_s": load, "transformers_import_s": imports}
    for name in ("a", "b", "c"):
        prompts = [{"prompt_token_ids": p} for p in work[name]["prompts"]]
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in work[name]["max_tokens"]]
        t0 = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(r.outputs[0].token_ids) for r in results)
        out[name] = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}
    ttfts = []
    for _ in range(3):
        t0 = time.perf_counter()
        stream = llm.stream({"prompt_token_ids": work["d"]["prompts"][0]},
                            SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        next(stream)
        ttfts.append(time.perf_counter() - t0)
        stream.close()
    out["d"] = {"ttft_s": statistics.median(ttfts)}
    out["kv_pool_bytes"] = llm.llm_engine.runner.num_blocks * llm.llm_engine.runner.bytes_per_block
    # The checkpoint's size: the loaded model may hold the weights in another (packed) layout.
    out["weight_bytes"] = sum(f.stat().st_size for f in Path(llm.llm_engine.model_path).glob("*.safetensors"))
    llm.shutdown()
    return out


def run_transformers(quick: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbllm.default_model import default_model_path

    path = str(default_model_path())
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    load = time.perf_counter() - t0
    work = make_workloads(tokenizer, quick)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompts: list[list[int]], max_new: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                           min_new_tokens=max_new, pad_token_id=pad)

    generate(work["a"]["prompts"][0:1], 4)
    out = {"load_s": load}
    for name in ("a", "b"):
        t0 = time.perf_counter()
        generate(work[name]["prompts"], work[name]["max_tokens"][0])
        elapsed = time.perf_counter() - t0
        tokens = sum(work[name]["max_tokens"])
        out[name] = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}
    t0 = time.perf_counter()
    prompts, lengths = work["c"]["prompts"], work["c"]["max_tokens"]
    for i in range(0, len(prompts), 16):
        generate(prompts[i:i + 16], max(lengths[i:i + 16]))  # runs until the batch's longest ends
    elapsed = time.perf_counter() - t0
    out["c"] = {"tokens": sum(lengths), "seconds": elapsed, "tokens_per_s": sum(lengths) / elapsed}
    ttfts = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate(work["d"]["prompts"], 1)
        ttfts.append(time.perf_counter() - t0)
    out["d"] = {"ttft_s": statistics.median(ttfts)}
    return out


def child(engine: str, quick: bool) -> None:
    result = run_nbllm(quick) if engine == "nbllm" else run_transformers(quick)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result))


def spawn(engine: str, quick: bool) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", engine] + (["--quick"] if quick else []),
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{engine} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# ----------------------------------------------------------------------------- report
def report(machine: dict, runs: dict, reps: int) -> dict:
    def med(engine: str, *keys: str) -> float:
        values = []
        for run in runs[engine]:
            value = run
            for key in keys:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    weights = runs["nbllm"][0]["weight_bytes"]
    params = weights / 4
    bound_a = machine["bandwidth_bytes_s"] / weights
    bound_b = machine["matmul_flops"] / (2 * params)
    summary = {"machine": machine, "bounds": {"a_tokens_per_s": bound_a, "b_tokens_per_s": bound_b}}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {machine['threads']}; matmul {machine['matmul_flops'] / 1e9:.0f} GFLOP/s; "
          f"weight streaming {machine['bandwidth_bytes_s'] / 1e9:.1f} GB/s; medians of {reps} runs\n")
    header = f"{'scenario':<34}{'nbllm':>12}{'transformers':>14}{'ratio':>8}{'bound':>10}{'% bound':>9}"
    print(header + "\n" + "-" * len(header))
    for name, label, bound in (("a", "(a) single stream tok/s", bound_a), ("b", "(b) batch 64 tok/s", bound_b),
                               ("c", "(c) mixed 64 requests tok/s", None)):
        ours, theirs = med("nbllm", name, "tokens_per_s"), med("transformers", name, "tokens_per_s")
        pct = f"{100 * ours / bound:.0f}%" if bound else ""
        bound_text = f"{bound:.0f}" if bound else ""
        print(f"{label:<34}{ours:>12.1f}{theirs:>14.1f}{ours / theirs:>7.2f}x{bound_text:>10}{pct:>9}")
        summary[name] = {"nbllm": ours, "transformers": theirs, "ratio": ours / theirs}
    for key, label in (("ttft", "(d) time to first token s"), ("load", "(d) load from cache s"),
                       ("rss", "peak RSS GiB")):
        if key == "ttft":
            ours, theirs = med("nbllm", "d", "ttft_s"), med("transformers", "d", "ttft_s")
        elif key == "load":
            ours, theirs = med("nbllm", "load_s"), med("transformers", "load_s")
        else:
            ours, theirs = med("nbllm", "peak_rss_bytes") / 2 ** 30, med("transformers", "peak_rss_bytes") / 2 ** 30
        print(f"{label:<34}{ours:>12.2f}{theirs:>14.2f}{ours / theirs:>7.2f}x")
        summary[key] = {"nbllm": ours, "transformers": theirs, "ratio": ours / theirs}
    print(f"(nbllm's first use of transformers' config/tokenizer modules costs another "
          f"{med('nbllm', 'transformers_import_s'):.2f}s in a fresh process; not counted on either side)")
    pool = runs["nbllm"][0]["kv_pool_bytes"]
    print(f"\nnbllm weights {weights / 2 ** 30:.2f} GiB + KV pool {pool / 2 ** 30:.2f} GiB (reserved; pages are "
          f"touched lazily); peak RSS / (weights + pool) = {med('nbllm', 'peak_rss_bytes') / (weights + pool):.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter workloads, for a smoke run")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--child", choices=("nbllm", "transformers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.quick)
        return
    machine = measure_machine()
    runs: dict[str, list[dict]] = {"nbllm": [], "transformers": []}
    for rep in range(args.reps):
        for engine in ("nbllm", "transformers"):
            t0 = time.perf_counter()
            runs[engine].append(spawn(engine, args.quick))
            print(f"rep {rep + 1}/{args.reps} {engine}: {time.perf_counter() - t0:.0f}s", flush=True)
    summary = report(machine, runs, args.reps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
