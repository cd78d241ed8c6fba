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
per-action pool). Other modules add their experiments with :func:`register_experiment`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from ppl_bandits.runner import SimulationResult, draw_problems, simulate
from ppl_bandits.types import Agent, Environment

__all__ = [
    "EXPERIMENTS",
    "ExperimentResult",
    "ExperimentSpec",
    "build_experiment",
    "check_positive_ints",
    "cumulative_regret",
    "list_experiments",
    "mixed_effect_agents",
    "register_experiment",
    "resolve_experiment",
    "run_experiment",
]


class ExperimentSpec(NamedTuple):
    """A named experiment.

    ``defaults`` lists every option the experiment takes with its default (``num_runs``
    and ``num_rounds`` always). ``build(settings, agents)`` returns the environment and the
    agents; ``agents`` is None for the experiment's own list, or the names a user asked
    for. ``metrics(settings, env, problems, agent, result)``, if given, returns extra
    per-round curves ``{metric: (rounds, values)}`` with ``values`` of shape (runs, len(rounds)),
    written next to the regret by :mod:`ppl_bandits.report`.
    """

    name: str
    description: str
    defaults: dict
    build: Callable[[dict, Any], tuple[Environment, list[Agent]]]
    metrics: Callable[..., dict] | None = None
    title_keys: tuple[str, ...] = ("num_actions", "num_effects", "dim")


EXPERIMENTS: dict[str, ExperimentSpec] = {}


def register_experiment(spec: ExperimentSpec) -> ExperimentSpec:
    """Add ``spec`` to :data:`EXPERIMENTS` under its (lower-case) name."""
    for key in ("num_runs", "num_rounds"):
        if key not in spec.defaults:
            raise ValueError(f"experiment {spec.name!r} has no default for {key!r}")
    EXPERIMENTS[spec.name.lower()] = spec
    return spec


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


def list_experiments() -> list[str]:
    """Names of every registered experiment."""
    _register_builtin()
    return list(EXPERIMENTS)


def resolve_experiment(name: str) -> str:
    _register_builtin()
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


def cumulative_regret(result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    """Mean cumulative regret over runs and its standard error, per round."""
    cum = np.cumsum(np.asarray(result.regret, np.float64), axis=1)
    R = cum.shape[0]
    se = cum.std(axis=0, ddof=1) / np.sqrt(R) if R > 1 else np.full(cum.shape[1], np.nan)
    return cum.mean(axis=0), se


# --------------------------------------------------------------------------------------
# The mixed-effect experiments (Aouali et al. 2023, Fig. 2)
# --------------------------------------------------------------------------------------

_FIG2 = {
    "num_actions": 100,
    "num_effects": 3,
    "dim": 2,
    "num_rounds": 5000,
    "num_runs": 50,
    "context": "shared",
    "factored_variant": "mean-field",
}


def mixed_effect_agents(settings: dict, agents, default_agents) -> list[Agent]:
    """The meTS-family agents of an experiment: ``agents`` (names a user asked for) or
    ``default_agents``, built for ``settings["num_rounds"]`` and its factored variant."""
    from ppl_bandits.agents import make_agent, resolve_agent_name

    names = default_agents if agents is None else tuple(resolve_agent_name(a) for a in agents)
    return [
        make_agent(n, horizon=settings["num_rounds"], factored_variant=settings["factored_variant"])
        for n in names
    ]


def _mixed_effect_builder(reward: str, default_agents: tuple[str, ...]):
    def build(settings: dict, agents):
        from ppl_bandits.environments import mixed_effect_environment

        check_positive_ints(settings, ("num_actions", "num_effects", "dim"))
        if settings["factored_variant"] not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {settings['factored_variant']!r}; "
                "expected mean-field or published"
            )
        settings["reward"] = reward
        env = mixed_effect_environment(
            settings["num_actions"],
            settings["num_effects"],
            settings["dim"],
            reward=reward,
            context=settings["context"],
        )
        return env, mixed_effect_agents(settings, agents, default_agents)

    return build


_BUILTIN_STATE = "pending"


def _register_builtin() -> None:
    """Register the experiments of every module once (lazily, to keep imports light).

    A module that fails to import leaves the registry to be filled again on the next call
    (the error propagates); a module's registration may itself look up experiments.
    """
    global _BUILTIN_STATE
    if _BUILTIN_STATE != "pending":
        return
    _BUILTIN_STATE = "registering"
    try:
        _register_all()
    except BaseException:
        _BUILTIN_STATE = "pending"
        raise
    _BUILTIN_STATE = "done"


def _register_all() -> None:
    register_experiment(
        ExperimentSpec(
            "mets-linear",
            "paper Fig. 2 (left), Gaussian rewards",
            _FIG2,
            _mixed_effect_builder(
                "linear", ("meTS-Lin", "meTS-Lin-Fa", "HierTS", "LinTS", "LinUCB")
            ),
        )
    )
    register_experiment(
        ExperimentSpec(
            "mets-logistic",
            "paper Fig. 2 (right), logistic rewards",
            _FIG2,
            _mixed_effect_builder(
                "logistic", ("meTS-GLM", "meTS-GLM-Fa", "meTS-Lin", "HierTS", "GLM-TS", "UCB-GLM")
            ),
        )
    )
    import importlib

    for module in _EXPERIMENT_MODULES:
        importlib.import_module(module).register_experiments(register_experiment)


#: Modules with a ``register_experiments(register)`` function, imported on first use.
_EXPERIMENT_MODULES: tuple[str, ...] = (
    "ppl_bandits.linear_contextual",
    "ppl_bandits.dts_experiments",
    "ppl_bandits.movielens",
)
