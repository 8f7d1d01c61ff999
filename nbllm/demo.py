"""`make demo`: load the embedded default model, generate for a handful of prompts, report speed.

Run as ``python -m nbllm.demo``. Prints each prompt's completion and the
throughput of the batch (generated tokens per second) and of one stream.
"""

from __future__ import annotations

import time

from nbllm import LLM, SamplingParams

CHAT_QUESTIONS = ["What is the capital of France?", "Give me three tips for writing clear Python code."]
PLAIN_PROMPTS = ["Once upon a time", "The three primary colors are", "def fibonacci(n):"]


def main() -> None:
    t0 = time.perf_counter()
    llm = LLM()
    print(f"loaded {llm.model_name} in {time.perf_counter() - t0:.1f}s "
          f"({llm.llm_engine.runner.num_blocks - 1} KV blocks of {llm.config.block_size} tokens)")
    tokenizer = llm.get_tokenizer()
    chat_prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True) for q in CHAT_QUESTIONS]
    prompts = chat_prompts + PLAIN_PROMPTS
    t0 = time.perf_counter()
    llm.generate(PLAIN_PROMPTS[0], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    print(f"warm-up in {time.perf_counter() - t0:.1f}s (on CPUs the first decode step of a process compiles the "
          f"decode code: about 30 s once per machine, a few seconds after)")
    labels = CHAT_QUESTIONS + PLAIN_PROMPTS
    params = SamplingParams(temperature=0, max_tokens=64)

    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    for label, output in zip(labels, outputs):
        print(f"\n### {label}\n{output.outputs[0].text.strip()}")
        print(f"[{len(output.outputs[0].token_ids)} tokens, finish_reason={output.outputs[0].finish_reason}]")
    print(f"\nbatch of {len(prompts)}: {generated} tokens in {elapsed:.2f}s = {generated / elapsed:.1f} tokens/s")

    t0 = time.perf_counter()
    single = llm.generate(PLAIN_PROMPTS[0], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True),
                          use_tqdm=False)[0]
    elapsed = time.perf_counter() - t0
    print(f"single stream: {len(single.outputs[0].token_ids)} tokens in {elapsed:.2f}s = "
          f"{len(single.outputs[0].token_ids) / elapsed:.1f} tokens/s")
    llm.shutdown()


if __name__ == "__main__":
    main()
