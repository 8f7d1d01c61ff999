"""One GPU check, under 5 minutes on an H100/H200: kernels, bandwidth, end-to-end speed.

    python benchmarks/gpu_check.py [--skip-tests] [--skip-large]

Installs nothing and needs no network. Prints a summary:
  1. the kernel tests on the GPU (tests/kernels, bf16 and fp16 included);
  2. decode attention's achieved memory bandwidth against the device's peak, for long
     contexts (bytes of K and V read / kernel time);
  3. end-to-end greedy generation against transformers on the same GPU and weights:
     tokens/s at batch 1 and 64 and the ratio, for the default model and for a
     ~1B-parameter Llama config with random weights.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12}  # bytes/s, HBM/GDDR spec


def peak_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value
    return float("nan")


def run_kernel_tests() -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/kernels")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]


def decode_bandwidth(dtype: torch.dtype = torch.bfloat16) -> list[str]:
    from nbllm_kernels import paged_decode_attention

    lines = []
    for batch, context, hq, hkv, d in ((16, 8192, 32, 8, 128), (64, 4096, 32, 8, 128), (1, 32768, 32, 8, 128)):
        block = 16
        blocks_per_seq = context // block
        num_blocks = batch * blocks_per_seq + 1
        kc = torch.randn(num_blocks, block, hkv, d, device="cuda", dtype=dtype)
        vc = torch.randn_like(kc)
        tables = (torch.randperm(num_blocks - 1, device="cuda")[:batch * blocks_per_seq] + 1).view(batch, -1)
        tables = tables.to(torch.int32)
        lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, hq, d, device="cuda", dtype=dtype)
        for _ in range(3):
            paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5)
        torch.cuda.synchronize()
        iters = 20
        start = time.perf_counter()
        for _ in range(iters):
            paged_decode_attention(q, kc, vc, tables, lens, d ** -0.5)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / iters
        moved = 2 * batch * context * hkv * d * kc.element_size()
        achieved = moved / seconds
        lines.append(f"decode B{batch} ctx{context} Hq{hq}/Hkv{hkv} D{d}: {seconds * 1e3:.3f} ms, "
                     f"{achieved / 1e9:.0f} GB/s = {100 * achieved / peak_bandwidth():.0f}% of peak")
    return lines


def large_random_llama(folder: Path) -> Path:
    """A ~1B-parameter Llama with random weights and the default model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from nbllm.default_model import default_model_path

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=49152, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(folder)
    return folder


def end_to_end(path: Path, label: str, max_new: int = 128) -> list[str]:
    from transformers import AutoModelForCausalLM

    from nbllm import LLM, SamplingParams

    lines = []
    prompts = [[1000 + (i * 7 + j) % 5000 for j in range(64)] for i in range(64)]
    llm = LLM(str(path), dtype="bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).cuda().eval()
    for batch in (1, 64):
        params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts[:batch]], params, use_tqdm=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts[:batch]], params, use_tqdm=False)
        ours = batch * max_new / (time.perf_counter() - t0)
        ids = torch.tensor(prompts[:batch], device="cuda")
        with torch.inference_mode():
            hf.generate(ids, do_sample=False, max_new_tokens=8, min_new_tokens=8)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                        min_new_tokens=max_new)
            torch.cuda.synchronize()
        theirs = batch * max_new / (time.perf_counter() - t0)
        lines.append(f"{label} batch {batch}: nbllm {ours:.0f} tok/s, transformers {theirs:.0f} tok/s, "
                     f"ratio {ours / theirs:.2f}x")
    llm.shutdown()
    del hf
    torch.cuda.empty_cache()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU")
    summary = [f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    if not args.skip_tests:
        summary.append("kernel tests: " + run_kernel_tests())
    summary += decode_bandwidth()
    from nbllm.default_model import default_model_path

    summary += end_to_end(default_model_path(), "SmolLM2-135M")
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            summary += end_to_end(large_random_llama(Path(tmp)), "Llama-1B (random)")
    print("\n".join(["", "=== GPU check ==="] + summary))


if __name__ == "__main__":
    main()
