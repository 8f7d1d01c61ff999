"""Fixtures for the notebook-layer tests: an IPython shell with the extension, engine spies."""

from __future__ import annotations

import pytest
from nb_fakes import SpyLLM

from nbllm.notebook.session import session_for


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (`item.rep_call`), for fixtures that act on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def ip(tiny_llm):
    """IPython's shell with %load_ext nbllm; the kernel's engine is the shared tiny model."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbllm")
    session = session_for(shell)
    session.set_engine(tiny_llm)
    yield shell
    session.unload()


@pytest.fixture(scope="session")
def long_llm(tmp_path_factory):
    """A tiny Llama with a 4096-token context: a reply of a few thousand tokens takes seconds,
    so a test can stop it while the engine is still generating."""
    from tiny_models import make_tiny_model

    from nbllm import LLM

    folder = make_tiny_model("LlamaForCausalLM", tmp_path_factory.mktemp("tiny-llama-4k"),
                             max_position_embeddings=4096)
    llm = LLM(str(folder), num_kv_blocks=1200, block_size=8)
    yield llm
    llm.shutdown()


@pytest.fixture
def spy(tiny_llm):
    return SpyLLM(tiny_llm)


@pytest.fixture
def slow(tiny_llm):
    """The tiny model, streaming about 100 outputs per second: slow enough to stop mid-reply."""
    return SpyLLM(tiny_llm, delay=0.01)
