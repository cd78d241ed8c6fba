"""Figures without pyplot: result files are drawn on ``matplotlib.figure.Figure`` objects,
so writing a report never switches the process's backend (a notebook keeps its inline
plots) and never leaks figures into pyplot's global registry."""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["figure_factory", "subplots"]


def subplots(*args, figsize=None, layout=None, **kwargs):
    """Like ``pyplot.subplots`` but returns a standalone Figure (save it with ``savefig``)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*args, **kwargs)


class _Factory:
    """The two pyplot functions the report writers use, without pyplot."""

    subplots = staticmethod(subplots)

    @staticmethod
    def close(fig) -> None:
        """Nothing to release: the figure is not registered anywhere."""


figure_factory = _Factory()
