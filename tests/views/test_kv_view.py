"""The KV monitor's pictures: a one-pixel-per-block grid drawn by matplotlib, the usage chart, notes."""

from __future__ import annotations

import base64
import io
import re

import matplotlib.image
from html_tree import parse

from nbllm.views.kv_view import BLOCK_COLOURS, KVSample, block_grid_html, block_grid_png, note_html, usage_chart_svg


def test_block_grid_is_one_pixel_per_block():
    states = ["used", "cached", "free", "used", "free"]
    image = matplotlib.image.imread(io.BytesIO(block_grid_png(states, columns=3)))
    assert image.shape[:2] == (2, 3)
    pixels = [tuple(round(c * 255) for c in image[i // 3, i % 3][:3]) for i in range(6)]
    assert pixels == [BLOCK_COLOURS[s] for s in states] + [(255, 255, 255)], "row by row; the rest is background"


def test_block_grid_html_scales_the_image_up():
    states = ["used"] * 100 + ["free"] * 28
    img = parse(block_grid_html(states)).find_all("img")[0]
    data = re.fullmatch("data:image/png;base64,(.*)", img.attrs["src"]).group(1)
    assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data))).shape[:2] == (2, 64)
    assert (int(img.attrs["width"]), int(img.attrs["height"])) == (64 * 8, 2 * 8)
    assert "image-rendering: pixelated" in img.attrs["style"]


def sample(t: float, usage: float) -> KVSample:
    return KVSample(timestamp=t, kv_cache_usage_perc=usage, num_blocks_used=0, num_blocks_cached=0,
                    num_requests_running=0, num_requests_waiting=0, num_preemptions=0, tokens_per_second=0.0)


def test_usage_chart_steps_through_the_window():
    svg = parse(usage_chart_svg([sample(0.0, 0.5), sample(30.0, 1.0)], window_s=60.0))
    points = svg.find_all("polyline")[0].attrs["points"].split()
    assert len(points) == 3, "a sample holds until the next: one step"
    assert len(svg.find_all("line")) == 2, "the 90% and 98% lines"


def test_notes_are_escaped():
    note = parse(note_html("could not read <metrics>", error=True))
    assert note.text() == "could not read <metrics>" and len(list(note.iter())) == 2
