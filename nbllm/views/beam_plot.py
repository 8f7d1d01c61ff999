"""The beam-search tree drawn with matplotlib.

One marker per recorded candidate, the prompt (node 0) included, all in a single
scatter collection (gid NODES_GID), so the number of plotted nodes equals
len(tree.nodes). Placed nodes (prompt, kept, finished) follow
nbllm.views.beam_layout: step on x, row on y (top down). Pruned candidates are
small grey dots fanned just right of their parent. Edges are coloured by the
token's probability (a colour bar explains it), branches that reach no final
sequence are grey, finished (EOS) nodes have a green rim, and the final sequences
are underlaid in orange (gid FINALS_GID), strongest for final rank 0. Tokens are
written beside the nodes when there are few enough to read, else along the best
sequence only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from nbllm.beam_tree import FINISHED, BeamTree
from nbllm.views.beam_layout import layout_beam_tree
from nbllm.views.html_text import prob, shorten, visible

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NODES_GID, FINALS_GID = "nbllm-beam-nodes", "nbllm-beam-finals"
FINAL, FINISHED_GREEN, DEAD = "#f28e2b", "#31a354", "#b0b0b0"
MAX_LABELLED = 160  # above this many placed nodes only the best sequence is labelled
FAN = 0.3  # how far pruned candidates fan out from their parent, in steps and rows


def plot_beam_tree(tree: BeamTree, ax: Optional[Axes] = None) -> Axes:
    """Draw `tree` on `ax` (a new figure when None) and return the Axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import cm, colors
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    layout = layout_beam_tree(tree)
    if ax is None:
        width = min(24.0, max(6.0, 2.0 + 0.4 * tree.num_steps))
        _, ax = plt.subplots(layout="constrained", figsize=(width, min(12.0, max(3.5, 1.8 + 0.4 * layout.num_rows))))
    cmap = colors.LinearSegmentedColormap.from_list("nbllm_p", cm.Blues(np.linspace(0.25, 1.0, 256)))
    norm = colors.Normalize(0.0, 1.0)

    xy: dict[int, tuple[float, float]] = {n: (tree.nodes[n].step, row) for n, row in layout.rows.items()}
    for parent_id, group in layout.pruned.items():
        px, py = xy[parent_id]
        for k, node in enumerate(group):
            offset = FAN * (2 * k / (len(group) - 1) - 1) if len(group) > 1 else 0.0
            xy[node.node_id] = (px + FAN, py + offset)

    def segment(node):
        return [xy[node.parent_id], xy[node.node_id]]

    children = [n for n in tree.nodes if n.parent_id is not None]
    pruned = [n for n in children if n.node_id not in layout.rows]
    live = [n for n in children if n.node_id in layout.rows and not layout.is_dead(n)]
    dead = [n for n in children if n.node_id in layout.rows and layout.is_dead(n)]
    finals = sorted((n for n in children if n.node_id in layout.final_rank),
                    key=lambda n: -layout.final_rank[n.node_id])

    ax.add_collection(LineCollection([segment(n) for n in pruned], colors=DEAD, linewidths=0.4, alpha=0.5))
    final_ranks = [layout.final_rank[n.node_id] for n in finals]
    ax.add_collection(LineCollection([segment(n) for n in finals], capstyle="round", gid=FINALS_GID,
                                     colors=[colors.to_rgba(FINAL, max(0.2, 0.8 - 0.12 * r)) for r in final_ranks],
                                     linewidths=[6 if r == 0 else 4 for r in final_ranks]))
    ax.add_collection(LineCollection([segment(n) for n in dead], colors=DEAD,
                                     linewidths=[0.6 + 2 * prob(n.logprob) for n in dead]))
    edges = LineCollection([segment(n) for n in live], cmap=cmap, norm=norm,
                           linewidths=[0.8 + 2.5 * prob(n.logprob) for n in live])
    edges.set_array(np.array([prob(n.logprob) for n in live]))
    ax.add_collection(edges)

    face, rim, size = [], [], []
    for node in tree.nodes:
        placed = node.node_id in layout.rows
        if node.parent_id is None:
            face.append("#333333")
        elif not placed or layout.is_dead(node):
            face.append(DEAD)
        elif node.node_id in layout.final_rank:
            face.append(FINAL)
        else:
            face.append(cmap(norm(prob(node.logprob))))
        rim.append(FINISHED_GREEN if node.status == FINISHED else "white" if placed else "none")
        size.append(40 if placed else 5)
    points = np.array([xy[n.node_id] for n in tree.nodes])
    ax.scatter(points[:, 0], points[:, 1], s=size, c=face, edgecolors=rim, linewidths=1.2, zorder=3,
               gid=NODES_GID)

    placed_nodes = [n for n in tree.nodes if n.node_id in layout.rows and n.parent_id is not None]
    labelled = placed_nodes if len(placed_nodes) <= MAX_LABELLED else \
        [n for n in placed_nodes if layout.final_rank.get(n.node_id) == 0]
    for node in labelled:
        x, y = xy[node.node_id]
        ax.text(x, y - 0.22, shorten(visible(node.token_text), 10), ha="center", va="bottom", fontsize=7,
                color="#999999" if layout.is_dead(node) else "#222222", parse_math=False, zorder=4)

    ax.figure.colorbar(edges, ax=ax, label="p(token)", fraction=0.03, pad=0.01)
    ax.legend(handles=[Line2D([], [], color=FINAL, lw=5, alpha=0.8, label="final sequences (rank 0 strongest)"),
                       Line2D([], [], marker="o", ls="", mfc="white", mec=FINISHED_GREEN, mew=1.5,
                              label="finished (EOS)"),
                       Line2D([], [], color=DEAD, lw=1.5, label="dead branch / pruned candidate")],
              loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7, frameon=False)
    ax.set_xlim(-0.5, tree.num_steps + 0.8)
    ax.set_ylim(layout.num_rows + 0.2, -1.0)
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_title(f"beam search: width {tree.beam_width}, {tree.num_steps} steps, {len(tree.nodes)} nodes",
                 fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return ax
