"""Named experiments: an environment and a list of agents, run by ``ppl-bandits simulate``.

=================  ====================================================================
experiment         setting
=================  ====================================================================
mets-linear        paper Fig. 2 (left): K=100, L=3, d=2, n=5000, 50 runs, Gaussian
                   rewards; meTS-Lin, meTS-Lin-Fa, HierTS, LinTS, LinUCB
mets-logistic      paper Fig. 2 (right): logistic rewards; meTS-GLM, meTS-GLM-Fa,
                   meTS-Lin, HierTS, GLM-TS, UCB-GLM
=================  ====================================================================

Prior: μ_Ψ = 0, Σ_Ψ = 3 I, Σ_0 = I, σ = 1, b_{iℓ} ~ U[-1, 1] drawn per run; contexts
U[-1, 1]^d shared by the actions (``context="pool"`` gives the authors' per-action pool).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np

from ppl_bandits.agents import make_agent, resolve_agent_name
from ppl_bandits.environments import mixed_effect_environment
from ppl_bandits.runner import SimulationResult, draw_problems, simulate
from ppl_bandits.types import Agent, Environment

__all__ = ["EXPERIMENTS", "ExperimentResult", "build_experiment", "run_experiment"]


class _Spec(NamedTuple):
    reward: str
    agents: tuple[str, ...]
    defaults: dict


_FIG2 = {"num_actions": 100, "num_effects": 3, "dim": 2, "num_rounds": 5000, "num_runs": 50}

EXPERIMENTS = {
    "mets-linear": _Spec("linear", ("meTS-Lin", "meTS-Lin-Fa", "HierTS", "LinTS", "LinUCB"), _FIG2),
    "mets-logistic": _Spec(
        "logistic",
        ("meTS-GLM", "meTS-GLM-Fa", "meTS-Lin", "HierTS", "GLM-TS", "UCB-GLM"),
        _FIG2,
    ),
}


class ExperimentResult(NamedTuple):
    """Results of one experiment: per-agent simulation results and wall times."""

    name: str
    settings: dict
    results: dict[str, SimulationResult]
    wall_seconds: dict[str, float]


def resolve_experiment(name: str) -> str:
    key = str(name).lower()
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment is {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    return key


def build_experiment(
    name: str,
    *,
    num_actions=None,
    num_effects=None,
    dim=None,
    num_rounds=None,
    num_runs=None,
    context: str = "shared",
    agents=None,
    factored_variant: str = "mean-field",
) -> tuple[Environment, list[Agent], dict]:
    """The environment, the agents and the resolved settings of a named experiment."""
    spec = EXPERIMENTS[resolve_experiment(name)]
    given = {
        "num_actions": num_actions,
        "num_effects": num_effects,
        "dim": dim,
        "num_rounds": num_rounds,
        "num_runs": num_runs,
    }
    settings = {k: (v if v is not None else spec.defaults[k]) for k, v in given.items()}
    for k, v in settings.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{k} is {v!r}; expected an integer >= 1")
    settings.update(context=context, reward=spec.reward, factored_variant=factored_variant)
    env = mixed_effect_environment(
        settings["num_actions"],
        settings["num_effects"],
        settings["dim"],
        reward=spec.reward,
        context=context,
    )
    names = spec.agents if agents is None else tuple(resolve_agent_name(a) for a in agents)
    built = [
        make_agent(n, horizon=settings["num_rounds"], factored_variant=factored_variant)
        for n in names
    ]
    settings["agents"] = list(names)
    return env, built, settings


def run_experiment(name: str, *, seed: int = 0, progress: bool = True, **kw) -> ExperimentResult:
    """Run every agent of an experiment on the same problems (common random numbers)."""
    env, agents, settings = build_experiment(name, **kw)
    key = jax.random.key(seed)
    results, walls = {}, {}
    t0 = time.perf_counter()
    problems = draw_problems(key, env, settings["num_runs"])
    jax.block_until_ready(problems)
    settings["draw_seconds"] = time.perf_counter() - t0
    for agent in agents:
        t0 = time.perf_counter()
        res = simulate(
            key,
            env,
            agent,
            num_rounds=settings["num_rounds"],
            num_runs=settings["num_runs"],
            progress=progress,
            problems=problems,
        )
        jax.block_until_ready(res.regret)
        walls[agent.name] = time.perf_counter() - t0
        results[agent.name] = res
    settings["seed"] = seed
    return ExperimentResult(resolve_experiment(name), settings, results, walls)


def cumulative_regret(result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    """Mean cumulative regret over runs and its standard error, per round."""
    cum = np.cumsum(np.asarray(result.regret, np.float64), axis=1)
    R = cum.shape[0]
    se = cum.std(axis=0, ddof=1) / np.sqrt(R) if R > 1 else np.full(cum.shape[1], np.nan)
    return cum.mean(axis=0), se
