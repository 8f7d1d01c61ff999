"""%nbllm and %%generate through IPython's shell: options, interpolation, batching, errors."""

from __future__ import annotations

import sys
import types

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from nb_fakes import FailingAfterFirstOutput, SpyLLM, assert_engine_idle

from nbllm import SamplingParams
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
    [(_, prompt, params)] = spy.submitted
    assert prompt == "Hello"
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed, params.n) == \
        (7, 0.5, 0.9, 20, 3, 2)
    assert params.stop == ["\n", "END"]
    assert ip.user_ns["answer"] is result and isinstance(result, list) and len(result) == 2
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
    result = ip.run_cell_magic("generate", "--llm engine --temperature 0 --max-tokens 6 --out texts", body)
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
        text = ip.run_cell_magic("generate", "--llm engine --max-tokens 40 --out text", "Stream me")
    shown = [o.data["text/plain"] for o in captured.outputs]
    assert len(shown) >= 3, "the display is updated while tokens arrive"
    assert shown[-1] == text and len(shown[1]) < len(text)


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
    assert "text/markdown" in captured.outputs[-1].data


def test_code_format_creates_the_next_cell(ip, monkeypatch):
    created = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: created.append((text, replace)))
    text = ip.run_cell_magic("generate", "--format code --temperature 0 --max-tokens 5 --out code", "def f():")
    assert created == [(generate_cell.code_of(text), False)]


def test_code_of_takes_the_first_fenced_block():
    assert generate_cell.code_of("Here:\n```python\nx = 1\n```\nand ```y```") == "x = 1"
    assert generate_cell.code_of("print(1)\n") == "print(1)"


def test_logprobs_show_the_token_view(ip):
    with capture_output() as captured:
        ip.run_cell_magic("generate", "--logprobs 3 --max-tokens 4", "Hello")
    assert any("text/html" in o.data for o in captured.outputs), "the token-probability view is displayed"


def test_logprob_table_fallback(tiny_llm):
    output = tiny_llm.generate("Hi", SamplingParams(max_tokens=3, logprobs=2), use_tqdm=False)[0]
    table = generate_cell.logprob_table(output.outputs[0])
    assert list(table.columns) == ["position", "token", "logprob", "alternatives"] and len(table) == 3
    assert (table["logprob"] <= 0).all()


def test_beams_display_the_search_output(ip):
    with capture_output() as captured:
        result = ip.run_cell_magic("generate", "--beams 2 --max-tokens 4 --out beams", "Hello")
    assert len(result.sequences) >= 1
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


def test_status_of_an_engine_without_metrics(ip, tiny_llm, capsys):
    session_for(ip).set_engine(SpyLLM(tiny_llm, metrics=False))
    assert ip.run_line_magic("nbllm", "status") is None
    assert "reports no metrics" in capsys.readouterr().out


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
    assert ip.run_cell_magic("generate", "--max-tokens 3 --out text", "Hi") is not None
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
