"""The matplotlib drawing: one marker per recorded candidate, final sequences highlighted."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nbllm.beam_tree import KEPT, BeamTree  # noqa: E402
from nbllm.views import plot_beam_tree  # noqa: E402
from nbllm.views.beam_plot import FINALS_GID, NODES_GID  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # CJK and emoji test tokens


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def node_markers(ax):
    (nodes,) = [c for c in ax.collections if c.get_gid() == NODES_GID]
    return nodes.get_offsets()


@pytest.mark.parametrize("which", ["small", "big", "real"])
def test_one_marker_per_candidate_prompt_included(which, small_tree, big_tree, request):
    tree = {"small": small_tree, "big": big_tree}.get(which) or request.getfixturevalue("real_output").tree
    ax = plot_beam_tree(tree)
    offsets = node_markers(ax)
    assert len(offsets) == len(tree.nodes)
    assert tuple(offsets[0]) == (0.0, 0.0)  # node 0, the prompt, at step 0 in the top row
    assert max(x for x, _ in offsets) <= tree.num_steps + 0.5
    ax.figure.canvas.draw()


def test_draws_on_the_given_axes_and_highlights_finals(small_tree):
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_beam_tree(small_tree, ax=right) is right and not left.collections
    (halo,) = [c for c in right.collections if c.get_gid() == FINALS_GID]
    on_final_paths = {n.node_id for f in small_tree.nodes if f.final_rank is not None
                      for n in small_tree.path(f.node_id)}
    assert len(halo.get_segments()) == len(on_final_paths)


def test_tokens_are_literal_text(small_tree):
    ax = plot_beam_tree(small_tree)
    texts = ax.texts
    assert texts and not any(t.get_parse_math() for t in texts)  # "$x$" must not turn into mathtext
    ax.figure.canvas.draw()


def test_a_prompt_only_tree_plots():
    tree = BeamTree("p", 1, 1.0)
    tree.add(parent_id=None, step=0, token_id=None, token_text="p", logprob=0.0, cum_logprob=0.0, score=0.0,
             status=KEPT)
    assert len(node_markers(plot_beam_tree(tree))) == 1
