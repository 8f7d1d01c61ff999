"""Native beam search: beams are engine sequences that share KV blocks and fork on selection.

Each live beam is a Request whose step yields candidates (its top 2*beam_width
logprobs, plus the token sampled at the requested temperature, as vLLM does)
instead of a token. Once every live beam of a group has its candidates, the group
expands: candidates are scored by cumulative logprob / length**length_penalty
(length counts prompt tokens, and excludes a final EOS, as vLLM's
get_beam_search_score), EOS candidates are set aside as completed, and the best
beam_width others survive. A surviving candidate continues its parent's Request
when it is the parent's first survivor; further survivors fork the parent: the
child shares every block (reference counts) and the scheduler copies the shared,
partially filled last block on the child's first write. No beam recomputes its
prefix. The group records every candidate in a BeamTree; when its params ask for
CUMULATIVE outputs, a copy of the tree so far is delivered after every step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional

from nbllm.beam_tree import FINISHED, KEPT, PRUNED, BeamTree
from nbllm.engine.sequence import Request
from nbllm.outputs import BeamSearchOutput, BeamSearchSequence
from nbllm.sampling_params import BeamSearchParams, RequestOutputKind


def beam_score(num_tokens: int, cum_logprob: float, ends_with_eos: bool, length_penalty: float) -> float:
    """vLLM's ranking score: cumulative logprob over length ** length_penalty."""
    seq_len = num_tokens - 1 if ends_with_eos else num_tokens
    return cum_logprob / (seq_len ** length_penalty)


@dataclass
class _Beam:
    request: Request
    node_id: int
    logprobs: list[float]
    cum_logprob: float


@dataclass
class _Done:
    tokens: list[int]  # prompt and generated tokens, as vLLM's BeamSearchSequence.tokens
    logprobs: list[float]
    cum_logprob: float
    score: float
    node_id: int
    finish_reason: str


class BeamGroup:
    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                 params: BeamSearchParams, eos_token_ids: frozenset[int], tokenizer: Any, max_model_len: int):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.tree = BeamTree(prompt, params.beam_width, params.length_penalty)
        root = self.tree.add(parent_id=None, step=0, token_id=None, token_text=prompt or "", logprob=0.0,
                             cum_logprob=0.0, score=0.0, status=KEPT)
        self.beams: list[_Beam] = []
        self.completed: list[_Done] = []
        self.step = 0
        self.root_id = root.node_id
        self.finished = False

    def start(self, first: Request) -> None:
        self.beams = [_Beam(first, self.root_id, [], 0.0)]

    @property
    def requests(self) -> list[Request]:
        return [b.request for b in self.beams]

    def ready(self) -> bool:
        return bool(self.beams) and all(b.request.beam_candidates is not None for b in self.beams)

    # ----------------------------------------------------------------- one expansion
    def expand(self, fork: Callable[[Request], Request], drop: Callable[[Request], None]) -> int:
        """Select the next beams; returns how many tokens the surviving beams gained."""
        self.step += 1
        length = len(self.prompt_token_ids) + self.step
        ignore_eos = self.params.ignore_eos
        live: list[tuple[float, _Beam, int, float, int]] = []
        for beam in self.beams:
            for token, logprob, rank in beam.request.beam_candidates:
                cum = beam.cum_logprob + logprob
                is_eos = token in self.eos_token_ids and not ignore_eos
                score = beam_score(length, cum, is_eos, self.params.length_penalty)
                node = self.tree.add(parent_id=beam.node_id, step=self.step, token_id=token,
                                     token_text=self.tokenizer.decode([token]), logprob=logprob, cum_logprob=cum,
                                     score=score, status=FINISHED if is_eos else PRUNED, rank=rank)
                if is_eos:
                    tokens = list(beam.request.all_token_ids) + [token]
                    self.completed.append(_Done(tokens, beam.logprobs + [logprob], cum, score, node.node_id, "stop"))
                else:
                    live.append((score, beam, token, logprob, node.node_id))
            beam.request.beam_candidates = None
        live.sort(key=lambda item: item[0], reverse=True)
        selected = live[:self.params.beam_width]

        # Forks copy their parent's state before any parent gains its new token.
        continued: set[int] = set()
        plan = []
        for score, beam, token, logprob, node_id in selected:
            self.tree.nodes[node_id].status = KEPT
            if id(beam) in continued:
                plan.append((fork(beam.request), beam, token, logprob, node_id))
            else:
                continued.add(id(beam))
                plan.append((beam.request, beam, token, logprob, node_id))
        for beam in self.beams:
            if id(beam) not in continued:
                drop(beam.request)
        new_beams = []
        for request, parent, token, logprob, node_id in plan:
            request.append_output_token(token)
            new_beams.append(_Beam(request, node_id, parent.logprobs + [logprob], parent.cum_logprob + logprob))
        self.beams = new_beams
        if not self.beams or self.step >= self.params.max_tokens or length >= self.max_model_len:
            self._finish(drop)
        return len(new_beams)

    def _finish(self, drop: Callable[[Request], None]) -> None:
        length = len(self.prompt_token_ids) + self.step
        for beam in self.beams:
            score = beam_score(length, beam.cum_logprob, False, self.params.length_penalty)
            self.completed.append(_Done(list(beam.request.all_token_ids), beam.logprobs, beam.cum_logprob, score,
                                        beam.node_id, "length"))
            drop(beam.request)
        self.beams = []
        self.finished = True

    # ----------------------------------------------------------------- result
    @property
    def streams_progress(self) -> bool:
        """Whether the search so far is delivered after every step (params.output_kind CUMULATIVE)."""
        return self.params.output_kind is RequestOutputKind.CUMULATIVE

    def snapshot(self) -> BeamSearchOutput:
        """The search so far (not finished): a copy of its tree, no ranked sequences yet."""
        tree = BeamTree(self.tree.prompt, self.tree.beam_width, self.tree.length_penalty,
                        [copy.copy(node) for node in self.tree.nodes])
        return BeamSearchOutput(sequences=[], prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
                                tree=tree, request_id=self.request_id, finished=False)

    def output(self) -> BeamSearchOutput:
        ranked = sorted(self.completed, key=lambda d: d.score, reverse=True)[:self.params.beam_width]
        n_prompt = len(self.prompt_token_ids)
        sequences = []
        for rank, done in enumerate(ranked):
            generated = done.tokens[n_prompt:]
            if done.finish_reason == "stop" and not self.params.include_stop_str_in_output:
                generated = generated[:-1]
            text = self.tokenizer.decode(generated, skip_special_tokens=False) if generated else ""
            sequences.append(BeamSearchSequence(tokens=done.tokens, logprobs=done.logprobs,
                                                cum_logprob=done.cum_logprob, text=text,
                                                finish_reason=done.finish_reason))
            self.tree.nodes[done.node_id].final_rank = rank
        return BeamSearchOutput(sequences=sequences, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
                                tree=self.tree, request_id=self.request_id)


def candidates_from_result(token_id: int, logprob: float,
                           top: Optional[tuple[list[int], list[float], int]]) -> list[tuple[int, float, int]]:
    """(token, logprob, rank) for the top tokens plus the sampled one, most likely first."""
    ids, values, sampled_rank = top or ([], [], 1)
    out = [(t, v, r + 1) for r, (t, v) in enumerate(zip(ids, values))]
    if token_id not in ids:
        out.append((token_id, logprob, sampled_rank))
    return out
