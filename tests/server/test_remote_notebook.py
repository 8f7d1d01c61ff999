"""The notebook features against a RemoteLLM over real HTTP: %nbllm connect, %%generate, df.llm, ChatPanel."""

import pandas as pd
import pytest

from http_testing import MODEL, wait_idle
from nbllm import SamplingParams


@pytest.fixture
def remote_shell(server):
    from IPython.core.interactiveshell import InteractiveShell

    from nbllm.notebook.session import session_for

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbllm")
    shell.run_line_magic("nbllm", f"connect {server.url}/v1 --model {MODEL}")
    yield shell
    session_for(shell).unload()


def test_connect_switches_the_kernel_engine_to_remote(remote_shell):
    from nbllm.notebook.session import session_for
    from nbllm.client import RemoteLLM

    assert isinstance(session_for(remote_shell).get_engine(), RemoteLLM)


def test_generate_cell_over_http_matches_local(remote_shell, tiny_llm):
    local = tiny_llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0].text
    remote_shell.run_cell_magic("generate", "--max-tokens 8 --temperature 0 --out story", "Once upon a time")
    story = remote_shell.user_ns["story"]
    assert (story if isinstance(story, str) else story[0]) == local
    wait_idle(tiny_llm)


def test_dataframe_accessor_over_http(remote_shell, tiny_llm):
    from nbllm.notebook.session import session_for

    remote = session_for(remote_shell).get_engine()
    frame = pd.DataFrame({"city": ["Paris", "Rome", "Paris", None]})
    out = frame.llm.generate("The capital city {city} is", out="answer", llm=remote,
                             sampling_params=SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert "answer" in out.columns and "answer" not in frame.columns
    assert out["answer"][0] == out["answer"][2] and isinstance(out["answer"][0], str)
    assert pd.isna(out["answer"][3])
    local = tiny_llm.generate("The capital city Rome is", SamplingParams(temperature=0, max_tokens=4,
                                                                       ignore_eos=True), use_tqdm=False)[0]
    assert out["answer"][1] == local.outputs[0].text
    wait_idle(tiny_llm)


def test_chat_panel_over_http(remote_shell, tiny_llm):
    from nbllm import ChatPanel
    from nbllm.notebook.session import session_for

    panel = ChatPanel(session_for(remote_shell).get_engine(),
                      sampling_params=SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    panel.send_message("Hello there")
    assert panel.wait(30)
    local = tiny_llm.chat([{"role": "user", "content": "Hello there"}],
                          SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)[0]
    assert panel.messages[-1] == {"role": "assistant", "content": local.outputs[0].text}
    wait_idle(tiny_llm)
