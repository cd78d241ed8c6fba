r"""The diffusion Thompson sampling (dTS) experiments (Aouali, NeurIPS 2025, Sec. 5),
registered with :mod:`ppl_bandits.experiments.catalog`, and their ablations.

=====================  ==============================================================
experiment             setting
=====================  ==============================================================
dts-linear             linear links W_ℓ ~ U[−1, 1]^{d×d}, each column zeroed with
                       probability ``zero_prob``; K=100, L=2, d=5; dTS, HierTS-1,
                       HierTS-2, LinTS, LinUCB (``reward=logistic``: dTS-GLM, GLM-TS,
                       UCB-GLM)
dts-nonlinear          random 2-layer ReLU links (``hidden`` units); K=100, L=2, d=5;
                       dTS (the approximation), LinTS, LinUCB (logistic: dTS-GLM,
                       GLM-TS, UCB-GLM)
dts-linear-large       dts-linear at K=10⁴, L=4, d=20
dts-nonlinear-large    dts-nonlinear at K=10⁴, L=4, d=20
dts-swiss-roll         prior misspecification: true θ_a drawn from the 2-D Swiss roll,
                       the prior a DDPM pre-trained on ``pretrain_samples`` Swiss-roll
                       samples (or loaded from ``prior_dir``); K=100, d=2, L=20
                       diffusion steps; dTS, LinTS, LinUCB
=====================  ==============================================================

Common to all: Σ_ℓ = I (the DDPM's β_ℓ I for dts-swiss-roll), contexts x_t ~ U[−1, 1]^d
shared by the actions, reward noise σ = ``noise_sd`` = 1, n = 5000 rounds, 50 runs; the
problem (links and true parameters) is redrawn per run from the generative model. The
option ``num_effects`` (``--L`` on the command line) is L, the number of diffusion levels.
The per-action baselines are told each action's marginal prior
(:func:`ppl_bandits.diffusion.posterior.marginal_mixed_effect_prior`; moment-matched for neural
links), so they know as much about each action as dTS but share nothing.

Ablations over K, L, d, the horizon or the pre-training sample size run an experiment
once per value and write a table and a plot (:func:`run_ablation`)::

    python -m ppl_bandits.experiments.dts --experiment dts-linear --over K \
        --values 10,100,1000,10000 --runs 10 --rounds 1000 --out reports/dts-ablation-K
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from ppl_bandits.core.types import Agent, Environment
from ppl_bandits.diffusion.agents import make_diffusion_agent
from ppl_bandits.diffusion.ddpm import DDPMSettings, ddpm_prior, load_ddpm, train_ddpm, training_set
from ppl_bandits.diffusion.environment import diffusion_environment, fixed_prior_environment
from ppl_bandits.diffusion.posterior import marginal_mixed_effect_prior
from ppl_bandits.experiments.registry import ExperimentSpec, check_positive_ints
from ppl_bandits.mixed_effect.catalog import make_agent

__all__ = [
    "DTS_AGENT_NAMES",
    "make_dts_agent",
    "on_diffusion_prior",
    "register_experiments",
    "swiss_roll_environment",
]


#: Per-action baselines, told each action's marginal prior.
_BASELINES = ("LinTS", "LinUCB", "GLM-TS", "UCB-GLM")

#: Every agent name a dTS experiment accepts (case-insensitive).
DTS_AGENT_NAMES = ("dTS", "dTS-GLM", "HierTS-1", "HierTS-2", *_BASELINES)

_LINEAR_ONLY = ("HierTS-1", "HierTS-2")

_SMALL = {"num_actions": 100, "num_effects": 2, "dim": 5}

_LARGE = {"num_actions": 10_000, "num_effects": 4, "dim": 20}

_COMMON = {
    "num_rounds": 5000,
    "num_runs": 50,
    "reward": "linear",
    "noise_sd": 1.0,
}

_SWISS = {
    "num_actions": 100,
    "num_effects": 20,
    "dim": 2,
    "num_rounds": 5000,
    "num_runs": 50,
    "noise_sd": 1.0,
    "pretrain_samples": 1000,
    "pretrain_epochs": 20000,
    "pretrain_hidden": 64,
    "pretrain_seed": 0,
    "prior_dir": None,
}


def on_diffusion_prior(agent: Agent) -> Agent:
    """A per-action baseline that accepts a DiffusionPrior: its ``init`` is told the
    marginal prior of each action
    (:func:`~ppl_bandits.diffusion.posterior.marginal_mixed_effect_prior`)."""

    inner = agent.init

    def init(key, prior):
        return inner(key, marginal_mixed_effect_prior(prior, jax.random.fold_in(key, 7)))

    return agent._replace(init=init)


def make_dts_agent(name: str, *, horizon: int, neural: bool = False) -> Agent:
    """An agent of the dTS experiments by name (case-insensitive; :data:`DTS_AGENT_NAMES`).

    HierTS-1 and HierTS-2 apply to linear links only; ``neural`` refuses them by name.

    >>> make_dts_agent("lints", horizon=10).name
    'LinTS'
    """

    table = {n.lower(): n for n in DTS_AGENT_NAMES}
    canonical = table.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(f"agent is {name!r}; expected one of {', '.join(DTS_AGENT_NAMES)}")
    if neural and canonical in _LINEAR_ONLY:
        raise ValueError(f"agent is {canonical!r}; it applies to linear links only")
    if canonical in _BASELINES:
        return on_diffusion_prior(make_agent(canonical, horizon=horizon))
    return make_diffusion_agent(canonical, horizon=horizon)


def _check_common(settings: dict) -> None:
    check_positive_ints(settings, ("num_actions", "num_effects", "dim"))
    if settings["reward"] not in ("linear", "logistic"):
        raise ValueError(f"reward is {settings['reward']!r}; expected linear or logistic")
    sd = settings["noise_sd"]
    if not isinstance(sd, int | float) or not np.isfinite(sd) or sd <= 0:
        raise ValueError(f"noise_sd is {sd!r}; expected a finite number > 0")


def _agents(settings: dict, agents, default: tuple[str, ...], *, neural: bool) -> list[Agent]:
    names = default if agents is None else agents
    return [make_dts_agent(n, horizon=settings["num_rounds"], neural=neural) for n in names]


def _synthetic_builder(link: str):
    def build(settings: dict, agents):

        _check_common(settings)
        env = diffusion_environment(
            settings["num_actions"],
            settings["num_effects"],
            settings["dim"],
            link=link,
            reward=settings["reward"],
            zero_prob=settings.get("zero_prob", 0.5),
            hidden=settings.get("hidden", 16),
            noise_sd=settings["noise_sd"],
        )
        if settings["reward"] == "logistic":
            default = ("dTS-GLM", "GLM-TS", "UCB-GLM")
        elif link == "linear":
            default = ("dTS", "HierTS-1", "HierTS-2", "LinTS", "LinUCB")
        else:
            default = ("dTS", "LinTS", "LinUCB")
        return env, _agents(settings, agents, default, neural=link == "neural")

    return build


@functools.lru_cache(maxsize=16)
def _pretrained_swiss_roll(num_samples: int, num_steps: int, epochs: int, hidden: int, seed: int):
    """A DDPM pre-trained on Swiss-roll samples (cached: ablations reuse it)."""

    k_data, k_train = jax.random.split(jax.random.fold_in(jax.random.key(seed), 2024))
    data = training_set("swiss-roll", num_samples, k_data, dim=2)
    settings = DDPMSettings(dim=2, num_steps=num_steps, hidden=hidden)
    t0 = time.perf_counter()
    params, losses = train_ddpm(k_train, data, settings, epochs=epochs)
    jax.block_until_ready(losses)
    info = {
        "training_seconds": time.perf_counter() - t0,
        "final_loss": float(losses[-1]),
        "num_samples": num_samples,
        "epochs": epochs,
    }
    return params, settings, info


def swiss_roll_environment(
    num_actions: int, prior, *, noise_sd: float = 1.0, name: str = "swiss-roll"
) -> Environment:
    """True θ_a iid from the 2-D Swiss roll (:func:`ppl_bandits.diffusion.ddpm.training_set`);
    the agents are told ``prior`` (a DiffusionPrior for ``num_actions`` actions, e.g. a
    pre-trained DDPM's :func:`~ppl_bandits.diffusion.ddpm.ddpm_prior`). Contexts U[−1, 1]^2
    shared by the actions, rewards x_aᵀθ_a + N(0, noise_sd²).

    >>> from ppl_bandits.diffusion.ddpm import DDPMSettings, ddpm_prior
    >>> from models.diffusion import init_mlp
    >>> s = DDPMSettings(dim=2, num_steps=3, hidden=4)
    >>> env = swiss_roll_environment(5, ddpm_prior(init_mlp(jax.random.key(0), 2, 4), s, 5))
    >>> env.draw(jax.random.key(1))[1].theta.shape
    (5, 2)
    """

    K, d = int(num_actions), int(prior.dim)
    if prior.num_actions != K:
        raise ValueError(f"prior has {prior.num_actions} actions; expected num_actions={K}")
    if d != 2:
        raise ValueError(f"prior has dim {d}; the Swiss roll is 2-dimensional")

    def truth(key):
        return training_set("swiss-roll", K, key, dim=2)

    return fixed_prior_environment(prior, truth=truth, noise_sd=noise_sd, name=name)


def _swiss_roll_build(settings: dict, agents):

    settings.setdefault("reward", "linear")
    _check_common(settings)
    check_positive_ints(
        settings, ("pretrain_samples", "pretrain_epochs", "pretrain_hidden", "num_effects")
    )
    if settings["dim"] != 2:
        raise ValueError(f"dim is {settings['dim']!r}; the Swiss roll is 2-dimensional")
    if settings["prior_dir"]:
        params, ddpm_settings = load_ddpm(settings["prior_dir"])
        if ddpm_settings.dim != 2:
            raise ValueError(
                f"prior_dir {settings['prior_dir']!r} holds a DDPM of dim {ddpm_settings.dim}; "
                "expected 2 (the Swiss roll)"
            )
        # The loaded DDPM fixes L; the pre-training options were not used (recorded as null).
        settings["num_effects"] = ddpm_settings.num_steps
        for unused in ("pretrain_samples", "pretrain_epochs", "pretrain_hidden", "pretrain_seed"):
            settings[unused] = None
        settings["pretrain"] = {"prior_dir": str(settings["prior_dir"])}
    else:
        params, ddpm_settings, info = _pretrained_swiss_roll(
            int(settings["pretrain_samples"]),
            int(settings["num_effects"]),
            int(settings["pretrain_epochs"]),
            int(settings["pretrain_hidden"]),
            int(settings["pretrain_seed"]),
        )
        settings["pretrain"] = info
    settings["ddpm"] = ddpm_settings._asdict()
    prior = ddpm_prior(
        params, ddpm_settings, settings["num_actions"], noise_sd=settings["noise_sd"]
    )
    env = swiss_roll_environment(settings["num_actions"], prior, noise_sd=settings["noise_sd"])
    return env, _agents(settings, agents, ("dTS", "LinTS", "LinUCB"), neural=True)


def register_experiments(register) -> None:
    """Register the dTS experiments with ``register`` (an ExperimentSpec sink)."""
    keys = ("num_actions", "num_effects", "dim")
    for link, extra in (("linear", {"zero_prob": 0.5}), ("neural", {"hidden": 16})):
        base = "dts-linear" if link == "linear" else "dts-nonlinear"
        for suffix, size in (("", _SMALL), ("-large", _LARGE)):
            register(
                ExperimentSpec(
                    base + suffix,
                    f"dTS paper Sec. 5, {link} links, K={size['num_actions']}, "
                    f"L={size['num_effects']}, d={size['dim']}",
                    {**size, **_COMMON, **extra},
                    _synthetic_builder(link),
                    title_keys=keys,
                )
            )
    register(
        ExperimentSpec(
            "dts-swiss-roll",
            "dTS paper Sec. 5, prior misspecification: Swiss-roll parameters, DDPM prior",
            dict(_SWISS),
            _swiss_roll_build,
            title_keys=(*keys, "pretrain_samples"),
        )
    )
