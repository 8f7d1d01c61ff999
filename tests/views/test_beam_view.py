"""The beam-tree HTML view: self-contained, complete, escaped, unique ids, bounded layout."""

import re

import pytest
from beam_trees import random_beam_tree
from html_tree import assert_self_contained, parse

from nbllm.beam_tree import FINISHED, KEPT, PRUNED, BeamTree
from nbllm.views import beam_tree_html, save_beam_tree_html
from nbllm.views.beam_view import CHAR_W
from nbllm.views.beam_layout import layout_beam_tree
from nbllm.views.html_text import shorten, visible

ALLOWED_TAGS = {"div", "style", "b", "i", "span", "svg", "path", "g", "title", "rect", "text", "table", "tr", "th",
                "td", "script"}


def nasty_tree() -> BeamTree:
    """Two steps whose tokens try to break out of every context they are written into."""
    prompt = "<script>alert('p')</script> & \"q\"\n"
    tree = BeamTree(prompt, 2, 1.0)
    tree.add(parent_id=None, step=0, token_id=None, token_text=prompt, logprob=0.0, cum_logprob=0.0, score=0.0,
             status=KEPT)
    texts = ["</script><script>alert(1)</script>", "<svg onload=alert(2)>", "a & b", "\"'", " \n\t", "\x00\x1b"]
    for i, text in enumerate(texts):
        tree.add(parent_id=0, step=1, token_id=i, token_text=text, logprob=-1.0 - i, cum_logprob=-1.0 - i,
                 score=-1.0 - i, status=KEPT if i < 2 else PRUNED, rank=i + 1)
    tree.add(parent_id=1, step=2, token_id=9, token_text="<|im_end|>", logprob=-0.1, cum_logprob=-1.1, score=-0.5,
             status=FINISHED, rank=1, final_rank=0)
    tree.add(parent_id=2, step=2, token_id=10, token_text="-->", logprob=-0.2, cum_logprob=-2.2, score=-1.1,
             status=KEPT, rank=1, final_rank=1)
    tree.add(parent_id=2, step=2, token_id=11, token_text="]]>", logprob=-3.0, cum_logprob=-5.0, score=-2.5,
             status=PRUNED, rank=2)
    return tree


@pytest.fixture(params=["small", "big", "nasty", "real"])
def tree(request, small_tree, big_tree):
    if request.param == "real":
        return request.getfixturevalue("real_output").tree
    return {"small": small_tree, "big": big_tree, "nasty": nasty_tree()}[request.param]


def test_self_contained(tree):
    assert_self_contained(beam_tree_html(tree))


def test_every_candidate_is_in_the_html(tree):
    doc = parse(beam_tree_html(tree))
    boxes = doc.find_all("g", "data-node")
    markers = doc.find_all("g", "data-count")
    assert {int(g.attrs["data-node"]) for g in boxes} == {n.node_id for n in tree.nodes if n.status != PRUNED}
    assert len(boxes) + sum(int(m.attrs["data-count"]) for m in markers) == len(tree.nodes)
    for marker in markers:  # the marker's title lists each collapsed candidate on its own line
        title = marker.find_all("title")[0].text()
        assert len(title.splitlines()) == 1 + int(marker.attrs["data-count"])


def test_tokens_are_escaped_and_visible():
    tree = nasty_tree()
    html = beam_tree_html(tree)
    doc = parse(html)
    assert {e.tag for e in doc.iter()} - {"#document"} <= ALLOWED_TAGS
    assert html.count("<script") == 1 and html.count("</script>") == 1
    assert "\x00" not in html and "\x1b" not in html
    assert not [a for e in doc.iter() for a in e.attrs if a.startswith("on")]  # no injected handler
    for box in doc.find_all("g", "data-node"):
        node = tree.nodes[int(box.attrs["data-node"])]
        label = box.find_all("text")[0].text()
        title = box.find_all("title")[0].text()
        if node.parent_id is None:
            assert label.startswith("…") and visible(node.token_text, keep_spaces=True).endswith(label[1:])
            assert repr(node.token_text)[:40] in title
        else:
            assert label == shorten(visible(node.token_text), 9)
            assert f"'{visible(node.token_text)}'" in title
    marker_text = "\n".join(m.text() for m in doc.find_all("g", "data-count"))
    assert "\"'" in marker_text and "␣↵⇥" in marker_text and "\\x00\\x1b" in marker_text and "]]>" in marker_text


def test_statuses_are_marked():
    tree = random_beam_tree(width=4, steps=20, seed=5)
    layout = layout_beam_tree(tree)
    doc = parse(beam_tree_html(tree))
    for box in doc.find_all("g", "data-node"):
        node = tree.nodes[int(box.attrs["data-node"])]
        labels = [t.text() for t in box.find_all("text")]
        badge = [] if node.final_rank is None else [f"#{node.final_rank + 1}"]
        assert [t for t in labels if t.startswith("#")] == badge
        assert ("nbb-dead" in box.classes()) == layout.is_dead(node)
        end_bar = [r for r in box.find_all("rect") if r.attrs.get("width") == "3"]
        assert bool(end_bar) == (node.status == FINISHED)
    finals = [n for n in tree.nodes if n.final_rank is not None]
    assert len(finals) == 4 and not any(layout.is_dead(n) for n in finals)


def test_ids_are_unique_per_view(small_tree):
    first, second = beam_tree_html(small_tree), beam_tree_html(small_tree)
    ids = [re.findall(r'\bid="([^"]+)"', h) for h in (first, second)]
    assert all(len(i) == len(set(i)) == 1 for i in ids) and set(ids[0]).isdisjoint(ids[1])
    assert f'getElementById("{ids[0][0]}")' in first


@pytest.mark.parametrize("which", ["big", "real_big"])
def test_layout_is_tidy_and_bounded(which, big_tree, request):
    tree = big_tree if which == "big" else request.getfixturevalue("real_big_tree")
    layout = layout_beam_tree(tree)
    by_step: dict[int, list] = {}
    for node_id, row in layout.rows.items():
        by_step.setdefault(tree.nodes[node_id].step, []).append((row, node_id))
    for step, column in by_step.items():
        column.sort()
        assert all(b[0] - a[0] >= 1 - 1e-9 for a, b in zip(column, column[1:]))  # no overlap
        if step:
            parent_rows = [layout.rows[tree.nodes[n].parent_id] for _, n in column]
            assert parent_rows == sorted(parent_rows)  # edges never cross
    assert layout.num_rows <= 4 * tree.beam_width
    assert len(beam_tree_html(tree)) < 1_500_000


def test_saves_a_standalone_page(real_output, tmp_path):
    path = tmp_path / "tree.html"
    save_beam_tree_html(real_output.tree, path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert len(parse(page).find_all("g", "data-node")) == sum(n.status != PRUNED for n in real_output.tree.nodes)


def test_a_prompt_only_tree_renders():
    tree = BeamTree("p", 1, 1.0)
    tree.add(parent_id=None, step=0, token_id=None, token_text="p", logprob=0.0, cum_logprob=0.0, score=0.0,
             status=KEPT)
    doc = parse(beam_tree_html(tree))
    assert len(doc.find_all("g", "data-node")) == 1 and not doc.find_all("g", "data-count")


def test_the_prompt_box_holds_a_short_prompt_whole_and_pushes_the_columns_right():
    tree = BeamTree("The capital of France is", 1, 1.0)
    tree.add(parent_id=None, step=0, token_id=None, token_text="The capital of France is", logprob=0.0,
             cum_logprob=0.0, score=0.0, status=KEPT)
    tree.add(parent_id=0, step=1, token_id=5, token_text=" Paris", logprob=-0.1, cum_logprob=-0.1, score=-0.1,
             status=KEPT, rank=1)
    doc = parse(beam_tree_html(tree))
    root, child = doc.find_all("g", "data-node")
    assert root.find_all("text")[0].text() == "The capital of France is", "not cut"
    root_width = float(root.find_all("rect")[0].attrs["width"])
    assert root_width >= CHAR_W * len("The capital of France is")
    root_x = float(re.search(r"translate\(([\d.]+),", root.attrs["transform"]).group(1))
    child_x = float(re.search(r"translate\(([\d.]+),", child.attrs["transform"]).group(1))
    assert child_x > root_x + root_width + 10, "the first step's column starts after the prompt's box"


def test_pruned_candidates_are_listed_under_the_tree_not_over_it(small_tree):
    doc = parse(beam_tree_html(small_tree))
    classes = [d.classes() for d in doc.find_all("div", "class")]
    scroll = classes.index({"nbb-scroll"})
    listing = classes.index({"nbb-pruned"})
    assert listing == scroll + 2, "the list follows the scroll box (and its canvas), outside it"
    assert "position: absolute" not in beam_tree_html(small_tree).split(".nbb-pruned {")[1].split("}")[0]


def test_a_running_search_says_so():
    tree = random_beam_tree(width=2, steps=3, seed=3)
    assert "searching…" in beam_tree_html(tree, searching=True)
    assert "searching…" not in beam_tree_html(tree)
