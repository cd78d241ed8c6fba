"""Per-action baselines of the mixed-effect family (Aouali, Kveton, Katariya 2023): LinTS, GLM-TS,
LinUCB (OFUL) and UCB-GLM, each with independent per-action posteriors under the marginal
prior.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from models.mixed_effect import MixedEffectPrior
from ppl_bandits.core.claims import GaussianClaim
from ppl_bandits.core.laplace import NEWTON_MAX_ITER, NEWTON_TOL
from ppl_bandits.core.likelihood import (
    History,
    check_likelihood,
    gaussian_step,
    history_add,
    history_init,
    refit_laplace,
)
from ppl_bandits.core.linalg import block_diag, inverse_and_sqrt, sym
from ppl_bandits.core.types import Agent
from ppl_bandits.mixed_effect.posterior import marginal_prior

__all__ = [
    "IndependentState",
    "glm_ts",
    "independent_newton_failures",
    "independent_posterior",
    "lin_ts",
    "lin_ucb",
    "ucb_glm",
]


class IndependentState(NamedTuple):
    """State of the per-action baselines (LinTS, GLM-TS, LinUCB, UCB-GLM)."""

    prior_mean: jax.Array
    """(K, d) marginal prior mean of θ_i."""
    prior_prec: jax.Array
    """(K, d, d) marginal prior precision."""
    G: jax.Array
    """(K, d, d) likelihood precision per action (σ⁻²ΣXXᵀ, or the Laplace H)."""
    B: jax.Array
    """(K, d) likelihood natural mean per action."""
    count: jax.Array
    """(K,) rounds per action."""
    mean: jax.Array
    """(K, d) posterior mean (the MAP for logistic rewards)."""
    sqrt: jax.Array
    """(K, d, d) square root R_i of the posterior covariance (prior_prec + G)⁻¹."""
    prior_logdet: jax.Array
    """(K,) log det(prior_prec)."""
    logdet_ratio: jax.Array
    """(K,) log det(prior_prec + G) - log det(prior_prec) (OFUL radius)."""
    gram_inv: jax.Array
    """(K, d, d) V_i⁻¹ with V_i = prior_prec + Σ x xᵀ unweighted (UCB-GLM), Sherman–Morrison."""
    noise_sd: jax.Array
    """() reward noise σ."""
    history: History | None
    """Round buffer (logistic agents), else None."""
    newton_failures: jax.Array
    """() number of Newton fits that did not converge."""


def _indep_init(prior: MixedEffectPrior, likelihood: str, horizon) -> IndependentState:
    K, _, d, _ = prior.mixing.shape
    dtype = prior.mu_psi.dtype
    mean, cov = marginal_prior(prior)
    prec, _, neg_logdet = inverse_and_sqrt(cov)
    return IndependentState(
        prior_mean=mean,
        prior_prec=prec,
        G=jnp.zeros((K, d, d), dtype),
        B=jnp.zeros((K, d), dtype),
        count=jnp.zeros((K,), jnp.int32),
        mean=mean,
        sqrt=jnp.linalg.cholesky(cov),
        prior_logdet=-neg_logdet,
        logdet_ratio=jnp.zeros((K,), dtype),
        gram_inv=cov,
        noise_sd=prior.noise_sd,
        history=history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def _indep_refresh(state: IndependentState, a, G_a, B_a) -> IndependentState:
    P0 = state.prior_prec[a]
    cov, sqrt, logdet = inverse_and_sqrt(P0 + G_a)
    mean = cov @ (P0 @ state.prior_mean[a] + B_a)
    return state._replace(
        G=state.G.at[a].set(G_a),
        B=state.B.at[a].set(B_a),
        mean=state.mean.at[a].set(mean),
        sqrt=state.sqrt.at[a].set(sqrt),
        logdet_ratio=state.logdet_ratio.at[a].set(logdet - state.prior_logdet[a]),
    )


def _indep_update(likelihood: str, newton_tol, newton_max_iter):
    def update(key, state: IndependentState, contexts, action, reward):
        del key
        x = contexts[action]
        Vx = state.gram_inv[action] @ x
        state = state._replace(
            count=state.count.at[action].add(1),
            gram_inv=state.gram_inv.at[action].add(-jnp.outer(Vx, Vx) / (1.0 + x @ Vx)),
        )
        if likelihood == "gaussian":
            G_a, B_a = gaussian_step(state.G[action], state.B[action], x, reward, state.noise_sd)
            return _indep_refresh(state, action, G_a, B_a)
        hist = history_add(state.history, x, action, reward)
        lap = refit_laplace(
            hist,
            action,
            state.prior_mean[action],
            state.prior_prec[action],
            state.mean[action],
            newton_tol,
            newton_max_iter,
        )
        state = state._replace(
            history=hist,
            newton_failures=state.newton_failures + (~lap.point.converged).astype(jnp.int32),
        )
        return _indep_refresh(state, action, lap.H, lap.b)

    return update


def independent_posterior(state: IndependentState) -> GaussianClaim:
    """The per-action Gaussians N(mean_i, R_i R_iᵀ) of LinTS, GLM-TS, LinUCB and UCB-GLM.

    One site ``("theta", (K, d))`` with a block-diagonal covariance (nothing is shared
    between actions). For the UCB agents this is the Gaussian their index is built on
    (mean and posterior covariance under the marginal prior), not a sampler.
    """
    cov = state.sqrt @ jnp.swapaxes(state.sqrt, -1, -2)
    K, d = state.mean.shape
    return GaussianClaim(state.mean.reshape(-1), sym(block_diag(cov)), (("theta", (K, d)),))


def independent_newton_failures(state: IndependentState) -> jax.Array:
    """() number of Newton fits that did not converge (0 for Gaussian rewards)."""
    return state.newton_failures


def _indep_agent(name, likelihood, horizon, act, newton_tol, newton_max_iter) -> Agent:
    check_likelihood(likelihood, horizon)

    def init(key, prior):
        del key
        return _indep_init(prior, likelihood, horizon)

    update = _indep_update(likelihood, newton_tol, newton_max_iter)
    return Agent(name, init, act, update, independent_posterior)


def _ts_act(key, state: IndependentState, contexts):
    z = jax.random.normal(key, state.mean.shape, state.mean.dtype)
    theta = state.mean + jnp.einsum("kij,kj->ki", state.sqrt, z)
    return jnp.argmax(jnp.sum(contexts * theta, axis=-1))


def _width(state: IndependentState, contexts):
    """sqrt(xᵢᵀ Cᵢ xᵢ) with Cᵢ the posterior covariance, for every action."""
    v = jnp.einsum("kji,kj->ki", state.sqrt, contexts)  # Rᵀx, |Rᵀx|² = xᵀCx
    return jnp.sqrt(jnp.sum(v**2, axis=-1))


def lin_ts(*, name: str = "LinTS") -> Agent:
    """LinTS: independent Gaussian posteriors per action under the marginal prior.

    θ_i ~ N(M_i μ_Ψ, Σ_{0,i} + M_i Σ_Ψ M_iᵀ): the baseline knows as much about each
    action as meTS does, but shares nothing between actions.
    """
    return _indep_agent(name, "gaussian", None, _ts_act, NEWTON_TOL, NEWTON_MAX_ITER)


def glm_ts(
    *, horizon: int, name: str = "GLM-TS", newton_tol=NEWTON_TOL, newton_max_iter=NEWTON_MAX_ITER
) -> Agent:
    """GLM-TS: LinTS with the Laplace approximation of each action's logistic posterior."""
    return _indep_agent(name, "logistic", horizon, _ts_act, newton_tol, newton_max_iter)


def lin_ucb(*, delta: float = 0.01, norm_bound: float | None = None, name="LinUCB") -> Agent:
    r"""OFUL (Abbasi-Yadkori, Pál, Szepesvári 2011, Theorem 2), one model per action.

    Regularized by the marginal prior (precision :math:`\Lambda_{0,i}`, mean :math:`m_i`);
    with :math:`V_i = \sigma^2(\Lambda_{0,i} + G_i)` the confidence ellipsoid is
    :math:`\|\hat\theta_i-\theta_i\|_{V_i} \le \sigma\big(\sqrt{2\log(1/\delta) +
    \log\det(\Lambda_{0,i}+G_i) - \log\det\Lambda_{0,i}} + S\big)`, where
    :math:`S \ge \|\theta_i - m_i\|_{\Lambda_{0,i}}`. The index is

    .. math::

        x_i^\top\hat\theta_i + \Big(\sqrt{2\log\tfrac1\delta + \log\tfrac{\det(\Lambda_{0,i}+G_i)}
        {\det\Lambda_{0,i}}} + S\Big)\sqrt{x_i^\top(\Lambda_{0,i}+G_i)^{-1}x_i}.

    ``norm_bound`` is S; by default :math:`\sqrt d + \sqrt{2\log(1/\delta)}`, which bounds
    the prior-whitened norm with probability at least 1 − δ under the prior.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta is {delta}; expected a number in (0, 1)")

    def act(key, state: IndependentState, contexts):
        del key
        d = contexts.shape[-1]
        S = (
            norm_bound
            if norm_bound is not None
            else math.sqrt(d) + math.sqrt(2 * math.log(1 / delta))
        )
        radius = jnp.sqrt(2 * math.log(1 / delta) + state.logdet_ratio) + S
        ucb = jnp.sum(contexts * state.mean, -1) + radius * _width(state, contexts)
        return jnp.argmax(ucb)

    return _indep_agent(name, "gaussian", None, act, NEWTON_TOL, NEWTON_MAX_ITER)


def ucb_glm(
    *,
    horizon: int,
    delta: float = 0.01,
    sub_gaussian: float = 0.5,
    kappa: float = 0.25,
    name: str = "UCB-GLM",
    newton_tol=NEWTON_TOL,
    newton_max_iter=NEWTON_MAX_ITER,
) -> Agent:
    r"""UCB-GLM (Li, Lu, Zhou 2017), one model per action.

    Index :math:`x_i^\top\hat\theta_i + \alpha\|x_i\|_{V_i^{-1}}` with
    :math:`V_i = \Lambda_{0,i} + \sum_s X_s X_s^\top` (unweighted, as in the paper) and
    :math:`\alpha = \frac{\sigma}{\kappa}\sqrt{\frac d2\log(1 + 2n/d) + \log\frac1\delta}`.
    :math:`\hat\theta_i` is the maximum-likelihood estimate penalized by the marginal prior
    (the paper's MLE needs an initial exploration phase to exist; the penalty replaces it).
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta is {delta}; expected a number in (0, 1)")

    def act(key, state: IndependentState, contexts):
        del key
        d = contexts.shape[-1]
        alpha = (
            sub_gaussian
            / kappa
            * math.sqrt(d / 2 * math.log(1 + 2 * horizon / d) + math.log(1 / delta))
        )
        width = jnp.sqrt(jnp.einsum("ki,kij,kj->k", contexts, state.gram_inv, contexts))
        return jnp.argmax(jnp.sum(contexts * state.mean, -1) + alpha * width)

    return _indep_agent(name, "logistic", horizon, act, newton_tol, newton_max_iter)
