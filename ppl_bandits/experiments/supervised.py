r"""Supervised-to-bandit benchmark: classes as arms, reward 1 for the right class.

The data set is scikit-learn's built-in ``load_digits`` (1797 8×8 images, 10 classes;
it ships inside scikit-learn, so nothing is downloaded). A seeded stratified split gives a
pre-training half and a bandit half. On the pre-training half:

1. PCA to ``num_components`` features, standardised, plus an intercept: :math:`x \in
   \mathbb{R}^{p}`, :math:`p` = ``num_components`` + 1;
2. ``num_bootstrap`` ridge fits, each on ``subset`` random pre-training images, of the
   one-vs-rest least-squares class vectors
   :math:`\theta_a = (X^\top X + \lambda I)^{-1} X^\top \mathbb{1}[y = a]`, stacked into
   :math:`\theta = (\theta_1, \dots, \theta_K) \in \mathbb{R}^{Kp}`: samples of
   plausible parameters of the task;
3. a DDPM (:mod:`ppl_bandits.diffusion.ddpm`) on those samples: the prior of shared-parameter dTS
   (Aouali 2025), whose reward model is :math:`\varphi(x, a)^\top\theta` with
   :math:`\varphi(x, a) = e_a \otimes x`;
4. Gaussian moments of the same samples for the baselines: LinTS with each class's
   marginal :math:`\mathcal{N}(m_a, C_a)`, and HierTS (Hong et al. 2022) with one shared
   effect, :math:`\theta_a \mid \psi \sim \mathcal{N}(\psi, \Sigma_0)`, ψ ~ N(mean class
   vector, between-class covariance B) and :math:`\Sigma_0 = B + \bar C` (mean within-class
   bootstrap covariance).

Every run streams images drawn uniformly (with replacement) from the bandit half; each
round's context is the image's features, shared by the arms, and the expected reward of
arm :math:`a` is :math:`\mathbb{1}[a = y]` (the reward is that indicator), so the regret
of a round is 1 for a wrong class. All vectors are divided by one scalar ``scale`` (and the
features multiplied by it), an exact reparametrization that puts the DDPM's data on unit
scale. The Gaussian likelihood the agents assume (σ = ``noise_sd``) is misspecified for
0/1 rewards, as in the paper's use of classification data.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg

from models.mixed_effect import mixed_effect_prior
from ppl_bandits.core.types import Agent, Environment
from ppl_bandits.data.digits import SupervisedTask, supervised_task
from ppl_bandits.diffusion.agents import make_diffusion_agent
from ppl_bandits.diffusion.ddpm import ddpm_prior
from ppl_bandits.experiments.registry import ExperimentSpec
from ppl_bandits.mixed_effect.agents import mets
from ppl_bandits.mixed_effect.baselines import lin_ts

__all__ = [
    "SupervisedParams",
    "SupervisedPrior",
    "lifted",
    "register_experiments",
    "supervised_environment",
]


NOISE_SD = 0.5


class SupervisedPrior(NamedTuple):
    """What the agents are told; each reads its own field (see :func:`lifted`)."""

    diffusion: object
    """DDPM prior of the stacked θ (shared-parameter dTS)."""
    mixed: object
    """Per-class Gaussian marginals as a MixedEffectPrior (LinTS)."""
    hier: object
    """One shared effect (HierTS)."""


class SupervisedParams(NamedTuple):
    features: object
    """(n, p) bandit-half features."""
    labels: object
    """(n,) their classes."""


#: Environments already built, by their settings.
_ENVIRONMENTS: dict = {}


def _gaussian_priors(task: SupervisedTask, noise_sd: float, dtype):
    import jax.numpy as jnp

    K = task.num_classes
    p = task.features.shape[1]
    S = task.samples.reshape(-1, K, p)
    m = S.mean(0)  # (K, p)
    C = np.einsum("ska,skb->kab", S - m, S - m) / (S.shape[0] - 1)  # (K, p, p)
    eye = np.eye(K)
    mixed = mixed_effect_prior(
        jnp.asarray(m.reshape(-1), dtype),
        jnp.asarray(0.75 * scipy.linalg.block_diag(*C), dtype),
        weights=jnp.asarray(eye, dtype),
        sigma0=jnp.asarray(0.25 * C, dtype),
        noise_sd=noise_sd,
    )
    between = np.cov(m.T, ddof=1)
    hier = mixed_effect_prior(
        jnp.asarray(m.mean(0), dtype),
        jnp.asarray(between, dtype),
        weights=jnp.ones((K, 1), dtype),
        sigma0=jnp.asarray(between + C.mean(0), dtype),
        noise_sd=noise_sd,
    )
    return mixed, hier


def supervised_environment(task: SupervisedTask, *, noise_sd: float = NOISE_SD):
    """The bandit of a :class:`SupervisedTask` (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    if not (isinstance(noise_sd, int | float) and math.isfinite(noise_sd) and noise_sd > 0):
        raise ValueError(f"noise_sd is {noise_sd!r}; expected a positive number")
    key = ("env", id(task), noise_sd)
    if key in _ENVIRONMENTS:
        return _ENVIRONMENTS[key]
    K = task.num_classes
    n, p = task.features.shape

    def draw(key):
        del key
        dtype = jnp.result_type(float)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), task.params)
        diffusion = ddpm_prior(params, task.settings, K, noise_sd=noise_sd)
        mixed, hier = _gaussian_priors(task, noise_sd, dtype)
        prior = SupervisedPrior(diffusion, mixed, hier)
        return prior, SupervisedParams(
            jnp.asarray(task.features, dtype), jnp.asarray(task.labels, jnp.int32)
        )

    def contexts(key, params: SupervisedParams, t=None):
        j = jax.random.randint(key, (), 0, n)
        return jnp.broadcast_to(params.features[j], (K, p))

    def mean_rewards(params: SupervisedParams, ctx):
        j = jnp.argmin(jnp.sum((params.features - ctx[0]) ** 2, axis=1))
        return jax.nn.one_hot(params.labels[j], K, dtype=ctx.dtype)

    def reward(key, params, ctx, action):
        del key
        return mean_rewards(params, ctx)[action]

    env = Environment("supervised-digits", draw, contexts, mean_rewards, reward)
    _ENVIRONMENTS[key] = env
    return env


def lifted(agent, num_classes: int):
    r"""A shared-parameter agent on per-arm contexts: φ(x, a) = e_a ⊗ x_a, row a of (K, K p)."""
    import jax.numpy as jnp

    K = num_classes

    def phi(ctx):
        return (jnp.eye(K, dtype=ctx.dtype)[:, :, None] * ctx[:, None, :]).reshape(K, -1)

    def init(key, prior):
        return agent.init(key, prior.diffusion)

    def act(key, state, ctx):
        return agent.act(key, state, phi(ctx))

    def update(key, state, ctx, action, reward):
        return agent.update(key, state, phi(ctx), action, reward)

    return Agent(agent.name, init, act, update)


def _reading(agent, field):

    def init(key, prior):
        return agent.init(key, getattr(prior, field))

    return Agent(agent.name, init, agent.act, agent.update)


SUPERVISED_AGENTS = ("dTS-shared", "LinTS", "HierTS")


def make_supervised_agents(names, num_classes: int):
    """The benchmark's agents by name: dTS-shared (DDPM prior), LinTS, HierTS, meTS-Lin."""

    table = {
        "dts-shared": lambda: lifted(make_diffusion_agent("dTS-shared"), num_classes),
        "lints": lambda: _reading(lin_ts(), "mixed"),
        "hierts": lambda: _reading(mets("gaussian", name="HierTS"), "hier"),
        "mets-lin": lambda: _reading(mets("gaussian", name="meTS-Lin"), "mixed"),
    }
    out = []
    for n in names:
        if str(n).lower() not in table:
            raise ValueError(f"agent is {n!r}; expected one of dTS-shared, LinTS, HierTS, meTS-Lin")
        out.append(table[str(n).lower()]())
    return out


_DEFAULTS = {
    "num_rounds": 1000,
    "num_runs": 10,
    "num_components": 3,
    "num_bootstrap": 1000,
    "subset": 100,
    "ridge": 1.0,
    "epochs": 3000,
    "num_steps": 10,
    "hidden": 128,
    "noise_sd": NOISE_SD,
    "pretrain_seed": 0,
}


def _build(settings: dict, agents):
    task = supervised_task(
        num_components=settings["num_components"],
        num_bootstrap=settings["num_bootstrap"],
        subset=settings["subset"],
        ridge=float(settings["ridge"]),
        epochs=settings["epochs"],
        num_steps=settings["num_steps"],
        hidden=settings["hidden"],
        seed=settings["pretrain_seed"],
        progress=True,
    )
    settings["pretrain_accuracy"] = task.accuracy
    settings["pretrain_seconds"] = task.seconds
    env = supervised_environment(task, noise_sd=float(settings["noise_sd"]))
    names = SUPERVISED_AGENTS if agents is None else agents
    return env, make_supervised_agents(names, task.num_classes)


def register_experiments(register) -> None:
    """Register ``supervised-digits`` with ``register``."""

    register(
        ExperimentSpec(
            "supervised-digits",
            "digits classes as arms, reward 1 for the right class; dTS-shared, LinTS, HierTS",
            _DEFAULTS,
            _build,
            title_keys=("num_components",),
        )
    )
