"""%nbllm and %%generate through IPython's shell: options, interpolation, batching, errors."""

from __future__ import annotations

import re
import sys
import time
import types

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from nb_fakes import FailingAfterFirstOutput, HeldEngine, SpyLLM, assert_engine_idle

from nbllm import CompletionOutput, RequestOutput, SamplingParams
from nbllm.notebook import generate_cell
from nbllm.notebook.kv_monitor import KVCacheMonitor
from nbllm.notebook.session import EngineSession, session_for


def greedy(llm, prompt: str, max_tokens: int) -> str:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].text


# ----------------------------------------------------------------------------- %%generate options


def test_options_become_sampling_params(ip, spy):
    ip.user_ns["engine"] = spy
    result = ip.run_cell_magic("generate", "--llm engine --max-tokens 7 --temperature 0.5 --top-p 0.9 --top-k 20 "
                                           "--seed 3 --stop '\\n' --stop END -n 2 --out answer", "Hello")
    assert result is None, "--out stores the result; the cell does not echo it"
    result = ip.user_ns["answer"]
    [(_, prompt, params)] = spy.submitted
    assert prompt == "Hello"
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed, params.n) == \
        (7, 0.5, 0.9, 20, 3, 2)
    assert params.stop == ["\n", "END"]
    assert isinstance(result, list) and len(result) == 2
    assert_engine_idle(spy)


def test_every_sampling_field_is_an_option(ip, spy):
    """The options mirror SamplingParams' fields (derived, not listed by hand)."""
    ip.user_ns["engine"] = spy
    ip.run_cell_magic("generate", "--llm engine --max-tokens 3 --min-p 0.1 --repetition-penalty 1.2 "
                                  "--presence-penalty 0.5 --min-tokens 2 --ignore-eos --no-skip-special-tokens", "Hi")
    [(_, _, params)] = spy.submitted
    assert (params.min_p, params.repetition_penalty, params.presence_penalty, params.min_tokens) == (0.1, 1.2, 0.5, 2)
    assert params.ignore_eos is True and params.skip_special_tokens is False
    assert params.top_k == spy.get_default_sampling_params().top_k, "an option left out keeps the engine's default"


def test_default_max_tokens_and_no_out_returns_nothing(ip, spy):
    ip.user_ns["engine"] = spy
    assert ip.run_cell_magic("generate", "--llm engine --temperature 0", "Hi") is None
    assert spy.submitted[0][2].max_tokens == 128


def test_interpolation_and_escaped_braces(ip, spy):
    ip.user_ns.update(engine=spy, city="Paris", facts={"size": 2})
    ip.run_cell_magic("generate", "--llm engine --max-tokens 2", "About {city}, {facts[size]} {{not a field}}")
    assert spy.submitted[0][1] == "About Paris, 2 {not a field}"


def test_missing_variable_is_named(ip):
    ip.user_ns.pop("nowhere", None)
    with pytest.raises(UsageError, match="no variable named 'nowhere'"):
        ip.run_cell_magic("generate", "", "Tell me about {nowhere}")


@pytest.mark.parametrize("body, message", [("a lone { brace", "literal braces"), ("positional {}", "names no variable"),
                                           ("  \n", "cell is empty"), ("one\n---\n\n", "prompt 2 of 2 is empty")])
def test_bad_prompts_raise_usage_errors(ip, body, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("generate", "", body)


@pytest.mark.parametrize("line, message", [
    ("--bogus", "unrecognized arguments"), ("--max-tokens many", "invalid int value"),
    ("--format html", "invalid choice"), ("--top-p 2", "top_p must be in"), ("--max-tokens 0", "max_tokens"),
    ("--out 2x", "--out needs a variable name"), ("--beams 2 -n 3", "cannot be combined"),
    ("--stop 'unclosed", "No closing quotation")])
def test_bad_options_raise_usage_error_with_usage(ip, line, message):
    with pytest.raises(UsageError, match=message) as info:
        ip.run_cell_magic("generate", line, "Hello")
    assert "--max-tokens" in str(info.value)  # the usage text comes along


def test_separated_prompts_run_as_one_batch_in_order(ip, tiny_llm, spy):
    ip.user_ns["engine"] = spy
    body = "Once upon a time\n---\nThe capital of France\n---   \ndef add(a, b):"
    ip.run_cell_magic("generate", "--llm engine --temperature 0 --max-tokens 6 --out texts", body)
    result = ip.user_ns["texts"]
    prompts = [e[1] for e in spy.submitted]
    assert prompts == ["Once upon a time", "The capital of France", "def add(a, b):"]
    assert [e[0] for e in spy.events if e[0] != "output"] == ["submit"] * 3, "one request per prompt, no other call"
    assert result == [greedy(tiny_llm, p, 6) for p in prompts]


def test_an_interrupt_aborts_the_whole_batch(ip, tiny_llm):
    """The user interrupts the kernel while the second prompt's outputs are being read."""
    ip.user_ns["engine"] = FailingAfterFirstOutput(tiny_llm, KeyboardInterrupt(), submission=2)
    params = "--llm engine --max-tokens 100"
    with pytest.raises(KeyboardInterrupt):
        ip.run_cell_magic("generate", params, "one\n---\ntwo\n---\nthree")
    assert_engine_idle(tiny_llm)


def test_text_streams_into_one_updating_display(ip, slow):
    ip.user_ns["engine"] = slow
    with capture_output() as captured:
        ip.run_cell_magic("generate", "--llm engine --max-tokens 40 --ignore-eos --out text", "Stream me")
    text = ip.user_ns["text"]
    *shown, footer = [o.data["text/plain"] for o in captured.outputs]
    assert len(shown) >= 3, "the display is updated while tokens arrive"
    assert shown[-1] == text and len(shown[1]) < len(text)
    assert re.fullmatch(r"length · 40 tokens in [\d.]+ s · [\d.]+ tokens/s · TTFT [\d.]+ s", footer), footer
    assert "nbllm-footer" in captured.outputs[-1].data["text/html"]


def test_chat_and_system_render_the_template(ip, spy):
    ip.user_ns["engine"] = spy
    ip.run_cell_magic("generate", "--llm engine --system 'Be brief.' --max-tokens 3", "Hi there")
    [conversation] = spy.rendered
    assert conversation == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    [(_, prompt, _)] = spy.submitted
    assert prompt == spy.llm.render_chat_prompts(conversation)[0]


def test_markdown_format_displays_markdown(ip):
    with capture_output() as captured:
        ip.run_cell_magic("generate", "--format markdown --max-tokens 4", "Hello")
    assert "text/markdown" in captured.outputs[-2].data  # then the footer


def test_code_format_creates_the_next_cell(ip, monkeypatch):
    created = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: created.append((text, replace)))
    ip.run_cell_magic("generate", "--format code --temperature 0 --max-tokens 5 --out code", "def f():")
    text = ip.user_ns["code"]
    assert created == [(generate_cell.code_of(text), False)]


def test_code_of_takes_the_first_fenced_block():
    assert generate_cell.code_of("Here:\n```python\nx = 1\n```\nand ```y```") == "x = 1"
    assert generate_cell.code_of("print(1)\n") == "print(1)"


def test_logprobs_show_the_token_view(ip):
    with capture_output() as captured:
        ip.run_cell_magic("generate", "--logprobs 3 --max-tokens 4", "Hello")
    assert any("text/html" in o.data for o in captured.outputs), "the token-probability view is displayed"


def test_logprob_table_fallback(tiny_llm):
    output = tiny_llm.generate("Hi", SamplingParams(max_tokens=3, logprobs=2, ignore_eos=True), use_tqdm=False)[0]
    table = generate_cell.logprob_table(output.outputs[0])
    assert list(table.columns) == ["position", "token", "logprob", "alternatives"] and len(table) == 3
    assert (table["logprob"] <= 0).all()


def test_beams_display_the_search_output(ip):
    with capture_output() as captured:
        assert ip.run_cell_magic("generate", "--beams 2 --max-tokens 4 --out beams", "Hello") is None
    result = ip.user_ns["beams"]
    assert len(result.sequences) >= 1 and result.finished
    assert captured.outputs, "the beam output is displayed"


def test_beams_need_an_engine_with_beam_search(ip, tiny_llm):
    ip.user_ns["plain"] = SpyLLM(tiny_llm, beam_search=False)
    with pytest.raises(UsageError, match="does not do beam search"):
        ip.run_cell_magic("generate", "--llm plain --beams 2", "Hello")


def test_logprobs_need_an_engine_that_returns_them(ip, tiny_llm):
    ip.user_ns["plain"] = engine = SpyLLM(tiny_llm, logprobs=False)
    with pytest.raises(UsageError, match="returns no logprobs"):
        ip.run_cell_magic("generate", "--llm plain --logprobs 2", "Hello")
    assert engine.submitted == []


def test_unknown_llm_variable(ip):
    with pytest.raises(UsageError, match="--llm names 'missing_engine'"):
        ip.run_cell_magic("generate", "--llm missing_engine", "Hello")


# ----------------------------------------------------------------------------- %nbllm


def test_status_shows_model_and_kv_usage(ip, tiny_llm):
    status = ip.run_line_magic("nbllm", "status")
    assert status.model == tiny_llm.model_name and status.num_blocks_total == tiny_llm.get_stats().num_blocks_total
    assert "KV cache" in repr(status) and "<table" in status._repr_html_()


def test_status_of_an_engine_without_metrics(ip, tiny_llm):
    session_for(ip).set_engine(SpyLLM(tiny_llm, metrics=False))
    rows = dict(ip.run_line_magic("nbllm", "status").rows())
    assert "KV cache" not in rows and rows["unavailable"].startswith("server metrics")


def test_status_without_engine_loads_nothing(ip, capsys):
    session_for(ip).unload()
    assert ip.run_line_magic("nbllm", "status") is None
    assert "No engine loaded" in capsys.readouterr().out and session_for(ip).engine is None


def test_load_and_unload(ip, tiny_llama_path, capsys):
    ip.run_line_magic("nbllm", f"load {tiny_llama_path} --num-kv-blocks 32 --block-size 8 --no-enable-prefix-caching")
    llm = session_for(ip).engine
    assert llm.get_stats().num_blocks_total == 31 and llm.config.enable_prefix_caching is False
    assert "Loaded" in capsys.readouterr().out
    ip.run_line_magic("nbllm", "unload")
    assert session_for(ip).engine is None and not llm.is_running, "an engine the session loaded is shut down"


@pytest.mark.parametrize("line, message", [("", "a command is needed"), ("reload", "unknown command 'reload'"),
                                           ("load x --dtype float8", "dtype must be one of"),
                                           ("load x --block-size 3", "power of two"), ("status now", "unrecognized")])
def test_bad_nbllm_commands(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("nbllm", line)


class FakeRemoteLLM(SpyLLM):
    """Stands in for nbllm.client.RemoteLLM: records its arguments, serves from the tiny model."""

    def __init__(self, llm, url, **kwargs):
        super().__init__(llm)
        self.url, self.kwargs, self.closed = url, kwargs, False

    def shutdown(self):
        self.closed = True


def test_connect_uses_a_remote_engine(ip, tiny_llm, monkeypatch):
    remote = types.ModuleType("nbllm.client")
    remote.RemoteLLM = lambda url, **kwargs: FakeRemoteLLM(tiny_llm, url, **kwargs)
    monkeypatch.setitem(sys.modules, "nbllm.client", remote)
    ip.run_line_magic("nbllm", "connect http://127.0.0.1:9/v1 --api-key k --model m")
    engine = session_for(ip).engine
    assert (engine.url, engine.kwargs) == ("http://127.0.0.1:9/v1", {"api_key": "k", "model": "m"})
    ip.run_cell_magic("generate", "--max-tokens 3 --out text", "Hi")
    assert ip.user_ns["text"] is not None
    assert engine.submitted, "%%generate used the remote engine"
    ip.run_line_magic("nbllm", "unload")
    assert engine.closed and tiny_llm.is_running


def test_monitor_returns_a_live_monitor(ip):
    monitor = ip.run_line_magic("nbllm", "monitor --interval 0.05")
    try:
        assert isinstance(monitor, KVCacheMonitor) and monitor.running
    finally:
        monitor.close()
    assert not monitor.running


def test_session_loads_lazily_and_shuts_down_only_its_own_engines():
    made = []

    class Engine:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs, self.closed = model, kwargs, False
            made.append(self)

        def shutdown(self):
            self.closed = True

    session = EngineSession(factory=Engine)
    assert session.engine is None and made == []
    first = session.get_engine()
    assert session.get_engine() is first and first.model is None and len(made) == 1
    second = session.load("folder", dtype="float32")
    assert first.closed and second.kwargs == {"dtype": "float32"}
    mine = Engine("mine")
    session.set_engine(mine)
    assert second.closed
    session.unload()
    assert not mine.closed and session.engine is None


# ----------------------------------------------------------------------------- one rendering, footer, interrupt


def test_out_is_not_echoed_as_the_cells_result(ip, spy):
    ip.user_ns["engine"] = spy
    with capture_output() as captured:
        result = ip.run_cell("%%generate --llm engine --max-tokens 3 --out answer\nHi")
    assert result.result is None and isinstance(ip.user_ns["answer"], str)
    *texts, footer = [o.data["text/plain"] for o in captured.outputs]
    assert texts[-1] == ip.user_ns["answer"] and "tokens/s" in footer, "streamed into one display, then the footer"


def test_raw_sends_braces_as_written(ip, spy):
    ip.user_ns["engine"] = spy
    ip.run_cell_magic("generate", "--llm engine --raw --max-tokens 2", 'Return JSON like {"city": {name}}')
    assert spy.submitted[0][1] == 'Return JSON like {"city": {name}}'


class EmptyEngine(HeldEngine):
    """Every request ends at once with an empty completion (e.g. EOS first)."""

    def submit(self, prompt, sampling_params=None, request_id=None, deliver=None):
        stream = super().submit(prompt, sampling_params, request_id, deliver)
        stream.put(RequestOutput(stream.request_id, "p", [1], None, [CompletionOutput(0, "", [7], None, None, "stop")],
                                 finished=True))
        return stream


def test_an_empty_completion_says_so(ip):
    ip.user_ns["engine"] = EmptyEngine()
    with capture_output() as captured:
        ip.run_cell_magic("generate", "--llm engine --out text", "Hi")
    *texts, footer = [o.data["text/plain"] for o in captured.outputs]
    assert texts[-1] == "(empty completion)" and ip.user_ns["text"] == ""
    assert footer.startswith("stop · 1 tokens")


def test_an_interrupt_is_one_line_and_keeps_the_text(ip, tiny_llm):
    ip.user_ns["engine"] = FailingAfterFirstOutput(tiny_llm, KeyboardInterrupt(), submission=1)
    with capture_output() as captured:
        result = ip.run_cell("%%generate --llm engine --max-tokens 100 --out partial\nOnce upon a time")
    assert isinstance(result.error_in_exec, generate_cell.CellInterrupted)
    assert isinstance(result.error_in_exec, KeyboardInterrupt), "still an interrupt: a Run All stops here"
    assert captured.stdout.strip() == "interrupted after 1 token; the text so far is in partial", captured.stdout
    assert "Traceback" not in captured.stdout + captured.stderr
    shown = [o.data["text/plain"] for o in captured.outputs]
    partial = ip.user_ns["partial"]
    assert isinstance(partial, str) and shown[-1] == (partial or "(empty completion)"), "no footer: the line says it"
    assert_engine_idle(tiny_llm)


class SlowBeams(SpyLLM):
    """Beam searches whose steps come about 0.2 s apart, so that a test sees the tree grow."""

    def submit_beam_search(self, prompt, params, request_id=None, deliver=None):
        def slowly(item):
            if not getattr(item, "finished", True):
                time.sleep(0.2)
            deliver(item)
        return self.llm.submit_beam_search(prompt, params, request_id, slowly)


def test_beams_grow_live_and_are_drawn_once(ip, tiny_llm):
    ip.user_ns["engine"] = SlowBeams(tiny_llm)
    with capture_output() as captured:
        result = ip.run_cell("%%generate --llm engine --beams 2 --max-tokens 6 --out beams\nHello")
    assert result.result is None
    html = [o.data.get("text/html", "") for o in captured.outputs]
    growing = [h for h in html if "searching…" in h]
    assert len(growing) >= 2, "the tree is redrawn while the search runs"
    steps = [int(re.search(r"(\d+) steps", h).group(1)) for h in growing]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert "searching…" not in html[-1] and "Beam search" in html[-1], "the final tree replaces it"
    assert ip.user_ns["beams"].finished
    assert_engine_idle(tiny_llm)
