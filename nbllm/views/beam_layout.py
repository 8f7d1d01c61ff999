"""Where each node of a BeamTree goes: its step on one axis, a row on the other.

Placed nodes are the prompt and every kept or finished candidate; pruned
candidates are not placed but grouped under their parent, for views to collapse.
Within a step, nodes are ordered by their parent's order and then by score, so
edges never cross; rows are then pulled towards their parent's row by isotonic
regression, which keeps that order and a one-row spacing while keeping the paths
as straight as it can. Both the HTML view and the matplotlib plot use this layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from nbllm.beam_tree import PRUNED, BeamNode, BeamTree


@dataclass(frozen=True)
class BeamLayout:
    rows: dict[int, float]  # node_id -> row (0 is the top) of every placed node
    pruned: dict[int, list[BeamNode]]  # parent node_id -> its pruned candidates, best score first
    final_rank: dict[int, int]  # node_id -> best final rank among the sequences passing through it
    num_rows: float  # rows needed: 1 + the largest row

    def is_dead(self, node: BeamNode) -> bool:
        """A placed node on no final sequence (a branch the search gave up on)."""
        return node.node_id not in self.final_rank and bool(self.final_rank)


def layout_beam_tree(tree: BeamTree) -> BeamLayout:
    children: dict[int, list[BeamNode]] = {}
    pruned: dict[int, list[BeamNode]] = {}
    for node in tree.nodes:
        if node.parent_id is None:
            continue
        group = pruned if node.status == PRUNED else children
        group.setdefault(node.parent_id, []).append(node)
    for group in (*children.values(), *pruned.values()):
        group.sort(key=lambda n: n.score, reverse=True)

    roots = [n for n in tree.nodes if n.parent_id is None]
    rows = {n.node_id: float(i) for i, n in enumerate(roots)}
    column = roots
    while column:
        next_column, desired = [], []
        for parent in column:
            kids = children.get(parent.node_id, [])
            for k, kid in enumerate(kids):
                next_column.append(kid)
                desired.append(rows[parent.node_id] + k - (len(kids) - 1) / 2)
        for kid, row in zip(next_column, _spaced_rows(desired)):
            rows[kid.node_id] = row
        column = next_column

    final_rank: dict[int, int] = {}
    for node in tree.nodes:
        if node.final_rank is None:
            continue
        current = node
        while True:
            final_rank[current.node_id] = min(final_rank.get(current.node_id, node.final_rank), node.final_rank)
            if current.parent_id is None:
                break
            current = tree.nodes[current.parent_id]
    return BeamLayout(rows, pruned, final_rank, 1 + max(rows.values(), default=0.0))


def _spaced_rows(desired: list[float]) -> list[float]:
    """Rows closest (least squares) to `desired`, in the same order, >= 0 and at least 1 apart.

    With z_i = row_i - i the constraints become z non-decreasing and z >= 0: the pool
    adjacent violators algorithm fits z, and clipping at 0 keeps the fit optimal.
    """
    blocks: list[list[float]] = []  # [mean, weight]
    for i, d in enumerate(desired):
        blocks.append([d - i, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight = blocks.pop()
            blocks[-1][0] = (blocks[-1][0] * blocks[-1][1] + mean * weight) / (blocks[-1][1] + weight)
            blocks[-1][1] += weight
    fitted = [mean for mean, weight in blocks for _ in range(int(weight))]
    return [i + max(z, 0.0) for i, z in enumerate(fitted)]
