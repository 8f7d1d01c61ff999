"""Structured outputs: what a grammar costs per token, and what it costs its batch mates.

    python benchmarks/bench_structured.py [--reps 3] [--skip-engine]

1. Mask cost on the default model's tokenizer (49,152 tokens), for xgrammar (nbllm's
   backend) and llguidance (if installed): compile time and the time to compute one
   next-token bitmask, over the tokens of a valid output, per constraint.
2. The sampler's grammar step (layers/grammar_mask.py) for 0, 1 and 8 constrained rows of 16.
3. Batch mates, on the default model: 8 unconstrained greedy requests decode 64 tokens
   beside a 9th request that is unconstrained, or constrained by a JSON schema, or by a
   regex; the unconstrained requests' mean inter-token latency is compared. The variants
   alternate, each repetition starting with the next one; medians are printed. Each run
   also reports the time the steps spent on grammar work (the batch mask and the
   matchers' accepts), a share that a busy machine distorts less than latencies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "mood": {"enum": ["happy", "sad", "neutral"]},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                                                                                      "pattern": "[0-9]{5}"}},
                "required": ["city", "zip"]},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
    "required": ["name", "age", "mood", "address", "tags"], "additionalProperties": False}
PERSON_TEXT = json.dumps({"name": "Ada Lovelace", "age": 36, "mood": "happy",
                          "address": {"city": "London", "zip": "12345"}, "tags": ["math", "engines", "poetry"]})
CASES = {  # name: (kind, constraint, a valid output)
    "json": ("json", PERSON, PERSON_TEXT),
    "regex": ("regex", r"\d{3}-\d{4} [A-Za-z ]{1,30}", "555-1234 Hello there friend"),
    "choice": ("choice", ["positive", "negative", "neutral"], "negative"),
}


def stats_us(seconds: list[float]) -> str:
    us = sorted(s * 1e6 for s in seconds)
    p99 = us[int(0.99 * len(us))]
    return f"median {statistics.median(us):6.1f} us, mean {statistics.mean(us):6.1f} us, p99 {p99:7.1f} us"


# ----------------------------------------------------------------------------- 1. mask cost
def bench_xgrammar(tokenizer, vocab: int, passes: int) -> None:
    import xgrammar as xgr

    from nbllm.engine.grammar import choice_grammar

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab),
                                   cache_enabled=False)
    compile_fn = {"json": compiler.compile_json_schema, "regex": compiler.compile_regex,
                  "choice": lambda c: compiler.compile_grammar(choice_grammar(c))}
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for name, (kind, constraint, text) in CASES.items():
        t0 = time.perf_counter()
        grammar = compile_fn[kind](constraint)
        compiled = time.perf_counter() - t0
        ids, times = tokenizer.encode(text, add_special_tokens=False), []
        for _ in range(passes):
            matcher = xgr.GrammarMatcher(grammar)
            for token in ids:
                t0 = time.perf_counter()
                matcher.fill_next_token_bitmask(bitmask, 0)
                times.append(time.perf_counter() - t0)
                assert matcher.accept_token(token)
        print(f"  xgrammar   {name:6s} compile {compiled * 1e3:7.1f} ms; mask per token {stats_us(times)}")


def bench_llguidance(tokenizer, vocab: int, passes: int) -> None:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    grammar_of = {"json": llguidance.LLMatcher.grammar_from_json_schema,
                  "regex": llguidance.LLMatcher.grammar_from_regex,
                  "choice": lambda c: llguidance.LLMatcher.grammar_from_lark(
                      "start: " + " | ".join(json.dumps(x) for x in c))}
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
    for name, (kind, constraint, text) in CASES.items():
        t0 = time.perf_counter()
        grammar = grammar_of[kind](constraint)
        llguidance.LLMatcher(lltok, grammar)
        compiled = time.perf_counter() - t0
        ids, times = tokenizer.encode(text, add_special_tokens=False), []
        for _ in range(passes):
            matcher = llguidance.LLMatcher(lltok, grammar)
            for token in ids:
                t0 = time.perf_counter()
                llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
                times.append(time.perf_counter() - t0)
                assert matcher.consume_token(token), matcher.get_error()
        print(f"  llguidance {name:6s} compile {compiled * 1e3:7.1f} ms; mask per token {stats_us(times)}")


# ----------------------------------------------------------------------------- 2. sampler step
def bench_grammar_mask(tokenizer, vocab: int) -> None:
    import xgrammar as xgr

    from nbllm.engine.grammar import SequenceGrammar
    from nbllm.layers.grammar_mask import apply_grammars

    grammar = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab),
                                  cache_enabled=False).compile_json_schema(PERSON)
    for constrained in (0, 1, 8):
        logits = torch.randn(16, vocab)
        rows = [SequenceGrammar(grammar) if i < constrained else None for i in range(16)]
        for row in rows[:constrained]:
            for token in tokenizer.encode('{"name": "Ada', add_special_tokens=False):  # inside a string
                row.accept(token)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            apply_grammars(logits, rows)
            times.append(time.perf_counter() - t0)
        print(f"  grammar step, 16 rows of which {constrained} constrained: {stats_us(times)}")


# ----------------------------------------------------------------------------- 3. batch mates
class StepTimer:
    """Wall time spent in a function, wrapped in place (this script's own instrumentation)."""

    def __init__(self, owner, name: str):
        self.total, self.calls, original = 0.0, 0, getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0
                self.calls += 1
        setattr(owner, name, timed)


def bench_batch_mates(reps: int, max_tokens: int) -> None:
    from nbllm import LLM, SamplingParams, StructuredOutputsParams
    from nbllm.engine import model_runner
    from nbllm.engine.grammar import SequenceGrammar
    from nbllm.layers import sampler

    steps, masks = StepTimer(model_runner.ModelRunner, "execute"), StepTimer(sampler, "apply_grammars")
    accepts = StepTimer(SequenceGrammar, "accept")
    llm = LLM()
    tokenizer = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer.encode(f"Story number {i}: once upon a time")} for i in range(8)]
    plain = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    mates = {  # each runs every step: neither constraint can end sooner
        "unconstrained mate": plain,
        "JSON-schema mate": plain.updated(structured_outputs=StructuredOutputsParams(
            json={"type": "array", "items": {"type": "integer"}, "minItems": 400})),
        "regex mate": plain.updated(structured_outputs=StructuredOutputsParams(regex="([a-z ]+[,.] ){100}")),
    }
    mate_prompt = {"prompt_token_ids": tokenizer.encode("List some numbers:")}
    for mate in mates.values():  # warm up, and compile both constraints
        llm.generate(prompts[:1] + [mate_prompt], [plain, mate.updated(max_tokens=4)], use_tqdm=False)
    results: dict[str, list[float]] = {name: [] for name in mates}
    names = list(mates)
    for rep in range(reps):
        for name in names[rep % 3:] + names[:rep % 3]:  # each repetition starts with another variant
            mate = mates[name]
            before = (steps.total, steps.calls, masks.total, accepts.total)
            outs = llm.generate(prompts + [mate_prompt], [plain] * 8 + [mate], use_tqdm=False)
            itl = statistics.mean((o.metrics.last_token_time - o.metrics.first_token_time)
                                  / (len(o.outputs[0].token_ids) - 1) for o in outs[:8])
            results[name].append(itl)
            step_s, n_steps = steps.total - before[0], steps.calls - before[1]
            grammar_s = masks.total - before[2] + accepts.total - before[3]
            print(f"  rep {rep + 1}: {name:18s} unconstrained ITL {itl * 1e3:7.1f} ms; {n_steps} steps of "
                  f"{step_s / n_steps * 1e3:6.1f} ms, grammar work {grammar_s / n_steps * 1e6:6.1f} us a step "
                  f"({grammar_s / step_s:.3%})", flush=True)
    base = statistics.median(results["unconstrained mate"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:18s} median unconstrained ITL {median * 1e3:7.1f} ms  ({median / base:.3f}x)")
    llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each request of part 3 decodes")
    parser.add_argument("--passes", type=int, default=5, help="passes over each valid output in part 1")
    parser.add_argument("--skip-engine", action="store_true", help="parts 1 and 2 only (no model)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from nbllm.default_model import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    vocab = 49152
    print(f"1. mask cost, {vocab}-token vocabulary, {torch.get_num_threads()} torch threads")
    bench_xgrammar(tokenizer, vocab, args.passes)
    try:
        bench_llguidance(tokenizer, vocab, args.passes)
    except ImportError:
        print("  llguidance not installed: skipped")
    print("2. the sampler's grammar step")
    bench_grammar_mask(tokenizer, vocab)
    if not args.skip_engine:
        print(f"3. batch mates: 8 unconstrained greedy requests, {args.max_tokens} tokens each, and a 9th")
        bench_batch_mates(args.reps, args.max_tokens)


if __name__ == "__main__":
    main()
