"""The record of a beam search: every candidate considered at every step.

Node 0 is the prompt. Each later node is one candidate token proposed by a live
beam (its parent node) at a step, with its logprob, the cumulative logprob of the
sequence it would make, the length-normalised score used for ranking, and what
became of it: "kept" (a beam continued from it), "pruned" (outscored), or
"finished" (it was EOS and the sequence was set aside as completed). Nodes that
end one of the final ranked sequences carry `final_rank` (0 is best).
It holds plain data only and imports no view: nbllm.views draws it
(`beam_tree_html`, `plot_beam_tree`, `save_beam_tree_html`) and registers the HTML
view with IPython, so a notebook displays a tree as the interactive beam view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

KEPT, PRUNED, FINISHED = "kept", "pruned", "finished"


@dataclass
class BeamNode:
    node_id: int
    parent_id: Optional[int]
    step: int  # 0 for the prompt, k for the k-th generated token
    token_id: Optional[int]
    token_text: str
    logprob: float
    cum_logprob: float
    score: float
    status: str
    rank: Optional[int] = None  # the candidate's rank among its parent's proposals (1 = most likely)
    final_rank: Optional[int] = None


@dataclass
class BeamTree:
    prompt: Optional[str]
    beam_width: int
    length_penalty: float
    nodes: list[BeamNode] = field(default_factory=list)

    def add(self, **values) -> BeamNode:
        node = BeamNode(node_id=len(self.nodes), **values)
        self.nodes.append(node)
        return node

    def children(self, node_id: int) -> list[BeamNode]:
        return [n for n in self.nodes if n.parent_id == node_id]

    def path(self, node_id: int) -> list[BeamNode]:
        """Nodes from the first generated token down to node_id (the prompt excluded)."""
        out = []
        node: Optional[BeamNode] = self.nodes[node_id]
        while node is not None and node.parent_id is not None:
            out.append(node)
            node = self.nodes[node.parent_id]
        return out[::-1]

    @property
    def num_steps(self) -> int:
        return max((n.step for n in self.nodes), default=0)

    def to_records(self) -> list[dict]:
        return [asdict(n) for n in self.nodes]

    def to_dataframe(self):
        """One row per candidate (an edge from its parent): the tree as a table."""
        import pandas as pd

        return pd.DataFrame(self.to_records())
