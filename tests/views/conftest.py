"""Fixtures for the view tests: beam trees (synthetic and from the tiny model) and a headless Chromium."""

from pathlib import Path

import pytest
from beam_trees import random_beam_tree
from headless_chromium import launch_chromium

from nbllm.beam_tree import BeamTree


@pytest.fixture(scope="session")
def small_tree() -> BeamTree:
    return random_beam_tree(width=3, steps=6, seed=1)


@pytest.fixture(scope="session")
def big_tree() -> BeamTree:
    return random_beam_tree(width=8, steps=64, seed=2)


@pytest.fixture(scope="session")
def real_output(tiny_llm):
    from nbllm import BeamSearchParams

    return tiny_llm.beam_search(["Hello"], BeamSearchParams(beam_width=4, max_tokens=16))[0]


@pytest.fixture(scope="session")
def real_big_tree(tiny_llm) -> BeamTree:
    from nbllm import BeamSearchParams

    return tiny_llm.beam_search(["Once upon a time"], BeamSearchParams(beam_width=8, max_tokens=64))[0].tree


@pytest.fixture(scope="session")
def generated(tiny_llm):
    """A sampled completion with its top-5 alternatives at every position."""
    from nbllm import SamplingParams

    params = SamplingParams(max_tokens=24, logprobs=5, temperature=0.8, seed=0)
    return tiny_llm.generate("The capital of France is", params, use_tqdm=False)[0]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots and saved pages go (artifacts/ is git-ignored)."""
    folder = Path(__file__).resolve().parents[2] / "artifacts" / "views"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium():
    yield from launch_chromium()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    yield context.new_page()
    context.close()
