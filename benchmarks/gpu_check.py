"""One GPU check, under 5 minutes on an H100/H200: kernels, bandwidth, end-to-end speed.

    python benchmarks/gpu_check.py [--skip-tests] [--skip-large] [--dry-run]

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
    selection = ["-k", "mha-64-fp32"] if dry else []  # a sample through the interpreter, all on a GPU
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests/kernels"), *selection],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]


def decode_bandwidth(device: str, dry: bool) -> list[str]:
    from nbllm_kernels import paged_decode_attention

    dtype = torch.float32 if dry else torch.bfloat16
    shapes = ((2, 64, 4, 2, 64),) if dry else ((16, 8192, 32, 8, 128), (64, 4096, 32, 8, 128), (1, 32768, 32, 8, 128))
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
        for _ in range(1 if dry else 3):
            paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5)
        sync()
        iters = 1 if dry else 20
        start = time.perf_counter()
        for _ in range(iters):
            paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5)
        sync()
        seconds = (time.perf_counter() - start) / iters
        moved = 2 * batch * context * hkv * d * kc.element_size()
        achieved = moved / seconds
        lines.append(f"decode B{batch} ctx{context} Hq{hq}/Hkv{hkv} D{d}: {seconds * 1e3:.3f} ms, "
                     f"{achieved / 1e9:.0f} GB/s = {100 * achieved / peak_bandwidth():.0f}% of peak")
    return lines


def large_random_llama(folder: Path, dry: bool) -> Path:
    """A ~1B-parameter Llama with random weights and the default model's tokenizer (tiny when dry)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from nbllm.default_model import default_model_path

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if dry else dict(hidden_size=2048, intermediate_size=5632,
                                                       num_hidden_layers=16, num_attention_heads=32,
                                                       num_key_value_heads=8)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, tie_word_embeddings=True, **size)
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dry else torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(folder)
    return folder


def end_to_end(path: Path, label: str, device: str, dry: bool) -> list[str]:
    from transformers import AutoModelForCausalLM

    from nbllm import LLM, SamplingParams

    dtype = torch.float32 if dry else torch.bfloat16
    max_new, batches = (2, (1, 2)) if dry else (128, (1, 64))
    prompt_len = 8 if dry else 64
    lines = []
    prompts = [[1000 + (i * 7 + j) % 5000 for j in range(prompt_len)] for i in range(max(batches))]
    llm = LLM(str(path), dtype="float32" if dry else "bfloat16", device=device, attention_backend="triton",
              num_kv_blocks=64 if dry else None)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    for batch in batches:
        params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts[:batch]], params, use_tqdm=False)  # warm-up
        sync()
        t0 = time.perf_counter()
        ours_out = llm.generate([{"prompt_token_ids": p} for p in prompts[:batch]], params, use_tqdm=False)
        ours = batch * max_new / (time.perf_counter() - t0)
        ids = torch.tensor(prompts[:batch], device=device)
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=2, min_new_tokens=2)
            sync()
            t0 = time.perf_counter()
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                              min_new_tokens=max_new)
            sync()
        theirs = batch * max_new / (time.perf_counter() - t0)
        same = sum(o.outputs[0].token_ids == ref[i, prompt_len:].tolist() for i, o in enumerate(ours_out))
        lines.append(f"{label} batch {batch}: nbllm {ours:.0f} tok/s, transformers {theirs:.0f} tok/s, "
                     f"ratio {ours / theirs:.2f}x; greedy tokens equal for {same}/{batch}")
    llm.shutdown()
    del hf
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, Triton interpreter; no timings")
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU (or --dry-run)")
    device = "cpu" if dry else "cuda"
    name = "CPU (dry run: timings are meaningless)" if dry else torch.cuda.get_device_name()
    summary = [f"device: {name}, torch {torch.__version__}"]
    if not args.skip_tests:
        summary.append("kernel tests: " + run_kernel_tests(dry))
    summary += decode_bandwidth(device, dry)
    from nbllm.default_model import default_model_path

    if not dry:
        summary += end_to_end(default_model_path(), "SmolLM2-135M", device, dry)
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            summary += end_to_end(large_random_llama(Path(tmp), dry), "Llama-1B (random)" if not dry else
                                  "toy Llama (random)", device, dry)
    print("\n".join(["", "=== GPU check ==="] + summary))


if __name__ == "__main__":
    main()
