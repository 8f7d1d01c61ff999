"""Notebook views of nbllm results: the beam-search tree (HTML/SVG and matplotlib) and token probabilities.

Every HTML view is a self-contained fragment (inline SVG, CSS and a little JS; no
URL, no require.js) with ids unique to the call, readable where scripts do not run.
"""

from nbllm.views.beam_plot import plot_beam_tree
from nbllm.views.beam_view import beam_tree_html, save_beam_tree_html
from nbllm.views.token_view import TokenView, token_view, token_view_html

__all__ = ["beam_tree_html", "save_beam_tree_html", "plot_beam_tree", "token_view", "token_view_html", "TokenView"]
