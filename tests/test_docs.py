"""The documentation site builds in MkDocs' strict mode: a broken link, anchor or API reference fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` with the venv's mkdocs (the dev extra), run by the tests' interpreter."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=120, check=False)


def nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def load_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_site_builds_strictly_with_every_nav_page(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = nav_pages(load_config()["nav"])
    assert len(pages) >= 15
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
        built = tmp_path / "site" / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert built.is_file(), f"{page} was not built"
    reference = (tmp_path / "site" / "reference" / "llm" / "index.html").read_text()
    assert "beam_search" in reference and "generate" in reference, "the API reference comes from docstrings"


def test_images_are_small():
    for image in (ROOT / "docs" / "images").glob("*.png"):
        assert image.stat().st_size < 300_000, f"{image.name} is {image.stat().st_size} bytes"


@pytest.mark.parametrize("broken", ["[a link](no_such_page.md)", "[an anchor](offline_api.md#no-such-heading)",
                                    "::: nbllm.NoSuchObject"])
def test_strict_build_fails_on_a_broken_reference(tmp_path, broken):
    """A copy of the site with one broken reference must not build."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "nbllm").symlink_to(ROOT / "nbllm")  # mkdocstrings reads the package from the config's folder
    page = copy / "docs" / "getting_started.md"
    page.write_text(page.read_text() + "\n" + broken + "\n")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, f"{broken!r} did not fail the strict build"
