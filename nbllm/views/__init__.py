"""Everything nbllm draws: the beam-search tree, token probabilities, the chat panel's
messages, the KV-cache monitor's pictures and plots, and the status table.

The data these views read (nbllm.beam_tree, nbllm.outputs, nbllm.metrics) imports
nothing from here; IPython learns to display a BeamTree or BeamSearchOutput through
`register_formatters`. Every HTML string is built with html_text.esc, and every
HTML view is a self-contained fragment (inline SVG, CSS and a little JS; no URL, no
require.js) with ids unique to the call, readable where scripts do not run.
Importing this package loads only the standard library and nbllm's data classes
(`import nbllm` imports it, to register the formatters); numpy and matplotlib load
when a plot is drawn, markdown-it-py with the chat view.
"""

from nbllm.views.beam_plot import plot_beam_tree
from nbllm.views.beam_view import beam_tree_html, save_beam_tree_html
from nbllm.views.formatters import register_formatters
from nbllm.views.token_view import TokenView, token_view, token_view_html

__all__ = ["beam_tree_html", "save_beam_tree_html", "plot_beam_tree", "token_view", "token_view_html", "TokenView",
           "register_formatters"]
