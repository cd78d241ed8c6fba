"""The diffusion Thompson sampling (dTS) experiments, registered with
:mod:`ppl_bandits.experiments`."""

from __future__ import annotations

__all__ = ["register_experiments"]


def register_experiments(register) -> None:
    """Register the dTS experiments with ``register`` (an ExperimentSpec sink)."""
