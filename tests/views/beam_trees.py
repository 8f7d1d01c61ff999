"""Synthetic beam trees shaped like real searches, with nasty token texts, built in milliseconds."""

import math
import random

from nbllm.beam_tree import FINISHED, KEPT, PRUNED, BeamTree

NASTY_TOKENS = [" the", "<b>", "&amp;", '"q"', "'s", "\n", "\n\n", " ", "\t", "</script>", "a<b>&c", "x",
                "日本", "🙂", "$x$", "", "\x00", " end"]
EOS = 0


def random_beam_tree(width: int, steps: int, seed: int = 0, length_penalty: float = 1.0,
                     prompt: str = "Once <upon> & a \"time\"") -> BeamTree:
    """A tree shaped like a real search: each beam proposes 2*width candidates, the best width survive."""
    rng = random.Random(seed)
    tree = BeamTree(prompt, width, length_penalty)
    root = tree.add(parent_id=None, step=0, token_id=None, token_text=prompt, logprob=0.0, cum_logprob=0.0,
                    score=0.0, status=KEPT)
    beams = [root]
    completed = []
    for step in range(1, steps + 1):
        live = []
        for beam in beams:
            weights = sorted((rng.expovariate(1.0) ** 3 for _ in range(2 * width)), reverse=True)
            total = sum(weights) * rng.uniform(1.0, 1.5)
            for rank, w in enumerate(weights, start=1):
                token = EOS if rng.random() < 0.005 else rng.randrange(1, 1000)
                text = "<|endoftext|>" if token == EOS else rng.choice(NASTY_TOKENS)
                logprob = math.log(w / total)
                cum = beam.cum_logprob + logprob
                score = cum / (step + 3) ** length_penalty
                node = tree.add(parent_id=beam.node_id, step=step, token_id=token, token_text=text, logprob=logprob,
                                cum_logprob=cum, score=score, status=FINISHED if token == EOS else PRUNED, rank=rank)
                (completed if token == EOS else live).append(node)
        live.sort(key=lambda n: n.score, reverse=True)
        beams = live[:width]
        for node in beams:
            node.status = KEPT
    completed += beams
    for rank, node in enumerate(sorted(completed, key=lambda n: n.score, reverse=True)[:width]):
        node.final_rank = rank
    return tree
