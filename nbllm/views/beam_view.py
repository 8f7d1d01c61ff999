"""The beam-search tree as one self-contained HTML fragment: inline SVG, CSS and a little JS.

Steps run left to right, one column each; rows follow nbllm.views.beam_layout.
Every kept or finished candidate is a box holding its token, joined to its parent
by an edge whose colour and width grow with the token's probability; branches that
reach no final sequence are grey; finished (EOS) boxes are green with a bar at
their end; the final sequences are underlaid in orange, strongest for #1 (final
rank 0), and labelled "#k" at their end. The prompt's box is wide enough for its
end (up to PROMPT_LABEL_CHARS characters). Pruned candidates are collapsed into one
"+N" marker under their parent. Hovering a box or marker shows its details (an SVG
<title>, turned into a styled tooltip where scripts run); clicking a marker lists
its pruned candidates under the tree, where the list covers no node. A search still
running (`searching=True`) says so in its header. Nothing refers to any URL, and
element ids are unique per call, so several views can share a notebook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

from nbllm.beam_tree import FINISHED, BeamNode, BeamTree
from nbllm.views.assets import BEAM_CSS, BEAM_JS, TOOLTIP_CSS, TOOLTIP_JS
from nbllm.views.beam_layout import BeamLayout, layout_beam_tree
from nbllm.views.html_text import NO_MATH, esc, mix, prob, shorten, unique_id, visible

COL_W, BOX_W, BOX_H, ROW_H, PAD = 104, 72, 18, 30, 14
LABEL_CHARS = 9
PROMPT_LABEL_CHARS = 32
CHAR_W = 6.7  # px per character of the 11px monospace labels
LIVE_LOW, LIVE_HIGH = "#c6dbef", "#08306b"
DEAD_LOW, DEAD_HIGH = "#e4e4e4", "#8a8a8a"
FINAL, FINISHED_GREEN = "#f28e2b", "#31a354"


@dataclass(frozen=True)
class _Geometry:
    """Where things go: the layout's rows, and the prompt's box width (later columns move right by the excess)."""

    layout: BeamLayout
    root_w: float

    def xy(self, node: BeamNode) -> tuple[float, float]:
        """Top-left corner of the node's box."""
        x = PAD + node.step * COL_W + (self.root_w - BOX_W if node.step else 0)
        return x, PAD + self.layout.rows[node.node_id] * ROW_H

    def width(self, node: BeamNode) -> float:
        return self.root_w if node.parent_id is None else BOX_W


def beam_tree_html(tree: BeamTree, searching: bool = False) -> str:
    """The interactive view of `tree` as an HTML fragment (what a notebook displays)."""
    layout = layout_beam_tree(tree)
    roots = [n for n in tree.nodes if n.parent_id is None]
    root_w = max([BOX_W] + [min(CHAR_W * len(_label(n)) + 12, CHAR_W * PROMPT_LABEL_CHARS + 12) for n in roots])
    geo = _Geometry(layout, root_w)
    element_id = unique_id("nbllm-beam")
    script = f"(function (root) {{{TOOLTIP_JS}{BEAM_JS}}})(document.getElementById(\"{element_id}\"));"
    return (f'<div class="nbb {NO_MATH}" id="{element_id}"><style>{TOOLTIP_CSS}{BEAM_CSS}</style>'
            f'<div class="nbb-head">{_summary(tree, searching)}</div>{_LEGEND}'
            f'<div class="nbb-scroll"><div class="nbb-canvas">{_svg(tree, geo)}</div></div>'
            f'<div class="nbb-pruned" title="click to close"></div>'
            f'{_sequence_table(tree)}<script>{script}</script></div>')


def save_beam_tree_html(tree: BeamTree, path: Union[str, os.PathLike]) -> None:
    """Write the view as a standalone HTML page that opens offline in any browser."""
    title = esc(f"nbllm beam search: {shorten(tree.prompt or '', 60)}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
            f'<body>{beam_tree_html(tree)}</body></html>\n')
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


# ----------------------------------------------------------------- header and footer
def _summary(tree: BeamTree, searching: bool) -> str:
    counts = {status: 0 for status in ("kept", "pruned", "finished")}
    for node in tree.nodes[1:]:
        counts[node.status] = counts.get(node.status, 0) + 1
    state = " · <i>searching…</i>" if searching else ""
    return (f"<b>Beam search</b>{state} · width {tree.beam_width} · {tree.num_steps} steps · "
            f"{len(tree.nodes) - 1} candidates ({counts['kept']} kept, {counts['finished']} finished, "
            f"{counts['pruned']} pruned) · length penalty {tree.length_penalty:g}")


_LEGEND = (
    '<div class="nbb-legend">'
    f'<span><i class="nbb-sw" style="background:linear-gradient(90deg,{LIVE_LOW},{LIVE_HIGH})"></i>'
    'edge: p(token) low → high</span>'
    f'<span><i class="nbb-sw" style="background:{FINAL}"></i>final sequences (#1 strongest)</span>'
    f'<span><i class="nbb-sw" style="background:#e5f5e0;border:1px solid {FINISHED_GREEN}"></i>finished (EOS)</span>'
    f'<span><i class="nbb-sw" style="background:#c8c8c8"></i>dead branch</span>'
    '<span><b style="color:#888">+N</b> pruned candidates (hover: list; click: list them below)</span>'
    '</div>')


def _sequence_table(tree: BeamTree) -> str:
    finals = sorted((n for n in tree.nodes if n.final_rank is not None), key=lambda n: n.final_rank)
    if not finals:
        return ""
    rows = []
    for node in finals:
        path = tree.path(node.node_id)
        ended_by_eos = node.status == FINISHED
        text = visible("".join(n.token_text for n in (path[:-1] if ended_by_eos else path)), keep_spaces=True)
        rows.append(f'<tr><td style="color:{FINAL}"><b>#{node.final_rank + 1}</b></td>'
                    f'<td class="nbb-num">{node.score:.4f}</td><td class="nbb-num">{node.cum_logprob:.3f}</td>'
                    f'<td>{"EOS" if ended_by_eos else "length"}</td><td class="nbb-text">{esc(text)}</td></tr>')
    return ('<table class="nbb-tbl"><tr><th>final</th><th>score</th><th>cum logprob</th><th>end</th><th>text</th></tr>'
            + "".join(rows) + "</table>")


# ----------------------------------------------------------------- the SVG
def _svg(tree: BeamTree, geo: _Geometry) -> str:
    layout = geo.layout
    width = PAD * 2 + tree.num_steps * COL_W + geo.root_w + 30
    height = PAD * 2 + int(layout.num_rows * ROW_H)
    placed = [n for n in tree.nodes if n.node_id in layout.rows]
    halos = sorted((n for n in placed if n.node_id in layout.final_rank and n.parent_id is not None),
                   key=lambda n: -layout.final_rank[n.node_id])
    parts = [f'<svg class="nbb-svg" width="{width:.0f}" height="{height}" font-family="monospace" font-size="11">']
    parts += [_halo(tree, geo, n) for n in halos]
    parts += [_edge(tree, geo, n) for n in placed if n.parent_id is not None]
    parts += [_pruned_marker(geo, tree.nodes[p], group) for p, group in layout.pruned.items()]
    parts += [_box(geo, n) for n in placed]
    parts.append("</svg>")
    return "".join(parts)


def _curve(tree: BeamTree, geo: _Geometry, node: BeamNode) -> str:
    parent = tree.nodes[node.parent_id]
    px, py = geo.xy(parent)
    x, y = geo.xy(node)
    x1, y1, y2 = px + geo.width(parent), py + BOX_H / 2, y + BOX_H / 2
    mid = (x1 + x) / 2
    return f"M{x1:.1f} {y1:.1f}C{mid:.1f} {y1:.1f} {mid:.1f} {y2:.1f} {x:.1f} {y2:.1f}"


def _halo(tree: BeamTree, geo: _Geometry, node: BeamNode) -> str:
    rank = geo.layout.final_rank[node.node_id]
    opacity = max(0.18, 0.85 - 0.14 * rank)
    width = 9 if rank == 0 else 6
    return (f'<path d="{_curve(tree, geo, node)}" fill="none" stroke="{FINAL}" stroke-opacity="{opacity:.2f}" '
            f'stroke-width="{width}" stroke-linecap="round"/>')


def _edge(tree: BeamTree, geo: _Geometry, node: BeamNode) -> str:
    p = prob(node.logprob)
    dead = geo.layout.is_dead(node)
    colour = mix(DEAD_LOW, DEAD_HIGH, p) if dead else mix(LIVE_LOW, LIVE_HIGH, p)
    classes = ' class="nbb-dead"' if dead else ""
    return (f'<path{classes} d="{_curve(tree, geo, node)}" fill="none" stroke="{colour}" '
            f'stroke-width="{1 + 2.5 * p:.2f}"/>')


def _box(geo: _Geometry, node: BeamNode) -> str:
    x, y = geo.xy(node)
    w = geo.width(node)
    dead = geo.layout.is_dead(node)
    rank = geo.layout.final_rank.get(node.node_id)
    fill, stroke, ink = "#ffffff", "#6baed6", "#1a1a1a"
    if node.parent_id is None:
        fill, stroke = "#f0f0f0", "#555555"
    elif rank is not None:
        fill, stroke = "#fff1e2", FINAL
    elif dead:
        fill, stroke, ink = "#f7f7f7", "#cfcfcf", "#9a9a9a"
    if node.status == FINISHED:
        fill, stroke = ("#e5f5e0", FINISHED_GREEN) if not dead else ("#f0f7ee", "#a1d99b")
    classes = "nbb-node nbb-dead" if dead else "nbb-node"
    parts = [f'<g class="{classes}" data-node="{node.node_id}" transform="translate({x:.1f},{y:.1f})">'
             f'<title>{esc(_node_tip(node, rank))}</title>'
             f'<rect width="{w:.1f}" height="{BOX_H}" rx="4" fill="{fill}" stroke="{stroke}"/>'
             f'<text x="{w / 2:.1f}" y="13" text-anchor="middle" fill="{ink}" xml:space="preserve">'
             f'{esc(_label(node))}</text>']
    if node.status == FINISHED:
        parts.append(f'<rect x="{w - 4:.1f}" y="2" width="3" height="{BOX_H - 4}" fill="{FINISHED_GREEN}"/>')
    if node.final_rank is not None:
        parts.append(f'<text x="{w + 4:.1f}" y="13" fill="{FINAL}" font-weight="bold">#{node.final_rank + 1}</text>')
    parts.append("</g>")
    return "".join(parts)


def _label(node: BeamNode) -> str:
    """The token as it fits in a box; the prompt (spaces kept) shows its end, where generation starts."""
    if node.parent_id is None:
        shown = visible(node.token_text, keep_spaces=True)
        return shown if len(shown) <= PROMPT_LABEL_CHARS else "…" + shown[-(PROMPT_LABEL_CHARS - 1):]
    return shorten(visible(node.token_text), LABEL_CHARS)


def _node_tip(node: BeamNode, final_rank: int | None) -> str:
    if node.parent_id is None:
        return f"prompt: {shorten(repr(node.token_text), 400)}"
    lines = [f"token '{visible(node.token_text)}'  (id {node.token_id})",
             f"p {prob(node.logprob):.4f}   logprob {node.logprob:.4f}   rank {node.rank}",
             f"cum logprob {node.cum_logprob:.4f}   score {node.score:.4f}",
             f"step {node.step} · {node.status}"]
    if node.final_rank is not None:
        lines.append(f"final sequence #{node.final_rank + 1}")
    elif final_rank is not None:
        lines.append(f"on final sequence #{final_rank + 1}")
    return "\n".join(lines)


def _pruned_marker(geo: _Geometry, parent: BeamNode, group: list[BeamNode]) -> str:
    x, y = geo.xy(parent)
    lines = [f"{len(group)} pruned candidates after '{shorten(visible(parent.token_text), 24)}' (step {parent.step}):"]
    lines += [f"{visible(n.token_text):<10} p {prob(n.logprob):.4f}  logprob {n.logprob:7.3f}  rank {n.rank!s:>2}  "
              f"score {n.score:.4f}" for n in group]
    dead = " nbb-dead" if geo.layout.is_dead(parent) else ""
    top = y + BOX_H + 1
    return (f'<g class="nbb-more{dead}" data-parent="{parent.node_id}" data-count="{len(group)}">'
            f'<title>{esc(chr(10).join(lines))}</title>'
            f'<rect x="{x:.1f}" y="{top:.1f}" width="30" height="10" fill="#ffffff" fill-opacity="0"/>'
            f'<text x="{x + 2:.1f}" y="{top + 8.5:.1f}" font-size="9" fill="#8c8c8c">+{len(group)}</text></g>')
