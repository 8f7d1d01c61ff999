"""The example notebooks (notebooks/0*.ipynb) run top to bottom on the default model, and are stored stripped.

Each is executed by nbclient with a real kernel, as a reader would run it; the checks
look for a few outputs that show each notebook did what its text says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notebook_testing import execute, text_of

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXAMPLES = sorted(NOTEBOOKS.glob("0*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


def has(cell, mime: str) -> bool:
    return any(mime in output.get("data", {}) for output in cell.get("outputs", []))


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def cell_starting(notebook, prefix: str):
    """The code cell whose source starts with `prefix` (exactly one must)."""
    found = [cell for cell in code_cells(notebook) if cell.source.startswith(prefix)]
    assert len(found) == 1, f"{len(found)} cells start with {prefix!r}"
    return found[0]


# ----------------------------------------------------------------------------- checks per notebook
def check_quickstart(nb) -> None:
    assert "'The capital of France is' -> ' Paris." in text_of(cell_starting(nb, "greedy = "))
    assert re.search(r"^2: ", text_of(cell_starting(nb, "creative = ")), re.M), "n=3 gives three completions"
    assert "ValueError: top_p" in text_of(cell_starting(nb, "try:"))
    frame = cell_starting(nb, "from nbllm.notebook import generate_dataframe")
    assert has(frame, "text/html") and "cumulative_logprob" in text_of(frame)
    assert "generated" in text_of(cell_starting(nb, "metrics = "))


def check_chat(nb) -> None:
    assert "Loaded SmolLM2-135M-Instruct" in text_of(cell_starting(nb, "%load_ext nbllm"))
    assert "Paris" in text_of(cell_starting(nb, "greedy = "))
    assert "<|im_start|>user\nHello!<|im_end|>" in text_of(cell_starting(nb, "messages = "))
    assert has(cell_starting(nb, "from nbllm.notebook import ChatPanel"), WIDGET)
    messages = text_of(cell_starting(nb, "panel.messages"))
    assert "'role': 'assistant'" in messages and "Paris" in messages
    assert "widgets" in nb.metadata, "the chat panel's widget state was saved"


def check_dataframes(nb) -> None:
    assert "24 rows, 20 distinct reviews" in text_of(cell_starting(nb, "import pandas as pd"))
    crosstab = cell_starting(nb, "tokenizer = ")
    assert has(crosstab, WIDGET), "the progress bar"
    assert re.search(r"negative\s+\d+", text_of(crosstab)) and re.search(r"positive\s+\d+", text_of(crosstab))
    match = re.search(r"(\d+)% of the prices match", text_of(cell_starting(nb, "price_prompt = ")))
    assert match and int(match.group(1)) >= 75, "the extracted prices mostly agree with the regular expression"
    assert "summary" in text_of(cell_starting(nb, "summarised = "))
    assert "NaN" in text_of(cell_starting(nb, "partial = ")), "a missing review gives a missing result"
    assert "24 of 24 labels match the pandas path's" in text_of(cell_starting(nb, "import dask")), "on a Dask cluster"


def check_beam_search(nb) -> None:
    ranked = text_of(cell_starting(nb, "[out] = llm.beam_search"))
    assert "#1" in ranked and "Paris" in ranked
    tree = next(cell for cell in code_cells(nb) if cell.source == "out")
    assert any("<svg" in o.get("data", {}).get("text/html", "") for o in tree.get("outputs", []))
    assert "candidates" in text_of(cell_starting(nb, "tree = out.tree"))
    assert has(cell_starting(nb, "from nbllm.views import plot_beam_tree"), "image/png")
    penalties = text_of(cell_starting(nb, "for penalty in"))
    assert penalties.count("length_penalty=") == 3
    view = cell_starting(nb, "from nbllm.views import token_view")
    assert any("Token probabilities" in o.get("data", {}).get("text/html", "") for o in view.get("outputs", []))


def check_inside_the_engine(nb) -> None:
    assert re.search(r"17 tokens -> block table \[1, 2, 3, 4, 5\]", text_of(cell_starting(nb, "from dataclasses")))
    assert "found in the cache" in text_of(cell_starting(nb, "b = Request("))
    assert has(cell_starting(nb, "from nbllm.notebook import KVCacheMonitor"), WIDGET)
    hits = [int(n) for n in re.findall(r"^\s*(\d+) of \d+ prompt tokens", text_of(cell_starting(nb, "system = (")), re.M)]
    assert len(hits) == 3 and hits[0] == 0 and min(hits[1:]) > 0, hits
    preemption = text_of(cell_starting(nb, "before = "))
    match = re.search(r"preemptions: (\d+)", preemption)
    assert match and int(match.group(1)) > 0, "the small pool forced preemptions"
    assert "all finished: True" in preemption
    assert has(cell_starting(nb, "import time"), "image/png")


def check_serving(nb) -> None:
    assert "http://127.0.0.1:" in text_of(cell_starting(nb, "from nbllm import LLM"))
    openai = text_of(cell_starting(nb, "from openai import OpenAI"))
    assert "serving SmolLM2-135M-Instruct" in openai and "Paris" in openai
    assert "over HTTP:" in text_of(cell_starting(nb, "from concurrent.futures"))
    assert "' Rome.'" in text_of(cell_starting(nb, "from nbllm.client import RemoteLLM"))
    assert "requests served" in text_of(cell_starting(nb, "metrics = remote.get_stats()"))
    assert "server running: False" in text_of(cell_starting(nb, "remote.shutdown()"))


def check_structured_outputs(nb) -> None:
    constrained = text_of(cell_starting(nb, "from pydantic import"))
    assert "-> Paris (stop)" in constrained and re.search(r"-> \(\d{3}\) \d{3}-\d{4} \(stop\)", constrained)
    assert text_of(cell_starting(nb, "try:")).count("ValueError:") == 2
    labels = text_of(cell_starting(nb, "sentiment_prompt = "))
    assert "dtype: category" in labels and re.search(r"positive\s+\d+", labels) and re.search(r"negative\s+\d+", labels)
    fields = text_of(cell_starting(nb, "schema = "))
    assert all(dtype in fields for dtype in ("Float64", "category", "boolean")), "one typed column per property"
    match = re.search(r"(\d+) of (\d+) prices match", text_of(cell_starting(nb, "by_rule = ")))
    assert match and int(match.group(1)) >= 6 and match.group(2) == "8", "the extracted prices mostly agree"
    assert "price" in text_of(cell_starting(nb, "df.review.head(3)"))


CHECKS = {"01_quickstart": check_quickstart, "02_chat": check_chat, "03_dataframes": check_dataframes,
          "04_beam_search": check_beam_search, "05_inside_the_engine": check_inside_the_engine,
          "06_serving": check_serving, "07_structured_outputs": check_structured_outputs}


# ----------------------------------------------------------------------------- tests
def test_every_example_notebook_is_checked():
    assert sorted(p.stem for p in EXAMPLES) == sorted(CHECKS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path):
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs ({cell.source[:40]!r})"
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state"


def test_tour_notebook_is_stored_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / "notebook_tour.ipynb", as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in code_cells(notebook))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # generous: a loaded 2-core machine once needed more than 240 s for one cell
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path):
    notebook = execute(path, timeout=900)
    for cell in code_cells(notebook):
        errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        assert not errors, f"{cell.source[:60]!r}: {errors[0]['ename']}: {errors[0]['evalue']}"
    CHECKS[path.stem](notebook)
