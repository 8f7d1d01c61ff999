"""nbllm against llama.cpp and transformers on the CPU, the default model, one command.

    python benchmarks/bench_cpu.py [--reps 3] [--quick] [--json out.json] [--no-llamacpp]

nbllm runs the default model as it loads by default: its GGUF's own quantized blocks
(SmolLM2-135M-Instruct.Q4_1.gguf). llama.cpp (llama-cpp-python, built by
benchmarks/setup_llamacpp.sh into a bench-only venv; skipped with a note when absent) runs the
same file, transformers the same weights dequantized to float32. All get the same prompt token
ids and 2 threads (torch's intra-op threads, llama.cpp's n_threads).

Each repetition runs every engine in a fresh process, one after the other (nbllm, llama.cpp,
transformers), so all see the same machine state; medians and same-run ratios are printed.
Scenarios (greedy, never stopping at EOS):
  a  single stream: 128-token prompt, 128 new tokens
  b  batch: 64 prompts of 64 tokens, 64 new tokens each
  c  mixed: 64 requests, prompt lengths U(16, 512), output lengths U(16, 256); transformers
     as a user runs it: padded batches of 16, each until its longest request ends (not llama.cpp)
  d  time to first token of a 64-token chat prompt, and load time from the cache
Also the machine: its CPU model and flags, float32 matmul FLOP/s and weight-streaming bandwidth,
turned into a bandwidth bound for (a) (bandwidth / bytes of weights streamed per token, as
each engine holds them) and a FLOP bound for (b). Peak RSS is each process's: through (b) (the
batch workload, as the target names it; (a) runs before it) and over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 0
THREADS = 2
HERE = Path(__file__).resolve().parent
LLAMACPP_PYTHON = HERE / ".venv-llamacpp" / "bin" / "python"
ENGINES = ("nbllm", "llamacpp", "transformers")
FLAGS_SHOWN = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return set()


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    shown = [flag for flag in FLAGS_SHOWN if flag in flags]
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(shown) or 'none of ' + ' '.join(FLAGS_SHOWN)}"


def measure_machine() -> dict:
    import torch

    torch.set_num_threads(THREADS)
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
    return {"matmul_flops": flops, "bandwidth_bytes_s": bandwidth, "threads": THREADS, "cpu": cpu_description(),
            "load_average": os.getloadavg()}


def make_workloads(quick: bool) -> dict:
    from transformers import AutoTokenizer

    from nbllm.default_model import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    rng = random.Random(SEED)
    vocab = list(range(1000, 20000))

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
def run_nbllm(work: dict) -> dict:
    import torch

    from nbllm import LLM, SamplingParams
    from nbllm.layers.quantized_linear import QuantizedLinear

    # transformers' own load is timed after its import, so nbllm's is too (the import is reported apart)
    t0 = time.perf_counter()
    import transformers.models.llama.configuration_llama  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = LLM(num_threads=THREADS)
    load = time.perf_counter() - t0
    scenarios = work["scenarios"]
    llm.generate({"prompt_token_ids": scenarios["a"]["prompts"][0][:16]}, SamplingParams(max_tokens=4), use_tqdm=False)
    out = {"load_s": load, "transformers_import_s": imports}
    for name in ("a", "b", "c"):
        prompts = [{"prompt_token_ids": p} for p in scenarios[name]["prompts"]]
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in scenarios[name]["max_tokens"]]
        t0 = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(r.outputs[0].token_ids) for r in results)
        out[name] = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}
        if name == "b":
            out["peak_rss_through_b_bytes"] = peak_rss_bytes()
    ttfts = []
    for _ in range(3):
        t0 = time.perf_counter()
        stream = llm.stream({"prompt_token_ids": scenarios["d"]["prompts"][0]},
                            SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        next(stream)
        ttfts.append(time.perf_counter() - t0)
        stream.close()
    out["d"] = {"ttft_s": statistics.median(ttfts)}
    runner = llm.llm_engine.runner
    model = runner.model
    out["kv_pool_bytes"] = runner.num_blocks * runner.bytes_per_block
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    out["weight_bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    # what one decode step streams: every linear layer's weights (an embedding lookup reads a few rows)
    out["streamed_bytes"] = sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
                                for t in m.product_buffers())
    out["linear_params"] = sum(m.in_features * m.out_features for m in model.modules()
                               if isinstance(m, (QuantizedLinear, torch.nn.Linear)))
    out["quantized"] = any(isinstance(m, QuantizedLinear) for m in model.modules())
    llm.shutdown()
    return out


def run_transformers(work: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbllm.default_model import default_model_path

    torch.set_num_threads(THREADS)
    path = str(default_model_path())
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    load = time.perf_counter() - t0
    scenarios = work["scenarios"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(prompts: list[list[int]], max_new: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                           min_new_tokens=max_new, pad_token_id=pad)

    generate(scenarios["a"]["prompts"][0:1], 4)
    out = {"load_s": load}
    for name in ("a", "b"):
        t0 = time.perf_counter()
        generate(scenarios[name]["prompts"], scenarios[name]["max_tokens"][0])
        elapsed = time.perf_counter() - t0
        tokens = sum(scenarios[name]["max_tokens"])
        out[name] = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}
    out["peak_rss_through_b_bytes"] = peak_rss_bytes()
    t0 = time.perf_counter()
    prompts, lengths = scenarios["c"]["prompts"], scenarios["c"]["max_tokens"]
    for i in range(0, len(prompts), 16):
        generate(prompts[i:i + 16], max(lengths[i:i + 16]))  # runs until the batch's longest ends
    elapsed = time.perf_counter() - t0
    out["c"] = {"tokens": sum(lengths), "seconds": elapsed, "tokens_per_s": sum(lengths) / elapsed}
    ttfts = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate(scenarios["d"]["prompts"], 1)
        ttfts.append(time.perf_counter() - t0)
    out["d"] = {"ttft_s": statistics.median(ttfts)}
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(engine: str, work_file: str) -> None:
    with open(work_file) as f:
        work = json.load(f)
    result = run_nbllm(work) if engine == "nbllm" else run_transformers(work)
    result["peak_rss_bytes"] = peak_rss_bytes()
    print("RESULT " + json.dumps(result))


def spawn(engine: str, work_file: str) -> dict:
    if engine == "llamacpp":
        command = [str(LLAMACPP_PYTHON), str(HERE / "llamacpp_child.py"), work_file]
    else:
        command = [sys.executable, __file__, "--child", engine, "--work", work_file]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{engine} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# ----------------------------------------------------------------------------- report
def median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        for key in keys:
            run = run[key]
        values.append(run)
    return statistics.median(values)


def report(machine: dict, runs: dict, reps: int, gguf_bytes: int) -> dict:
    ours = runs["nbllm"]
    streamed = ours[0]["streamed_bytes"] if ours[0]["quantized"] else ours[0]["weight_bytes"]
    bound_a = machine["bandwidth_bytes_s"] / streamed
    bound_b = machine["matmul_flops"] / (2 * ours[0]["linear_params"])
    engines = [e for e in ENGINES if runs.get(e)]
    summary: dict = {"machine": machine, "bounds": {"a_tokens_per_s": bound_a, "b_tokens_per_s": bound_b}}
    print(f"\nCPU: {machine['cpu']}\nload average at the start {machine['load_average'][0]:.1f}; torch/llama.cpp "
          f"threads {machine['threads']}; matmul {machine['matmul_flops'] / 1e9:.0f} GFLOP/s; weight streaming "
          f"{machine['bandwidth_bytes_s'] / 1e9:.1f} GB/s; medians of {reps} runs; nbllm "
          f"{'quantized (the GGUF as loaded)' if ours[0]['quantized'] else 'float32'}\n")
    names = {"nbllm": "nbllm", "llamacpp": "llama.cpp", "transformers": "transformers"}
    header = f"{'scenario':<30}" + "".join(f"{names[e]:>13}" for e in engines)
    header += "".join(f"{'vs ' + names[e]:>17}" for e in engines[1:]) + f"{'bound':>8}{'% bound':>9}"
    print(header + "\n" + "-" * len(header))
    rows = (("a", "(a) single stream tok/s", bound_a), ("b", "(b) batch 64 tok/s", bound_b),
            ("c", "(c) mixed 64 requests tok/s", None))
    for name, label, bound in rows:
        values = {e: median(runs[e], name, "tokens_per_s") for e in engines if name in runs[e][0]}
        line = f"{label:<30}" + "".join(f"{values[e]:>13.1f}" if e in values else f"{'-':>13}" for e in engines)
        line += "".join(f"{values['nbllm'] / values[e]:>16.2f}x" if e in values else f"{'-':>17}" for e in engines[1:])
        if bound:
            line += f"{bound:>8.0f}{100 * values['nbllm'] / bound:>8.0f}%"
        print(line)
        summary[name] = {**values, **{f"ratio_vs_{e}": values["nbllm"] / values[e] for e in engines[1:] if e in values}}
    for key, label, unit in (("ttft", "(d) time to first token s", 1), ("load", "(d) load from the cache s", 1),
                             ("rss_b", "peak RSS through (b) GiB", 2 ** 30), ("rss", "peak RSS, whole run GiB", 2 ** 30)):
        values = {}
        for e in engines:
            if key == "ttft":
                values[e] = median(runs[e], "d", "ttft_s")
            elif key == "load":
                values[e] = median(runs[e], "load_s")
            elif key == "rss_b":
                values[e] = median(runs[e], "peak_rss_through_b_bytes") / unit
            else:
                values[e] = median(runs[e], "peak_rss_bytes") / unit
        line = f"{label:<30}" + "".join(f"{values[e]:>13.2f}" for e in engines)
        line += "".join(f"{values['nbllm'] / values[e]:>16.2f}x" for e in engines[1:])
        print(line)
        summary[key] = {**values, **{f"ratio_vs_{e}": values["nbllm"] / values[e] for e in engines[1:]}}
    pool, weights = ours[0]["kv_pool_bytes"], ours[0]["weight_bytes"]
    print(f"\nnbllm holds {weights / 2 ** 20:.0f} MiB of weights as loaded ({streamed / 2 ** 20:.0f} MiB streamed per "
          f"decode step) + a KV pool of {pool / 2 ** 30:.2f} GiB (reserved; pages are touched lazily); peak RSS / "
          f"(weights + pool): {median(ours, 'peak_rss_through_b_bytes') / (weights + pool):.2f} through (b), the "
          f"batch workload (a and b run first); {median(ours, 'peak_rss_bytes') / (weights + pool):.2f} over the "
          f"whole run (its (c) touches most of the pool)")
    if "llamacpp" in engines:
        llama_a = median(runs["llamacpp"], "a", "tokens_per_s")
        print(f"llama.cpp {runs['llamacpp'][0]['version']} (use_extra_bufts={runs['llamacpp'][0]['extra_bufts']}) "
              f"streams the GGUF's {gguf_bytes / 2 ** 20:.0f} MiB of "
              f"tensors per token: its bound {machine['bandwidth_bytes_s'] / gguf_bytes:.0f} tok/s, "
              f"(a) at {100 * llama_a * gguf_bytes / machine['bandwidth_bytes_s']:.0f}% of it")
    print(f"(nbllm's first use of transformers' config/tokenizer modules costs another "
          f"{median(ours, 'transformers_import_s'):.2f}s in a fresh process; not counted on either side)")
    return summary


def llamacpp_ready() -> bool:
    if not LLAMACPP_PYTHON.exists():
        return False
    return subprocess.run([str(LLAMACPP_PYTHON), "-c", "import llama_cpp"], capture_output=True, check=False).returncode == 0


def gguf_tensor_bytes() -> int:
    from gguf import GGUFReader

    from nbllm.default_model import find_default_gguf

    return sum(int(t.n_bytes) for t in GGUFReader(find_default_gguf()).tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter workloads, for a smoke run")
    parser.add_argument("--json", help="also write the summary and every run here")
    parser.add_argument("--no-llamacpp", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--child", choices=("nbllm", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work)
        return
    from nbllm.default_model import find_default_gguf

    engines = list(ENGINES)
    if args.no_llamacpp or not llamacpp_ready():
        engines.remove("llamacpp")
        if not args.no_llamacpp:
            print(f"llama.cpp left out: {LLAMACPP_PYTHON} cannot import llama_cpp "
                  f"(build it with: bash benchmarks/setup_llamacpp.sh)")
    machine = measure_machine()
    work = {"gguf": str(find_default_gguf()), "threads": THREADS, "scenarios": make_workloads(args.quick),
            "cpu_has_amx": "amx_tile" in cpu_flags()}
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    try:
        for rep in range(args.reps):
            for engine in engines:
                t0 = time.perf_counter()
                runs[engine].append(spawn(engine, f.name))
                print(f"rep {rep + 1}/{args.reps} {engine}: {time.perf_counter() - t0:.0f}s", flush=True)
    finally:
        os.unlink(f.name)
    summary = report(machine, runs, args.reps, gguf_tensor_bytes())
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"summary": summary, "runs": runs}, out, indent=1)


if __name__ == "__main__":
    main()
