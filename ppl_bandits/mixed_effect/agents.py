r"""Agents of the mixed-effect family, each an :class:`~ppl_bandits.core.types.Agent` of pure
functions.

==============  =====================================================================
name            what it samples or maximizes
==============  =====================================================================
meTS-Lin        Ψ ~ Q, then θ_i ~ P_i(· | Ψ) (exact, Gaussian rewards)
meTS-Lin-Fa     as meTS-Lin with a factored Q (variant "mean-field" or "published")
meTS-GLM        meTS with Laplace likelihood terms for logistic rewards
meTS-GLM-Fa     meTS-GLM with a factored Q
HierTS          meTS on the one-effect hierarchy of Hong et al. (2022)
LinTS           independent per-action Gaussian posteriors under the marginal prior
GLM-TS          LinTS with Laplace likelihood terms (logistic rewards)
LinUCB          OFUL (Abbasi-Yadkori et al. 2011), per action, marginal-prior regularizer
UCB-GLM         UCB-GLM (Li, Lu, Zhou 2017), per action
==============  =====================================================================

Every agent is built by a factory returning ``Agent(name, init, act, update)``:
``init(key, prior)`` reads the problem's :class:`~models.mixed_effect.MixedEffectPrior`,
``act(key, state, contexts)`` returns the action for the (K, d) contexts of the round and
``update(key, state, contexts, action, reward)`` returns the new state. Per round the
meTS agents cost O(L³d³ + K L d²): only the played action's cached terms are recomputed
(O(L²d² + d³)) and the effect precision is updated in place, so the cost is linear in K.

The logistic agents keep the history in a buffer of ``horizon`` rounds and re-expand
only the played action's likelihood each round (Newton, warm-started; see
:mod:`ppl_bandits.core.laplace`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from models.mixed_effect import MixedEffectPrior, hierarchical_prior, mixing_matrices
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
from ppl_bandits.core.linalg import block_diag, chol_inverse, inverse_and_sqrt, sym
from ppl_bandits.core.types import Agent
from ppl_bandits.mixed_effect.posterior import (
    FACTORED_VARIANTS,
    action_terms,
    factored_from_natural,
    marginal_prior,
)

__all__ = [
    "MeTSState",
    "hier_ts",
    "hierts_prior",
    "mets",
    "mets_newton_failures",
    "mets_posterior",
    "sample_actions",
    "sample_effects",
]


class MeTSState(NamedTuple):
    """State of the meTS agents. Only the played action's rows change in a round."""

    G: jax.Array
    """(K, d, d) likelihood precision per action (σ⁻²ΣXXᵀ, or the Laplace H)."""
    B: jax.Array
    """(K, d) likelihood natural mean per action."""
    count: jax.Array
    """(K,) rounds per action."""
    P: jax.Array
    """(K, d, d) precision of action i's observation of M_i Ψ."""
    q: jax.Array
    """(K, d) natural mean of that observation."""
    eff_prec: jax.Array
    """(Ld, Ld) effect posterior precision Σ_Ψ⁻¹ + Σ_i M_iᵀ P_i M_i."""
    eff_nat: jax.Array
    """(Ld,) effect posterior natural mean Σ_Ψ⁻¹μ_Ψ + Σ_i M_iᵀ q_i."""
    cond_sqrt: jax.Array
    """(K, d, d) square root R_i of Σ̃_i = (S_i + G_i)⁻¹ (R_i R_iᵀ = Σ̃_i)."""
    gain: jax.Array
    """(K, d, Ld) Σ̃_i S_i M_i: the conditional mean of θ_i is gain_i Ψ + shift_i."""
    shift: jax.Array
    """(K, d) Σ̃_i B_i."""
    S: jax.Array
    """(K, d, d) prior precision Σ_{0,i}⁻¹."""
    M: jax.Array
    """(K, d, Ld) mixing matrices."""
    noise_sd: jax.Array
    """() reward noise σ assumed by the Gaussian likelihood."""
    theta0: jax.Array
    """(K, d) Laplace expansion points (logistic; zeros otherwise)."""
    marg_mean: jax.Array
    """(K, d) marginal prior means (the Laplace expansion prior)."""
    marg_prec: jax.Array
    """(K, d, d) marginal prior precisions."""
    history: History | None
    """Round buffer (logistic agents), else None."""
    newton_failures: jax.Array
    """() number of updates whose Newton iteration did not converge."""


def _refresh_action(state: MeTSState, a, G_a, B_a) -> MeTSState:
    # The identities of ppl_bandits.mixed_effect.posterior.action_terms, with the square root of
    # Σ̃_a taken from the same factorization.
    S_a = state.S[a]
    cond_cov, cond_sqrt, _ = inverse_and_sqrt(S_a + G_a)
    SC = S_a @ cond_cov
    P_a = SC @ G_a
    P_a = 0.5 * (P_a + P_a.T)
    q_a = SC @ B_a
    Ma = state.M[a]
    dP = P_a - state.P[a]
    dq = q_a - state.q[a]
    eff_prec = state.eff_prec + Ma.T @ dP @ Ma
    eff_prec = 0.5 * (eff_prec + eff_prec.T)
    return state._replace(
        G=state.G.at[a].set(G_a),
        B=state.B.at[a].set(B_a),
        P=state.P.at[a].set(P_a),
        q=state.q.at[a].set(q_a),
        eff_prec=eff_prec,
        eff_nat=state.eff_nat + Ma.T @ dq,
        cond_sqrt=state.cond_sqrt.at[a].set(cond_sqrt),
        gain=state.gain.at[a].set(SC.T @ Ma),
        shift=state.shift.at[a].set(cond_cov @ B_a),
    )


def _mets_init(prior: MixedEffectPrior, likelihood: str, horizon):
    K, _, d, _ = prior.mixing.shape
    dtype = prior.mu_psi.dtype
    S = chol_inverse(prior.sigma0)
    M = mixing_matrices(prior)
    sigma_psi_inv = chol_inverse(prior.sigma_psi)
    marg_mean, marg_cov = marginal_prior(prior)
    G = jnp.zeros((K, d, d), dtype)
    B = jnp.zeros((K, d), dtype)
    terms = action_terms(S, G, B)  # P = 0, q = 0
    return MeTSState(
        G=G,
        B=B,
        count=jnp.zeros((K,), jnp.int32),
        P=terms.P,
        q=terms.q,
        eff_prec=sigma_psi_inv,
        eff_nat=sigma_psi_inv @ prior.mu_psi,
        cond_sqrt=inverse_and_sqrt(S + G)[1],
        gain=jnp.einsum("kij,kjl,kle->kie", terms.cond_cov, S, M),
        shift=jnp.zeros((K, d), dtype),
        S=S,
        M=M,
        noise_sd=prior.noise_sd,
        theta0=marg_mean,
        marg_mean=marg_mean,
        marg_prec=chol_inverse(marg_cov),
        history=history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def sample_effects(key, state: MeTSState, factored, L: int, d: int):
    if factored is None:
        # Λ̄ = L Lᵀ: Ψ = L⁻ᵀ(L⁻¹η + z) has mean Λ̄⁻¹η and covariance Λ̄⁻¹.
        chol = jnp.linalg.cholesky(state.eff_prec)
        z = jax.random.normal(key, state.eff_nat.shape, state.eff_nat.dtype)
        w = solve_triangular(chol, state.eff_nat, lower=True)
        return solve_triangular(chol.T, w + z, lower=False)
    fac = factored_from_natural(state.eff_prec, state.eff_nat, L, d, factored)
    z = jax.random.normal(key, fac.mean.shape, fac.mean.dtype)
    return (fac.mean + jnp.einsum("lij,lj->li", jnp.linalg.cholesky(fac.cov), z)).reshape(-1)


def sample_actions(key, state: MeTSState, psi):
    z = jax.random.normal(key, state.shift.shape, state.shift.dtype)
    return (
        jnp.einsum("kde,e->kd", state.gain, psi)
        + state.shift
        + jnp.einsum("kij,kj->ki", state.cond_sqrt, z)
    )


def mets_posterior(state: MeTSState, factored: str | None = None) -> GaussianClaim:
    r"""The Gaussian over (Ψ, θ_1, ..., θ_K) that a meTS-family agent samples from.

    Sites ``(("psi", (L*d,)), ("theta", (K, d)))``: Ψ ~ N(Λ̄⁻¹η, Λ̄⁻¹) (or, with
    ``factored``, the product of the per-effect factors of
    :func:`~ppl_bandits.mixed_effect.posterior.factored_from_natural`) and
    θ_i | Ψ ~ N(gain_i Ψ + shift_i, R_i R_iᵀ), so that

    .. math::

        \operatorname{Cov}(\Psi, \theta) = C_\Psi A^\top, \qquad
        \operatorname{Cov}(\theta) = A C_\Psi A^\top + \operatorname{blockdiag}(R_i R_i^\top),

    with :math:`A` the stacked gains. One run's state (no leading run axis); ``jax.vmap``
    it over runs. This is the ``posterior`` of every agent :func:`mets` builds.

    >>> from models.mixed_effect import fig2_prior
    >>> agent = mets()
    >>> claim = agent.posterior(agent.init(jax.random.key(0), fig2_prior(jax.random.key(1), 4)))
    >>> claim.sites, claim.cov.shape
    ((('psi', (6,)), ('theta', (4, 2))), (14, 14))
    """
    prec, nat = state.eff_prec, state.eff_nat
    K, d, Ld = state.gain.shape
    if factored is None:
        chol = jnp.linalg.cholesky(prec)
        cov_psi = sym(chol_inverse(prec))
        m_psi = cho_solve((chol, True), nat)
    else:
        fac = factored_from_natural(prec, nat, Ld // d, d, factored)
        m_psi = fac.mean.reshape(-1)
        cov_psi = block_diag(sym(fac.cov))
    A = state.gain.reshape(K * d, Ld)
    m_theta = A @ m_psi + state.shift.reshape(-1)
    cond = block_diag(state.cond_sqrt @ jnp.swapaxes(state.cond_sqrt, -1, -2))
    cross = A @ cov_psi
    cov = jnp.block([[cov_psi, cross.T], [cross, cross @ A.T + cond]])
    return GaussianClaim(
        jnp.concatenate([m_psi, m_theta]), sym(cov), (("psi", (Ld,)), ("theta", (K, d)))
    )


def mets_newton_failures(state: MeTSState) -> jax.Array:
    """() number of updates whose Newton iteration did not converge (0 for Gaussian rewards)."""
    return state.newton_failures


def mets(
    likelihood: str = "gaussian",
    *,
    factored: str | None = None,
    horizon: int | None = None,
    prior_map=None,
    name: str | None = None,
    newton_tol: float = NEWTON_TOL,
    newton_max_iter: int = NEWTON_MAX_ITER,
) -> Agent:
    """Mixed-effect Thompson sampling (Aouali, Kveton, Katariya 2023, Algorithm 1).

    Parameters
    ----------
    likelihood : {"gaussian", "logistic"}
        "gaussian" gives meTS-Lin (exact posteriors); "logistic" gives meTS-GLM with the
        Laplace likelihood terms of :mod:`ppl_bandits.core.laplace`.
    factored : {None, "mean-field", "published"}
        None samples Ψ from the exact joint effect posterior; otherwise each effect is
        sampled from its own Gaussian (meTS-Fa, paper App. E.1) with the named mean.
    horizon : int
        Number of rounds (logistic only: sizes the history buffer).
    prior_map : callable, optional
        Maps the problem's prior to the prior the agent uses (HierTS uses this).

    Examples
    --------
    >>> from models.mixed_effect import fig2_prior
    >>> agent = mets()
    >>> prior = fig2_prior(jax.random.key(0), 10)
    >>> state = agent.init(jax.random.key(1), prior)
    >>> x = jnp.ones((10, 2))
    >>> a = agent.act(jax.random.key(2), state, x)
    >>> state = agent.update(jax.random.key(3), state, x, a, 1.0)
    >>> int(state.count.sum())
    1
    """
    check_likelihood(likelihood, horizon)
    if factored is not None and factored not in FACTORED_VARIANTS:
        raise ValueError(f"factored is {factored!r}; expected None or one of {FACTORED_VARIANTS}")
    if name is None:
        base = "meTS-Lin" if likelihood == "gaussian" else "meTS-GLM"
        name = base if factored is None else f"{base}-Fa"

    def init(key, prior):
        del key
        prior = prior_map(prior) if prior_map is not None else prior
        return _mets_init(prior, likelihood, horizon)

    def act(key, state, contexts):
        k_psi, k_theta = jax.random.split(key)
        L = state.M.shape[2] // state.M.shape[1]
        psi = sample_effects(k_psi, state, factored, L, state.M.shape[1])
        theta = sample_actions(k_theta, state, psi)
        return jnp.argmax(jnp.sum(contexts * theta, axis=-1))

    def update(key, state, contexts, action, reward):
        del key
        x = contexts[action]
        count = state.count.at[action].add(1)
        if likelihood == "gaussian":
            G_a, B_a = gaussian_step(state.G[action], state.B[action], x, reward, state.noise_sd)
            return _refresh_action(state._replace(count=count), action, G_a, B_a)
        hist = history_add(state.history, x, action, reward)
        lap = refit_laplace(
            hist,
            action,
            state.marg_mean[action],
            state.marg_prec[action],
            state.theta0[action],
            newton_tol,
            newton_max_iter,
        )
        state = state._replace(
            count=count,
            history=hist,
            theta0=state.theta0.at[action].set(lap.point.mode),
            newton_failures=state.newton_failures + (~lap.point.converged).astype(jnp.int32),
        )
        return _refresh_action(state, action, lap.H, lap.b)

    return Agent(name, init, act, update, functools.partial(mets_posterior, factored=factored))


def hier_ts(
    likelihood: str = "gaussian",
    *,
    psi_var: float = 3.0,
    horizon: int | None = None,
    name: str = "HierTS",
) -> Agent:
    """HierTS (Hong et al. 2022): one shared effect ψ ~ N(0, psi_var I), θ_i | ψ ~ N(ψ, Σ_0).

    meTS on that one-effect prior (its Σ_0 and σ are the problem's). The paper's synthetic
    setting uses psi_var = 3; the authors' code divides it by L (psi_var = 3 / L). With
    ``likelihood="gaussian"`` on logistic problems it is the linear HierTS the paper ran.
    """

    return mets(
        likelihood,
        horizon=horizon,
        prior_map=lambda prior: hierts_prior(prior, psi_var),
        name=name,
    )


def hierts_prior(prior: MixedEffectPrior, psi_var: float = 3.0) -> MixedEffectPrior:
    """The prior HierTS assumes on a mixed-effect problem: one effect, every b_i = 1."""
    K, _, d, _ = prior.mixing.shape
    return hierarchical_prior(
        K,
        d,
        psi_var=psi_var,
        sigma0=prior.sigma0,
        noise_sd=prior.noise_sd,
        dtype=prior.mu_psi.dtype,
    )
