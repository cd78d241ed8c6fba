"""Likelihood bookkeeping shared by the families: per-action sufficient statistics (G, B), the
Gaussian-reward step, the history buffer and the Laplace refit of logistic agents.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from models.mixed_effect import MixedEffectPrior
from ppl_bandits.core.laplace import laplace_terms

__all__ = [
    "LIKELIHOODS",
    "History",
    "SufficientStats",
    "check_likelihood",
    "empty_stats",
    "gaussian_step",
    "history_add",
    "history_init",
    "refit_laplace",
    "stats_from_history",
    "update_stats",
]


class SufficientStats(NamedTuple):
    """Per-action sufficient statistics of the rewards (see module docstring)."""

    G: jax.Array
    """(K, d, d) precision of action i's likelihood, σ⁻² Σ X Xᵀ for Gaussian rewards."""
    B: jax.Array
    """(K, d) natural mean of action i's likelihood, σ⁻² Σ X Y for Gaussian rewards."""
    count: jax.Array
    """(K,) number of rounds in which action i was played."""


def empty_stats(prior: MixedEffectPrior) -> SufficientStats:
    """Statistics of no data: G = 0, B = 0, count = 0."""
    K, _, d, _ = prior.mixing.shape
    dtype = prior.mu_psi.dtype
    return SufficientStats(
        jnp.zeros((K, d, d), dtype), jnp.zeros((K, d), dtype), jnp.zeros((K,), jnp.int32)
    )


def update_stats(stats: SufficientStats, action, x, y, noise_sd) -> SufficientStats:
    """Add one Gaussian-reward observation of ``action``: O(d²).

    >>> from models.mixed_effect import fig2_prior
    >>> s = update_stats(empty_stats(fig2_prior(jax.random.key(0), 3)), 1,
    ...                  jnp.array([1.0, 2.0]), 3.0, 1.0)
    >>> s.B[1], s.count
    (Array([3., 6.], dtype=float32), Array([0, 1, 0], dtype=int32))
    """
    prec = 1.0 / noise_sd**2
    G = stats.G.at[action].add(prec * jnp.outer(x, x))
    B = stats.B.at[action].add(prec * y * x)
    return SufficientStats(G, B, stats.count.at[action].add(1))


def stats_from_history(prior: MixedEffectPrior, contexts, actions, rewards) -> SufficientStats:
    """Gaussian-reward statistics of a whole history (played contexts (n, d), actions, rewards)."""
    K = prior.mixing.shape[0]
    prec = 1.0 / prior.noise_sd**2
    G = jax.ops.segment_sum(prec * contexts[:, :, None] * contexts[:, None, :], actions, K)
    B = jax.ops.segment_sum(prec * contexts * rewards[:, None], actions, K)
    count = jax.ops.segment_sum(jnp.ones_like(actions, dtype=jnp.int32), actions, K)
    return SufficientStats(G.astype(prior.mu_psi.dtype), B.astype(prior.mu_psi.dtype), count)


LIKELIHOODS = ("gaussian", "logistic")


class History(NamedTuple):
    """Fixed-size buffer of the rounds seen so far (logistic agents re-fit from it)."""

    X: jax.Array
    """(horizon, d) played contexts; rows at and after ``t`` are zero."""
    y: jax.Array
    """(horizon,) rewards."""
    a: jax.Array
    """(horizon,) played actions; -1 marks an empty row."""
    t: jax.Array
    """() number of rounds stored."""


def history_init(horizon: int, d: int, dtype) -> History:
    return History(
        jnp.zeros((horizon, d), dtype),
        jnp.zeros((horizon,), dtype),
        -jnp.ones((horizon,), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def history_add(h: History, x, a, y) -> History:
    a = jnp.asarray(a, h.a.dtype)  # actions may arrive as int64 under JAX_ENABLE_X64
    return History(h.X.at[h.t].set(x), h.y.at[h.t].set(y), h.a.at[h.t].set(a), h.t + 1)


def refit_laplace(h: History, a, prior_mean, prior_prec, init, tol, max_iter):
    w = (h.a == a).astype(h.y.dtype)
    return laplace_terms(h.X, h.y, w, prior_mean, prior_prec, init, tol=tol, max_iter=max_iter)


def gaussian_step(G_a, B_a, x, y, noise_sd):
    """One Gaussian-reward observation added to an action's (G, B): σ⁻²xxᵀ and σ⁻²xy.

    The single-action form of :func:`ppl_bandits.core.likelihood.update_stats`, shared by the
    meTS and the per-action agents.
    """
    prec = 1.0 / noise_sd**2
    return G_a + prec * jnp.outer(x, x), B_a + prec * y * x


def check_likelihood(likelihood: str, horizon):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood is {likelihood!r}; expected one of {LIKELIHOODS}")
    if likelihood == "logistic" and (horizon is None or int(horizon) < 1):
        raise ValueError(
            f"horizon is {horizon!r}; logistic agents need the number of rounds (>= 1) "
            "to size their history buffer"
        )
