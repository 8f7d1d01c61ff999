"""IPython displays a BeamTree, or a BeamSearchOutput, as the interactive beam view.

The data classes (nbllm.beam_tree, nbllm.outputs) import no view and have no
`_repr_html_`: the shell's text/html formatter maps their types to the view here
instead, so the views depend on the data and never the reverse. `import nbllm`
registers them on the running shell (if any), `%load_ext nbllm` on its own shell.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from nbllm.beam_tree import BeamTree
from nbllm.outputs import BeamSearchOutput
from nbllm.views.beam_view import beam_tree_html


def beam_output_html(output: BeamSearchOutput) -> Optional[str]:
    """The output's search tree as the beam view (marked "searching…" while unfinished); None (the plain
    repr) when it has no tree."""
    return beam_tree_html(output.tree, searching=not output.finished) if output.tree is not None else None


def register_formatters(ip: Any = None) -> None:
    """Show BeamTree and BeamSearchOutput as the beam view in `ip` (by default the running shell, if any)."""
    if ip is None:
        ipython = sys.modules.get("IPython")  # no shell runs where IPython was never imported: do not load it
        ip = ipython.get_ipython() if ipython is not None else None
    if ip is None:
        return
    html = ip.display_formatter.formatters["text/html"]
    html.for_type(BeamTree, beam_tree_html)
    html.for_type(BeamSearchOutput, beam_output_html)
