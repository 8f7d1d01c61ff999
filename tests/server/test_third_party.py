"""RemoteLLM against a server that is neither nbllm nor vLLM (third_party.py, modelled on llama.cpp's).

It must say what it cannot do instead of failing late or silently: capabilities from
the probe on connect (no network I/O afterwards, even for isinstance), n choices by
asking n times, explicit errors for cut streams (never fragments passed off as text),
no retry of a deterministic 500, counts from `usage` (from the chunks of a stream that
sends none), one warning per vLLM-only option, logprobs keyed by token text refused
with a warning instead of coming back empty, one concurrency limit shared by all callers.
"""

import threading
import warnings

import pandas as pd
import pytest
from IPython.core.error import UsageError

from nbllm import EngineClient, SamplingParams
from nbllm.client import RemoteError, RemoteLLM
from nbllm.notebook.dataframes import RowsFailed, generate_dataframe
from third_party import MODEL, ThirdPartyServer

PARAMS = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def peer():
    server = ThirdPartyServer(delay_s=0.02)
    yield server
    server.stop()


@pytest.fixture
def remote(peer):
    with RemoteLLM(f"{peer.url}/v1", max_retries=2, retry_backoff_s=0.01, max_concurrency=3) as llm:
        yield llm


def test_capabilities_come_from_one_probe_and_isinstance_does_no_io(remote, peer):
    caps = remote.capabilities
    assert (caps.metrics, caps.tokenizer, caps.logprobs, caps.token_ids) == (False, False, False, False)
    assert remote.model_name == MODEL and remote.max_model_len is None
    assert not remote.server.multiple_choices and not remote.server.vllm_compatible
    calls = len(peer.counters.calls)
    assert isinstance(remote, EngineClient)
    assert len(peer.counters.calls) == calls, "isinstance read cached properties only"
    with pytest.raises(NotImplementedError, match="tokenize"):
        remote.get_tokenizer()


def test_n_choices_from_a_server_that_answers_one(remote, peer):
    calls = len(peer.counters.calls)
    [output] = remote.generate("one two three", PARAMS.updated(n=2), use_tqdm=False)
    assert output.finished and [c.finish_reason for c in output.outputs] == ["stop", "stop"]
    assert [c.text for c in output.outputs] == ["three two one "] * 2
    assert len(peer.counters.calls) - calls == 2 and all(c["n"] == 1 for c in peer.counters.calls[-2:])
    streamed = list(remote.stream("a b", PARAMS.updated(n=2)))
    assert streamed[-1].finished and [c.text for c in streamed[-1].outputs] == ["b a "] * 2


def test_a_cut_stream_is_an_explicit_error_never_a_fragment(remote):
    *_, last = remote.stream("CUT one two three four", PARAMS)
    failed = last.outputs[0]
    assert last.finished and failed.finish_reason == "error" and "cut" in failed.stop_reason
    [plain] = remote.generate("CUT one two three four", PARAMS, use_tqdm=False)  # a cut plain response
    assert plain.outputs[0].finish_reason == "error"


def test_dataframes_get_an_error_column_or_raise(remote):
    prompts = ["a b", "CUT one two three four", "c d"]
    table = generate_dataframe(remote, prompts, PARAMS, use_tqdm=False)
    assert table["text"].tolist()[0::2] == ["b a ", "d c "] and pd.isna(table["text"][1])
    assert table["error"].isna().tolist() == [True, False, True] and "cut" in table["error"][1]
    assert table[["prompt_tokens", "completion_tokens"]].isna().all().all(), "unknown counts, never a wrong 0"
    with pytest.raises(RowsFailed, match="1 of 3 prompts failed"):
        generate_dataframe(remote, prompts, PARAMS, use_tqdm=False, errors="raise")
    frame = pd.DataFrame({"word": ["x", "CUT one two three four"]})
    with pytest.raises(RowsFailed):
        frame.llm.generate("{word}", llm=remote, sampling_params=PARAMS, use_tqdm=False)
    kept = frame.llm.generate("{word}", llm=remote, sampling_params=PARAMS, use_tqdm=False, errors="column")
    assert kept["completion"].tolist()[0] == "x " and pd.isna(kept["completion"][1])
    assert pd.isna(kept["completion_error"][0]) and "cut" in kept["completion_error"][1]
    with pytest.raises(ValueError, match='errors must be "raise" or "column"'):
        frame.llm.generate("{word}", llm=remote, errors="ignore")


def test_a_500_is_not_retried(remote, peer):
    calls = len(peer.counters.calls)
    [output] = remote.generate({"prompt_token_ids": [1, 2]}, PARAMS, use_tqdm=False)  # sent as "[1, 2]"
    assert output.outputs[0].finish_reason == "stop"
    [failed] = remote.generate("FAIL500", PARAMS, use_tqdm=False)
    assert failed.outputs[0].finish_reason == "error" and "500" in failed.outputs[0].stop_reason
    assert len(peer.counters.calls) - calls == 2, "the 500 was asked once"


def test_counts_come_from_usage(remote):
    remote.generate(["one two", "three four five"], PARAMS, use_tqdm=False)
    stats = remote.get_stats()
    assert stats.requests_finished_total == 2 and stats.prompt_tokens_total == 5
    assert stats.generation_tokens_total == 5 and stats.num_blocks_total == 0


def test_streamed_tokens_are_counted_without_usage_in_the_stream(remote):
    list(remote.stream("one two three", PARAMS))  # three words come as three chunks and no usage
    list(remote.stream_chat([{"role": "user", "content": "four five"}], PARAMS))
    stats = remote.get_stats()
    assert stats.requests_finished_total == 2 and stats.generation_tokens_total == 5


def test_logprobs_without_token_ids_warn_once_and_come_back_as_none(remote):
    assert not remote.capabilities.logprobs, "logprobs named by token text cannot be keyed by id"
    with pytest.warns(UserWarning, match="logprobs are not offered") as caught:
        [output] = remote.generate("a b", PARAMS.updated(logprobs=2), use_tqdm=False)
    assert len(caught) == 1 and output.outputs[0].logprobs is None and output.outputs[0].text == "b a "
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        *_, last = remote.stream("c d", PARAMS.updated(logprobs=1))
    assert last.outputs[0].logprobs is None and last.outputs[0].text == "d c "


def test_vllm_only_options_warn_once_each(remote):
    params = PARAMS.updated(repetition_penalty=1.2, ignore_eos=True)
    with pytest.warns(UserWarning) as caught:
        remote.generate(["a", "b"], params, use_tqdm=False)
    named = sorted(str(w.message).split(" ")[0] for w in caught)
    assert named == ["ignore_eos", "repetition_penalty"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remote.generate("c", params.updated(min_tokens=0), use_tqdm=False)  # the same options: no new warning


def test_one_concurrency_limit_for_all_callers(peer):
    peer.counters.peak = 0
    with RemoteLLM(f"{peer.url}/v1", max_concurrency=2) as remote:
        results = []
        callers = [threading.Thread(target=lambda: results.append(remote.generate([f"w{i}" for i in range(5)],
                                                                                  PARAMS, use_tqdm=False)))
                   for _ in range(3)]
        for caller in callers:
            caller.start()
        streamed = list(remote.stream(["s1", "s2", "s3"], PARAMS))
        for caller in callers:
            caller.join(30)
    assert len(results) == 3 and sum(o.finished for o in streamed) == 3
    assert peer.counters.peak == 2


def test_nbllm_connect_verifies_and_status_says_what_is_missing(peer, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from nbllm.notebook.session import session_for

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbllm")
    try:
        with pytest.raises(UsageError, match="ConnectError"):
            shell.run_line_magic("nbllm", "connect http://127.0.0.1:9/v1")
        shell.run_line_magic("nbllm", f"connect {peer.url}/v1")
        assert "unavailable: server metrics, KV block states, tokenizer" in capsys.readouterr().out
        session_for(shell).get_engine().generate("x y", PARAMS, use_tqdm=False)
        rows = dict(shell.run_line_magic("nbllm", "status").rows())
        assert rows["tokens"] == "2 prompt, 2 generated" and "logprobs" in rows["unavailable"]
    finally:
        session_for(shell).unload()


def test_a_wrong_key_or_dead_url_fails_on_connect(peer):
    with pytest.raises(RemoteError, match="does not serve the model"):
        RemoteLLM(peer.url, model="other")


def test_notebook_views_never_show_a_wrong_count_of_zero_tokens(remote):
    from nbllm import ChatPanel
    from nbllm.notebook.generate_cell import PromptProgress
    from nbllm.outputs import CompletionOutput, RequestOutput

    panel = ChatPanel(remote, sampling_params=PARAMS)
    panel.send_message("one two")
    assert panel.wait(30) and panel.messages[-1]["content"] == "two one "
    assert "8 characters" in panel.status.value and "tokens" not in panel.status.value
    progress = PromptProgress(started=1.0, completions=1)  # %%generate's time to first token, from text alone
    progress.take(RequestOutput("r", "p", [], None, [CompletionOutput(0, "two ", [], None, None)], False), now=1.5)
    assert progress.summary().time_to_first_token == 0.5
