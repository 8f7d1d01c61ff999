"""Helpers shared by tests that execute notebooks with nbclient and a real kernel."""

from __future__ import annotations

from pathlib import Path


def execute(path: Path, timeout: int = 300):
    """Run the notebook at `path` top to bottom (cwd = its folder); returns it with outputs."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def text_of(cell) -> str:
    """A cell's stream text and text/plain outputs, joined."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)
