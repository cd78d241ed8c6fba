r"""Synthetic mixed-effect environments whose true parameters come from the NumPyro model.

:func:`mixed_effect_environment` draws, per run, a prior (the paper's Fig. 2 setting by
default: fresh mixing weights b ~ U[-1, 1]) and then the true (Ψ, θ) from
:func:`models.mixed_effect.sample_mixed_effect_parameters`, i.e. from the prior predictive
of the same model that the audits condition on.

Contexts, each round:

- ``"shared"`` (default): one x_t ~ U[-1, 1]^d, the same for every action (the model of
  ``docs/maths/mets.md``).
- ``"pool"``: the authors' code: a pool of ``pool_size`` contexts ~ U[-1, 1]^d drawn once
  per run; every action gets its own context each round, drawn from the pool with
  replacement.

Expected rewards are x_iᵀθ_i (linear) or sigmoid(x_iᵀθ_i) (logistic); the runner's
regret is the expected regret max_i r_i − r_{A_t}, not the realized one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from models.mixed_effect import MixedEffectPrior, fig2_prior, sample_mixed_effect_parameters
from ppl_bandits.core.types import Environment

__all__ = ["CONTEXT_KINDS", "MixedEffectParams", "mixed_effect_environment"]

CONTEXT_KINDS = ("shared", "pool")
REWARDS = ("linear", "logistic")


class MixedEffectParams(NamedTuple):
    """True parameters of one run."""

    psi: jax.Array
    """(L*d,) effects."""
    theta: jax.Array
    """(K, d) action parameters."""
    pool: jax.Array
    """(pool_size, d) context pool (used by ``context="pool"``)."""
    noise_sd: jax.Array
    """() reward noise σ (linear rewards)."""


def mixed_effect_environment(
    num_actions: int = 100,
    num_effects: int = 3,
    dim: int = 2,
    *,
    reward: str = "linear",
    context: str = "shared",
    pool_size: int = 100,
    prior_fn=None,
) -> Environment:
    """A mixed-effect bandit environment.

    Parameters
    ----------
    num_actions, num_effects, dim : int
        K, L, d (each >= 1).
    reward : {"linear", "logistic"}
    context : {"shared", "pool"}
        See the module docstring.
    pool_size : int
        Size of the per-run context pool for ``context="pool"``.
    prior_fn : callable, optional
        ``prior_fn(key) -> MixedEffectPrior``; by default :func:`models.mixed_effect.fig2_prior`
        with fresh weights per run.

    Examples
    --------
    >>> env = mixed_effect_environment(10, 2, 3)
    >>> prior, params = env.draw(jax.random.key(0))
    >>> params.theta.shape, env.contexts(jax.random.key(1), params).shape
    ((10, 3), (10, 3))
    """
    for name, value in (
        ("num_actions", num_actions),
        ("num_effects", num_effects),
        ("dim", dim),
        ("pool_size", pool_size),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    if reward not in REWARDS:
        raise ValueError(f"reward is {reward!r}; expected one of {REWARDS}")
    if context not in CONTEXT_KINDS:
        raise ValueError(f"context is {context!r}; expected one of {CONTEXT_KINDS}")
    if prior_fn is None:

        def prior_fn(key):
            return fig2_prior(key, num_actions, num_effects, dim)

    def draw(key):
        k_prior, k_params, k_pool = jax.random.split(key, 3)
        prior: MixedEffectPrior = prior_fn(k_prior)
        psi, theta = sample_mixed_effect_parameters(k_params, prior)
        pool = jax.random.uniform(k_pool, (pool_size, dim), prior.mu_psi.dtype, -1.0, 1.0)
        return prior, MixedEffectParams(psi, theta, pool, prior.noise_sd)

    def contexts(key, params: MixedEffectParams, t=None):  # iid: the round index is unused
        dtype = params.theta.dtype
        if context == "shared":
            x = jax.random.uniform(key, (dim,), dtype, -1.0, 1.0)
            return jnp.broadcast_to(x, (num_actions, dim))
        idx = jax.random.randint(key, (num_actions,), 0, pool_size)
        return params.pool[idx]

    def mean_rewards(params: MixedEffectParams, ctx):
        z = jnp.sum(ctx * params.theta, axis=-1)
        return z if reward == "linear" else jax.nn.sigmoid(z)

    def sample_reward(key, params: MixedEffectParams, ctx, action):
        mean = mean_rewards(params, ctx)[action]
        if reward == "linear":
            return mean + params.noise_sd * jax.random.normal(key, (), mean.dtype)
        return jax.random.bernoulli(key, mean).astype(mean.dtype)

    name = f"mixed-effect-{reward}"
    return Environment(name, draw, contexts, mean_rewards, sample_reward)
