"""What an experiment is: its specification, its result and the helpers every experiment module
shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ppl_bandits.core.runner import SimulationResult
from ppl_bandits.core.types import Agent, Environment

__all__ = ["ExperimentResult", "ExperimentSpec", "check_positive_ints", "cumulative_regret"]


class ExperimentSpec(NamedTuple):
    """A named experiment.

    ``defaults`` lists every option the experiment takes with its default (``num_runs``
    and ``num_rounds`` always). ``build(settings, agents)`` returns the environment and the
    agents; ``agents`` is None for the experiment's own list, or the names a user asked
    for. ``metrics(settings, env, problems, agent, result)``, if given, returns extra
    per-round curves ``{metric: (rounds, values)}`` with ``values`` of shape (runs, len(rounds)),
    written next to the regret by :mod:`ppl_bandits.experiments.report`.
    """

    name: str
    description: str
    defaults: dict
    build: Callable[[dict, Any], tuple[Environment, list[Agent]]]
    metrics: Callable[..., dict] | None = None
    title_keys: tuple[str, ...] = ("num_actions", "num_effects", "dim")


def check_positive_ints(settings: dict, keys) -> None:
    """Raise a ValueError naming the first of ``keys`` that is not an integer >= 1; whole
    numbers given as floats (``--set num_actions=1e2``) are stored back as ints."""
    for k in keys:
        v = settings[k]
        try:
            ok = not isinstance(v, bool) and int(v) == v and v >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{k} is {v!r}; expected an integer >= 1")
        settings[k] = int(v)


class ExperimentResult(NamedTuple):
    """Results of one experiment: per-agent simulation results and wall times."""

    name: str
    settings: dict
    results: dict[str, SimulationResult]
    wall_seconds: dict[str, float]
    metrics: dict | None = None
    """Extra curves: ``{metric: {agent: (rounds, values (runs, len(rounds)))}}`` or None."""


def cumulative_regret(result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    """Mean cumulative regret over runs and its standard error, per round."""
    cum = np.cumsum(np.asarray(result.regret, np.float64), axis=1)
    R = cum.shape[0]
    se = cum.std(axis=0, ddof=1) / np.sqrt(R) if R > 1 else np.full(cum.shape[1], np.nan)
    return cum.mean(axis=0), se
