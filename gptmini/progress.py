"""Where progress bars go: decided here, once, for every bar gptmini draws (training, tokenizing, answering).

A bar is drawn only where it can redraw itself in place: on a terminal (tqdm's text bar, on stderr) and
in Jupyter or Colab (tqdm's notebook widget, when ipywidgets is installed, as `tqdm.auto` chooses).
Anywhere else (a pipe, a log file, a notebook without widgets) a text bar is one carriage return per
redraw, which captured output keeps as a wall of half-lines; there is no bar there, and the training loop
prints a plain line every log_every steps instead (`shown`), exactly as with --no-progress.
"""
from __future__ import annotations

import importlib.util
import sys

from tqdm import tqdm


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Colab's too): the test tqdm.autonotebook makes."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def bar_kind(show: bool = True) -> str | None:
    """"notebook", "terminal", or None: no bar (not wanted, or nowhere to redraw one)."""
    if not show:
        return None
    if in_notebook():
        return "notebook" if importlib.util.find_spec("ipywidgets") else None
    return "terminal" if sys.stderr.isatty() else None


def bar(show: bool = True, **options) -> tqdm:
    """A tqdm bar (tqdm's options) where bar_kind says one belongs; a disabled one elsewhere."""
    kind = bar_kind(show)
    if kind == "notebook":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(**options)
    return tqdm(**options, file=sys.stderr, dynamic_ncols=True, disable=kind is None)


def shown(progress: tqdm) -> bool:
    """Whether `progress` is drawn; if not, its caller prints plain lines instead."""
    return not progress.disable
