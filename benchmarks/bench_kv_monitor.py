"""What the live KV-cache monitor costs a generation: decode speed with it displayed and without.

    python benchmarks/bench_kv_monitor.py [--rounds 10] [--tokens 320] [--interval 0.5]

The monitor only runs for real inside a kernel (its thread sends widget messages to a
front end), so this runs a generated notebook in a fresh IPython kernel (nbclient): the
default model decodes 4 prompts x `--tokens` tokens greedily, alternately with a
`KVCacheMonitor(interval=...)` displayed and without one, for `--rounds` rounds (each
round runs both, the order alternating). Printed: the tokens/s of each, the per-round
ratio with/without and its median (the issue's target: a cost of at most 2%, a ratio of
at least 0.98), the process CPU time per token, the CPU model and the load average.
A busy machine moves single rounds by several percent: read the median, and raise
`--interval`'s rate (e.g. 0.02) to make the monitor's own cost stand out of the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import cpu_description  # noqa: E402  (the benchmarks folder is not a package)

SETUP = """\
import json, resource, statistics, time
from IPython.display import display
from nbllm import LLM, SamplingParams
from nbllm.notebook import KVCacheMonitor

llm = LLM(None, num_kv_blocks=1024)
params = SamplingParams(max_tokens={tokens}, ignore_eos=True, temperature=0)
prompts = ["Once upon a time"] * 4

def run():
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return len(prompts) * {tokens} / wall, 1000 * cpu / (len(prompts) * {tokens})

run()  # warm-up
"""

ROUNDS = """\
results = {{"off": [], "on": []}}
for r in range({rounds}):
    for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
        if mode == "on":
            monitor = KVCacheMonitor(llm, interval={interval})
            display(monitor)
            time.sleep(0.2)
            results["on"].append(run())
            monitor.close()
        else:
            results["off"].append(run())
print("RESULT " + json.dumps(results))
"""


def run_notebook(rounds: int, tokens: int, interval: float) -> dict:
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(SETUP.format(tokens=tokens)),
                      nbformat.v4.new_code_cell(ROUNDS.format(rounds=rounds, interval=interval))]
    NotebookClient(notebook, timeout=None, startup_timeout=600, kernel_name="python3").execute()
    for output in notebook.cells[-1].outputs:
        for line in output.get("text", "").splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the benchmark notebook printed no result: {notebook.cells[-1].outputs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=320)
    parser.add_argument("--interval", type=float, default=0.5, help="the monitor's seconds between readings")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}; load average at start {os.getloadavg()}")
    results = run_notebook(args.rounds, args.tokens, args.interval)
    for mode in ("off", "on"):
        rates = [rate for rate, _ in results[mode]]
        cpu = [per_token for _, per_token in results[mode]]
        print(f"monitor {mode:3}: tokens/s median {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}), "
              f"process CPU per token median {statistics.median(cpu):.2f} ms")
    ratios = [on[0] / off[0] for on, off in zip(results["on"], results["off"])]
    print(f"with/without per round: {[round(r, 3) for r in ratios]}")
    print(f"median ratio {statistics.median(ratios):.3f} (interval {args.interval} s; target >= 0.98); "
          f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
