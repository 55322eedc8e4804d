"""Progress bars that degrade cleanly: a notebook widget where ``ipywidgets`` is installed, plain text elsewhere
(``tqdm.auto`` alone warns "IProgress not found" in a Jupyter without ipywidgets)."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
