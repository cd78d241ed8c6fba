"""Named experiments: an environment and a list of agents, run by ``ppl-bandits simulate``.

An experiment is an :class:`ExperimentSpec` in the registry :data:`EXPERIMENTS`: its
options with their defaults, and a builder that turns the resolved settings into an
environment and agents. Options an experiment does not take are refused by name, so
``--N`` on a mixed-effect experiment is an error rather than silently ignored.

=================  ====================================================================
experiment         setting
=================  ====================================================================
mets-linear        paper Fig. 2 (left): K=100, L=3, d=2, n=5000, 50 runs, Gaussian
                   rewards; meTS-Lin, meTS-Lin-Fa, HierTS, LinTS, LinUCB
mets-logistic      paper Fig. 2 (right): logistic rewards; meTS-GLM, meTS-GLM-Fa,
                   meTS-Lin, HierTS, GLM-TS, UCB-GLM
=================  ====================================================================

Mixed-effect prior: μ_Ψ = 0, Σ_Ψ = 3 I, Σ_0 = I, σ = 1, b_{iℓ} ~ U[-1, 1] drawn per run;
contexts U[-1, 1]^d shared by the actions (``context="pool"`` gives the authors'
per-action pool). Every experiment module is imported here and listed in :data:`EXPERIMENT_MODULES`;
each module's ``register_experiments(register)`` adds its specifications, so the
catalogue is explicit: no module is found by name at run time.
"""

from __future__ import annotations

import time

import jax

from ppl_bandits.core.runner import draw_problems, simulate
from ppl_bandits.core.types import Agent, Environment
from ppl_bandits.experiments import dts, hcsa, mets, movielens, supervised
from ppl_bandits.experiments.registry import ExperimentResult, ExperimentSpec, check_positive_ints

__all__ = [
    "EXPERIMENTS",
    "EXPERIMENT_MODULES",
    "build_experiment",
    "list_experiments",
    "register_experiment",
    "resolve_experiment",
    "run_experiment",
]


EXPERIMENTS: dict[str, ExperimentSpec] = {}
"""Every experiment by its lower-case name, filled from :data:`EXPERIMENT_MODULES` below."""


def register_experiment(spec: ExperimentSpec) -> ExperimentSpec:
    """Add ``spec`` to :data:`EXPERIMENTS` under its (lower-case) name."""
    for key in ("num_runs", "num_rounds"):
        if key not in spec.defaults:
            raise ValueError(f"experiment {spec.name!r} has no default for {key!r}")
    EXPERIMENTS[spec.name.lower()] = spec
    return spec


def list_experiments() -> list[str]:
    """Names of every registered experiment."""
    return list(EXPERIMENTS)


def resolve_experiment(name: str) -> str:
    key = str(name).lower()
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment is {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    return key


def build_experiment(name: str, *, agents=None, **options) -> tuple[Environment, list[Agent], dict]:
    """The environment, the agents and the resolved settings of a named experiment.

    ``options`` left as None take the experiment's defaults; an option the experiment does
    not take raises a ValueError that lists the ones it does.
    """
    spec = EXPERIMENTS[resolve_experiment(name)]
    unknown = sorted(k for k, v in options.items() if v is not None and k not in spec.defaults)
    if unknown:
        raise ValueError(
            f"experiment {spec.name!r} does not take {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(spec.defaults))}"
        )
    settings = dict(spec.defaults)
    settings.update({k: v for k, v in options.items() if v is not None})
    check_positive_ints(settings, ("num_runs", "num_rounds"))
    env, built = spec.build(settings, None if agents is None else tuple(agents))
    settings["agents"] = [a.name for a in built]
    settings["experiment"] = spec.name
    return env, built, settings


def run_experiment(name: str, *, seed: int = 0, progress: bool = True, **kw) -> ExperimentResult:
    """Run every agent of an experiment on the same problems (common random numbers)."""
    spec = EXPERIMENTS[resolve_experiment(name)]
    env, agents, settings = build_experiment(name, **kw)
    key = jax.random.key(seed)
    results, walls = {}, {}
    t0 = time.perf_counter()
    problems = draw_problems(key, env, settings["num_runs"])
    jax.block_until_ready(problems)
    settings["draw_seconds"] = time.perf_counter() - t0
    metrics: dict | None = None if spec.metrics is None else {}
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
            checkpoints=settings.get("checkpoints", ()),
        )
        jax.block_until_ready(res.regret)
        walls[agent.name] = time.perf_counter() - t0
        if spec.metrics is not None:
            for metric, curve in spec.metrics(settings, env, problems, agent, res).items():
                metrics.setdefault(metric, {})[agent.name] = curve
        results[agent.name] = res._replace(checkpoint_states={})  # keep memory bounded
    settings["seed"] = seed
    return ExperimentResult(spec.name, settings, results, walls, metrics)


#: The experiment modules, in the order their experiments are listed.
EXPERIMENT_MODULES = (mets, hcsa, dts, movielens, supervised)

for _module in EXPERIMENT_MODULES:
    _module.register_experiments(register_experiment)
