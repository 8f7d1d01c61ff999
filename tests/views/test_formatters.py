"""IPython displays a BeamTree or BeamSearchOutput as the beam view: formatters, not _repr_html_."""

from __future__ import annotations

import subprocess
import sys

import pytest
from html_tree import parse
from IPython.core.interactiveshell import InteractiveShell

import nbllm
from nbllm.beam_tree import BeamTree
from nbllm.outputs import BeamSearchOutput
from nbllm.views import register_formatters


def html_of(shell: InteractiveShell, obj) -> str | None:
    data, _ = shell.display_formatter.format(obj)
    return data.get("text/html")


def assert_beam_view(html: str | None) -> None:
    assert html is not None and parse(html).find_all("div")[0].classes() >= {"nbb", "mathjax_ignore"}


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    html = shell.display_formatter.formatters["text/html"]
    for kind in (BeamTree, BeamSearchOutput):
        html.pop(kind, None)  # start from a shell that knows nothing of nbllm
    return shell


def test_registered_shell_shows_trees_and_search_outputs(shell, small_tree):
    assert html_of(shell, small_tree) is None, "the data classes carry no HTML of their own"
    register_formatters(shell)
    assert_beam_view(html_of(shell, small_tree))
    assert_beam_view(html_of(shell, BeamSearchOutput(sequences=[], prompt="p", tree=small_tree)))
    assert html_of(shell, BeamSearchOutput(sequences=[])) is None, "no tree: the plain repr"


def test_load_ext_registers_on_its_shell(shell, real_output):
    nbllm.load_ipython_extension(shell)
    assert_beam_view(html_of(shell, real_output))


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_importing_nbllm_in_a_running_shell_registers():
    """What a notebook does: `from nbllm import LLM`, then a beam search output is the cell's value."""
    code = ("from IPython.core.interactiveshell import InteractiveShell\n"
            "shell = InteractiveShell.instance()\n"
            "import nbllm\n"
            "from nbllm.beam_tree import BeamTree\n"
            "tree = BeamTree('p', 1, 1.0)\n"
            "tree.add(parent_id=None, step=0, token_id=None, token_text='p', logprob=0.0, cum_logprob=0.0, "
            "score=0.0, status='kept')\n"
            "print('nbb' in shell.display_formatter.format(tree)[0].get('text/html', ''))\n")
    assert run_python(code) == "True"


def test_outside_ipython_importing_nbllm_loads_no_ipython():
    assert run_python("import sys, nbllm; print('IPython' in sys.modules)") == "False"
