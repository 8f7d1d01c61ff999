"""One GPU check, under 5 minutes on an H100/H200: kernels, bandwidth, end-to-end speed.

    python benchmarks/gpu_check.py [--skip-tests] [--skip-large] [--dry-run] [--default-model-config DIR]

Installs nothing and needs no network. --dry-run runs every part on the CPU at toy
sizes through the Triton interpreter (the test suite does this), so the script is
known to work before GPU time is spent; its timings mean nothing. Prints a summary:
  1. the kernel tests on the GPU (tests/kernels, bf16 and fp16 included);
  2. decode attention's achieved memory bandwidth against the device's peak, for long
     contexts (bytes of K and V read / kernel time);
  3. end-to-end greedy generation against transformers on the same GPU and weights:
     tokens/s at batch 1 and 64 and the ratio, for the default model and for a
     ~1B-parameter Llama config with random weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if "--dry-run" in sys.argv:  # before triton is imported: its decorators read this
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12}  # bytes/s, HBM/GDDR spec


def peak_bandwidth() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value
    return float("nan")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_kernel_tests(dry: bool) -> str:
    """tests/kernels (all of it on a GPU, a sample through the interpreter), plus the engine-level GPU tests."""
    paths = ["tests/kernels"] if dry else ["tests/kernels", "tests/test_cuda_graphs.py", "tests/test_triton_backend.py"]
    selection = ["-k", "mha-64-fp32"] if dry else []
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *paths, *selection],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return proc.stderr[-500:]
    failures = [line for line in lines if line.startswith("FAILED")]
    if failures:
        print(proc.stdout[-6000:], flush=True)
    return "\n  ".join([lines[-1], *failures[:10]])


# (block_n, num_warps, num_stages) of the decode kernel; the first is its default
DECODE_TUNINGS = ((64, 4, 2), (32, 4, 2), (128, 4, 2), (64, 8, 2), (64, 4, 3), (64, 4, 1), (128, 8, 3))


def _seconds_per_call(fn, dry: bool, iters: int = 20) -> float:
    """GPU time per call: `iters` calls captured in one CUDA graph, so launch overhead is not counted."""
    if dry:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    fn()  # compile
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()  # warm
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    sync()
    return start.elapsed_time(end) / 1e3 / iters


def decode_bandwidth(device: str, dry: bool) -> list[str]:
    """Bytes of K and V read per second by paged decode attention on shuffled blocks, per tuning."""
    from nbllm_kernels import choose_num_splits, paged_decode_attention

    dtype = torch.float32 if dry else torch.bfloat16
    shapes = ((2, 64, 4, 2, 64),) if dry else ((16, 8192, 32, 8, 128), (64, 4096, 32, 8, 128), (1, 32768, 32, 8, 128))
    tunings = DECODE_TUNINGS[:1] if dry else DECODE_TUNINGS
    lines = []
    for batch, context, hq, hkv, d in shapes:
        block = 16
        blocks_per_seq = context // block
        num_blocks = batch * blocks_per_seq + 1
        kc = torch.randn(num_blocks, block, hkv, d, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        tables = (torch.randperm(num_blocks - 1, device=device)[:batch * blocks_per_seq] + 1).view(batch, -1)
        tables = tables.to(torch.int32)
        lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        q = torch.randn(batch, hq, d, device=device, dtype=dtype)
        moved = 2 * batch * context * hkv * d * kc.element_size()
        splits = choose_num_splits(context)
        results = []
        for block_n, warps, stages in tunings:
            seconds = _seconds_per_call(lambda: paged_decode_attention(
                q, kc, vc, tables, lens, d ** -0.5, num_splits=splits, block_n=block_n, num_warps=warps,
                num_stages=stages), dry)
            results.append((seconds, (block_n, warps, stages)))
        default_seconds = results[0][0]
        best_seconds, best = min(results)
        lines.append(f"decode B{batch} ctx{context} Hq{hq}/Hkv{hkv} D{d} ({splits} splits): "
                     f"{default_seconds * 1e3:.3f} ms, {moved / default_seconds / 1e9:.0f} GB/s = "
                     f"{100 * moved / default_seconds / peak_bandwidth():.0f}% of peak; best tuning "
                     f"(block_n, warps, stages) {best}: {moved / best_seconds / 1e9:.0f} GB/s = "
                     f"{100 * moved / best_seconds / peak_bandwidth():.0f}%")
        if not dry:
            lines.append("  all: " + ", ".join(f"{t}: {moved / sec / 1e9:.0f}" for sec, t in results))
    return lines


def save_random_model(folder: Path, config, tokenizer_dir: Path, dtype: torch.dtype) -> Path:
    """Random weights for `config` (transformers' own initialisation) with the tokenizer of tokenizer_dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(folder)
    return folder


def large_random_llama(folder: Path, tokenizer_dir: Path, dry: bool) -> Path:
    """A ~1B-parameter Llama with random weights and the default model's tokenizer (tiny when dry)."""
    from transformers import LlamaConfig

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if dry else dict(hidden_size=2048, intermediate_size=5632,
                                                       num_hidden_layers=16, num_attention_heads=32,
                                                       num_key_value_heads=8)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, tie_word_embeddings=True, **size)
    config.architectures = ["LlamaForCausalLM"]
    return save_random_model(folder, config, tokenizer_dir, torch.float32 if dry else torch.bfloat16)


def _timed_generate(llm, prompts, params) -> tuple[float, list]:
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)  # warm-up
    sync()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    sync()
    return time.perf_counter() - start, [o.outputs[0].token_ids for o in outputs]


def _matching_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def end_to_end(path: Path, label: str, device: str, dry: bool) -> list[str]:
    """nbllm with CUDA graphs, nbllm eager and transformers' generate, greedy, at batch 1 and 64."""
    from transformers import AutoModelForCausalLM

    from nbllm import LLM, SamplingParams

    dtype = torch.float32 if dry else torch.bfloat16
    max_new, batches = (2, (1, 2)) if dry else (128, (1, 64))
    prompt_len = 8 if dry else 64
    prompts = [[1000 + (i * 7 + j) % 5000 for j in range(prompt_len)] for i in range(max(batches))]
    params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
    speeds: dict[tuple[str, int], float] = {}
    tokens: dict[tuple[str, int], list] = {}
    lines = []
    for variant, eager in (("graphs", False), ("eager", True)):
        start = time.perf_counter()
        llm = LLM(str(path), dtype="float32" if dry else "bfloat16", device=device, attention_backend="triton",
                  num_kv_blocks=64 if dry else None, kv_cache_memory_bytes=None if dry else 8 << 30,
                  enforce_eager=eager)
        lines.append(f"{label} nbllm {variant}: ready in {time.perf_counter() - start:.1f} s")
        for batch in batches:
            seconds, tokens[variant, batch] = _timed_generate(llm, prompts[:batch], params)
            speeds[variant, batch] = batch * max_new / seconds
        llm.shutdown()
        del llm
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    for batch in batches:
        ids = torch.tensor(prompts[:batch], device=device)
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=2, min_new_tokens=2)
            sync()
            start = time.perf_counter()
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                              min_new_tokens=max_new)
            sync()
        theirs = batch * max_new / (time.perf_counter() - start)
        ref_tokens = [row[prompt_len:].tolist() for row in ref]
        ours = tokens["graphs", batch]
        same = sum(a == b for a, b in zip(ours, ref_tokens))
        prefix = sum(_matching_prefix(a, b) for a, b in zip(ours, ref_tokens)) / batch
        eager_same = sum(a == b for a, b in zip(ours, tokens["eager", batch]))
        lines.append(f"{label} batch {batch}: nbllm {speeds['graphs', batch]:.0f} tok/s (eager "
                     f"{speeds['eager', batch]:.0f}), transformers {theirs:.0f} tok/s, ratio "
                     f"{speeds['graphs', batch] / theirs:.2f}x (eager {speeds['eager', batch] / theirs:.2f}x); "
                     f"greedy tokens equal for {same}/{batch} (mean common prefix {prefix:.0f}/{max_new}); "
                     f"graphs = eager for {eager_same}/{batch}")
    del hf
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return lines


def section(summary: list[str], name: str, work) -> None:
    """Run one part; a failure is printed and summarised, and the other parts still run."""
    try:
        result = work()
        summary.extend([result] if isinstance(result, str) else result)
    except Exception:  # noqa: BLE001 - a GPU session is short: report and go on
        traceback.print_exc()
        summary.append(f"{name}: FAILED ({traceback.format_exc().strip().splitlines()[-1]})")
    print("\n".join(summary[-3:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, Triton interpreter; no timings")
    parser.add_argument("--default-model-config", type=Path, default=None,
                        help="a folder with the default model's config and tokenizer: use random weights of that "
                             "shape where the default model's package is not installed")
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU (or --dry-run)")
    device = "cpu" if dry else "cuda"
    name = "CPU (dry run: timings are meaningless)" if dry else torch.cuda.get_device_name()
    summary = [f"device: {name}, torch {torch.__version__}"]
    if not args.skip_tests:
        section(summary, "kernel tests", lambda: "kernel tests: " + run_kernel_tests(dry))
    section(summary, "decode bandwidth", lambda: decode_bandwidth(device, dry))
    with tempfile.TemporaryDirectory() as tmp:
        if args.default_model_config is not None:
            from transformers import AutoConfig

            default_dir = save_random_model(Path(tmp) / "default", AutoConfig.from_pretrained(
                str(args.default_model_config)), args.default_model_config, torch.bfloat16)
            default_label = "SmolLM2-135M shape (random weights)"
        else:
            from nbllm.default_model import default_model_path

            default_dir, default_label = default_model_path(), "SmolLM2-135M"
        if not dry:
            section(summary, default_label, lambda: end_to_end(default_dir, default_label, device, dry))
        if not args.skip_large:
            large = "Llama-1B (random)" if not dry else "toy Llama (random)"
            section(summary, large, lambda: end_to_end(large_random_llama(Path(tmp) / "large", default_dir, dry),
                                                       large, device, dry))
    print("\n".join(["", "=== GPU check ==="] + summary))
    if any("FAILED" in line for line in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
