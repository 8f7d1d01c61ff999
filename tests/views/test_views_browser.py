"""The views in a real headless Chromium: they render, tooltips show details inside the window, big trees
stay bounded, the pruned-candidates list covers no node.

Screenshots and pages are written to artifacts/views/ for a person to look at.
"""

import io

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from nbllm.views import beam_tree_html, save_beam_tree_html, token_view_html
from nbllm.views.html_text import prob, visible

pytestmark = pytest.mark.browser
SCROLL_MAX_HEIGHT = 480


def assert_not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.002


def assert_inside_window(page, tip) -> None:
    box, size = tip.bounding_box(), page.viewport_size
    assert 0 <= box["x"] and box["x"] + box["width"] <= size["width"], box
    assert 0 <= box["y"] and box["y"] + box["height"] <= size["height"], box


def open_html(page, html: str, path) -> None:
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{html}</body></html>',
                    encoding="utf-8")
    page.goto(path.as_uri())


def test_beam_view_renders_and_shows_details_on_hover(page, real_output, artifacts):
    tree = real_output.tree
    save_beam_tree_html(tree, artifacts / "beam_real.html")
    page.goto((artifacts / "beam_real.html").as_uri())
    assert_not_blank(page.screenshot(path=artifacts / "beam_real.png", full_page=True))

    tip = page.locator(".nbllm-tip")
    expect(tip).to_be_hidden()
    best = next(n for n in tree.nodes if n.final_rank == 0)
    page.hover(f'[data-node="{best.node_id}"]')
    expect(tip).to_be_visible()
    text = tip.inner_text()
    for detail in (f"'{visible(best.token_text)}'", f"p {prob(best.logprob):.4f}", f"logprob {best.logprob:.4f}",
                   f"rank {best.rank}", f"score {best.score:.4f}", "final sequence #1"):
        assert detail in text
    page.screenshot(path=artifacts / "beam_real_hover.png")
    page.mouse.move(1, 1)
    expect(tip).to_be_hidden()


def overlaps(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_pruned_candidates_are_listed_without_covering_nodes(page, small_tree, artifacts):
    open_html(page, beam_tree_html(small_tree), artifacts / "beam_small.html")
    marker = page.locator(".nbb-more").first
    count = int(marker.get_attribute("data-count"))
    marker.click()
    listing = page.locator(".nbb-pruned")
    expect(listing).to_be_visible()
    assert len(listing.inner_text().strip().splitlines()) == 1 + count
    box = listing.bounding_box()
    nodes = page.locator("g.nbb-node")
    assert not any(overlaps(box, nodes.nth(i).bounding_box()) for i in range(nodes.count())), "covers no node"
    page.screenshot(path=artifacts / "beam_small_expanded.png")
    marker.click()
    expect(listing).to_be_hidden()
    marker.click()
    listing.click()
    expect(listing).to_be_hidden()

    dead = page.locator("g.nbb-node.nbb-dead").first
    expect(dead).to_be_visible()
    page.get_by_role("button", name="hide dead branches").click()
    expect(dead).to_be_hidden()
    expect(page.locator("g.nbb-node:not(.nbb-dead)").first).to_be_visible()


@pytest.mark.parametrize("which", ["synthetic", "tiny_model"])
def test_width_8_by_64_steps_is_bounded_and_scrollable(which, page, big_tree, request, artifacts):
    tree = big_tree if which == "synthetic" else request.getfixturevalue("real_big_tree")
    assert tree.beam_width == 8 and tree.num_steps == 64
    open_html(page, beam_tree_html(tree), artifacts / f"beam_8x64_{which}.html")
    assert_not_blank(page.screenshot(path=artifacts / f"beam_8x64_{which}.png"))
    scroll = page.locator(".nbb-scroll")
    client_w, scroll_w, client_h = scroll.evaluate("e => [e.clientWidth, e.scrollWidth, e.clientHeight]")
    assert client_h <= SCROLL_MAX_HEIGHT and scroll_w > 2 * client_w  # bounded box, scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 1200  # the page itself does not overflow

    last = max((n for n in tree.nodes if n.final_rank is not None), key=lambda n: (n.step, -n.final_rank))
    page.hover(f'[data-node="{last.node_id}"]')  # scrolls the container to reach the last step
    assert scroll.evaluate("e => e.scrollLeft") > 0
    tip = page.locator(".nbllm-tip")
    expect(tip).to_be_visible()
    assert f"score {last.score:.4f}" in tip.inner_text()
    assert_inside_window(page, tip)
    page.screenshot(path=artifacts / f"beam_8x64_{which}_end.png")


def test_static_svg_reads_without_scripts(chromium, small_tree, artifacts):
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 1000, "height": 500})
    page = context.new_page()
    open_html(page, beam_tree_html(small_tree), artifacts / "beam_nojs.html")
    assert_not_blank(page.screenshot(path=artifacts / "beam_nojs.png"))
    assert page.locator(".nbllm-tip").count() == 0
    assert page.locator("[data-node] > title").count() == sum(n.status != "pruned" for n in small_tree.nodes)
    expect(page.locator("[data-node] text").first).to_be_visible()
    context.close()


def test_two_views_in_one_page_do_not_clash(page, small_tree, generated, artifacts):
    open_html(page, beam_tree_html(small_tree) + beam_tree_html(small_tree) + token_view_html(generated),
              artifacts / "views_together.html")
    views = page.locator(".nbb")
    views.nth(1).locator('[data-node="1"]').hover()
    second = views.nth(1).get_attribute("id")
    expect(page.locator(f'.nbllm-tip[data-for="{second}"]')).to_be_visible()
    expect(page.locator(".nbllm-tip")).to_have_count(1)  # the other views show none
    assert page.get_by_role("button").count() == 2  # each view set itself up exactly once


def test_token_view_renders_and_shows_alternatives(page, generated, artifacts):
    open_html(page, token_view_html(generated), artifacts / "tokens.html")
    assert_not_blank(page.screenshot(path=artifacts / "tokens.png"))
    completion = generated.outputs[0]
    i = max(range(len(completion.token_ids)), key=lambda k: len(completion.logprobs[k]))
    chosen = completion.logprobs[i][completion.token_ids[i]]
    page.locator(".nbt-t").nth(i).hover()
    tip = page.locator(".nbllm-tip")
    expect(tip).to_be_visible()
    text = tip.inner_text()
    assert f"p {prob(chosen.logprob):.4f}" in text and "top alternatives" in text
    assert len(text.strip().splitlines()) == 2 + len(completion.logprobs[i])
    page.screenshot(path=artifacts / "tokens_hover.png")


def test_token_tooltip_near_the_bottom_opens_above_and_adds_no_space(page, generated, artifacts):
    """A token on the window's last line: the tip opens above it, inside the window; the page does not grow."""
    filler = '<div style="height: 2000px">(text above the view)</div>'
    open_html(page, filler + token_view_html(generated) + filler, artifacts / "tokens_bottom.html")
    last = page.locator(".nbt-t").last
    last.scroll_into_view_if_needed()
    size = page.viewport_size
    page.mouse.wheel(0, last.bounding_box()["y"] - (size["height"] - 30))
    page.wait_for_timeout(300)
    token = last.bounding_box()
    assert token["y"] + token["height"] > size["height"] - 60, "the token sits at the window's bottom"
    page_height = page.evaluate("document.documentElement.scrollHeight")
    view_height = page.locator(".nbt").bounding_box()["height"]
    last.hover()
    tip = page.locator(".nbllm-tip")
    expect(tip).to_be_visible()
    assert_inside_window(page, tip)
    assert tip.bounding_box()["y"] + tip.bounding_box()["height"] <= last.bounding_box()["y"] + 1, "above the token"
    assert page.evaluate("document.documentElement.scrollHeight") == page_height
    assert page.locator(".nbt").bounding_box()["height"] == view_height, "no blank space under the view"
    page.screenshot(path=artifacts / "tokens_bottom_hover.png")
    page.mouse.move(1, 1)
    expect(tip).to_have_count(0)
