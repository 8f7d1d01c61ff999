"""The notebooks in notebooks/ run top to bottom under nbclient with a real kernel and the real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from notebook_testing import execute, text_of

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


def outputs_of(cell) -> list[dict]:
    return [o for o in cell.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notebook_tour_runs_top_to_bottom():
    notebook = execute(NOTEBOOKS / "notebook_tour.ipynb")
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in cells:
        assert not [o for o in outputs_of(cell) if o["output_type"] == "error"], cell.source
    by_source = {cell.source.splitlines()[0]: cell for cell in cells}
    assert "Loaded SmolLM2-135M-Instruct" in text_of(by_source["%load_ext nbllm"])
    assert "Paris" in text_of(by_source["%%generate --chat --temperature 0 --max-tokens 24 --out answer"])
    batch = text_of(by_source["%%generate --temperature 0 --max-tokens 12"])
    assert "[prompt 1]" in batch and "[prompt 2]" in batch
    beam = by_source["%%generate --beams 3 --max-tokens 8"]
    assert any("Beam search" in o.get("data", {}).get("text/html", "") for o in outputs_of(beam)), \
        "--beams displays the beam tree view"
    widgets = [c for c in cells if any(WIDGET in o.get("data", {}) for o in outputs_of(c))]
    assert len(widgets) >= 2, "the chat panel and the monitor are widget views"
    assert "100 of 100 rows answered" in text_of(by_source["import pandas as pd"])
    assert any("image/png" in o.get("data", {}) for o in outputs_of(cells[-1])), "plot_kv_usage drew a figure"
    assert "widgets" in notebook.metadata and "application/vnd.jupyter.widget-state+json" in notebook.metadata.widgets
