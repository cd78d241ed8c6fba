r"""Agents of the mixed-effect family, each an :class:`~ppl_bandits.types.Agent` of pure functions.

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
``init(key, prior)`` reads the problem's :class:`~ppl_bandits.spec.MixedEffectPrior`,
``act(key, state, contexts)`` returns the action for the (K, d) contexts of the round and
``update(key, state, contexts, action, reward)`` returns the new state. Per round the
meTS agents cost O(L³d³ + K L d²): only the played action's cached terms are recomputed
(O(L²d² + d³)) and the effect precision is updated in place, so the cost is linear in K.

The logistic agents keep the history in a buffer of ``horizon`` rounds and re-expand
only the played action's likelihood each round (Newton, warm-started; see
:mod:`ppl_bandits.laplace`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ppl_bandits.laplace import NEWTON_MAX_ITER, NEWTON_TOL, laplace_terms
from ppl_bandits.mixed_effect import (
    FACTORED_VARIANTS,
    _factored_from_natural,
    action_terms,
    chol_inverse,
)
from ppl_bandits.spec import MixedEffectPrior, hierarchical_prior, mixing_matrices
from ppl_bandits.types import Agent

__all__ = [
    "AGENT_NAMES",
    "History",
    "IndependentState",
    "MeTSState",
    "glm_ts",
    "hier_ts",
    "hierts_prior",
    "lin_ts",
    "lin_ucb",
    "make_agent",
    "marginal_prior",
    "mets",
    "resolve_agent_name",
    "ucb_glm",
]

LIKELIHOODS = ("gaussian", "logistic")


# --------------------------------------------------------------------------- history


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


def _history_init(horizon: int, d: int, dtype) -> History:
    return History(
        jnp.zeros((horizon, d), dtype),
        jnp.zeros((horizon,), dtype),
        -jnp.ones((horizon,), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def _history_add(h: History, x, a, y) -> History:
    a = jnp.asarray(a, h.a.dtype)  # actions may arrive as int64 under JAX_ENABLE_X64
    return History(h.X.at[h.t].set(x), h.y.at[h.t].set(y), h.a.at[h.t].set(a), h.t + 1)


def _refit(h: History, a, prior_mean, prior_prec, init, tol, max_iter):
    w = (h.a == a).astype(h.y.dtype)
    return laplace_terms(h.X, h.y, w, prior_mean, prior_prec, init, tol=tol, max_iter=max_iter)


def _inverse_and_sqrt(A):
    """For SPD ``A`` = L Lᵀ: A⁻¹ = L⁻ᵀ L⁻¹, its square root R = L⁻ᵀ (R Rᵀ = A⁻¹) and log det A.

    One Cholesky factorization and one triangular solve; R is all a sampler needs.
    """
    L = jnp.linalg.cholesky(A)
    eye = jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)
    Linv = solve_triangular(L, eye, lower=True)
    R = jnp.swapaxes(Linv, -1, -2)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return R @ Linv, R, logdet


def _gaussian_step(G_a, B_a, x, y, noise_sd):
    """One Gaussian-reward observation added to an action's (G, B): σ⁻²xxᵀ and σ⁻²xy.

    The single-action form of :func:`ppl_bandits.mixed_effect.update_stats`, shared by the
    meTS and the per-action agents.
    """
    prec = 1.0 / noise_sd**2
    return G_a + prec * jnp.outer(x, x), B_a + prec * y * x


def _check_likelihood(likelihood: str, horizon):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood is {likelihood!r}; expected one of {LIKELIHOODS}")
    if likelihood == "logistic" and (horizon is None or int(horizon) < 1):
        raise ValueError(
            f"horizon is {horizon!r}; logistic agents need the number of rounds (>= 1) "
            "to size their history buffer"
        )


def marginal_prior(prior: MixedEffectPrior):
    """Marginal prior of each θ_i.

    Mean M_i μ_Ψ (K, d) and covariance Σ_{0,i} + M_i Σ_Ψ M_iᵀ (K, d, d).
    """
    M = mixing_matrices(prior)
    mean = jnp.einsum("kde,e->kd", M, prior.mu_psi)
    cov = prior.sigma0 + jnp.einsum("kde,ef,kgf->kdg", M, prior.sigma_psi, M)
    return mean, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


# --------------------------------------------------------------------------- meTS


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
    # The identities of ppl_bandits.mixed_effect.action_terms, with the square root of
    # Σ̃_a taken from the same factorization.
    S_a = state.S[a]
    cond_cov, cond_sqrt, _ = _inverse_and_sqrt(S_a + G_a)
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
        cond_sqrt=_inverse_and_sqrt(S + G)[1],
        gain=jnp.einsum("kij,kjl,kle->kie", terms.cond_cov, S, M),
        shift=jnp.zeros((K, d), dtype),
        S=S,
        M=M,
        noise_sd=prior.noise_sd,
        theta0=marg_mean,
        marg_mean=marg_mean,
        marg_prec=chol_inverse(marg_cov),
        history=_history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def _sample_effects(key, state: MeTSState, factored, L: int, d: int):
    if factored is None:
        # Λ̄ = L Lᵀ: Ψ = L⁻ᵀ(L⁻¹η + z) has mean Λ̄⁻¹η and covariance Λ̄⁻¹.
        chol = jnp.linalg.cholesky(state.eff_prec)
        z = jax.random.normal(key, state.eff_nat.shape, state.eff_nat.dtype)
        w = solve_triangular(chol, state.eff_nat, lower=True)
        return solve_triangular(chol.T, w + z, lower=False)
    fac = _factored_from_natural(state.eff_prec, state.eff_nat, L, d, factored)
    z = jax.random.normal(key, fac.mean.shape, fac.mean.dtype)
    return (fac.mean + jnp.einsum("lij,lj->li", jnp.linalg.cholesky(fac.cov), z)).reshape(-1)


def _sample_actions(key, state: MeTSState, psi):
    z = jax.random.normal(key, state.shift.shape, state.shift.dtype)
    return (
        jnp.einsum("kde,e->kd", state.gain, psi)
        + state.shift
        + jnp.einsum("kij,kj->ki", state.cond_sqrt, z)
    )


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
        Laplace likelihood terms of :mod:`ppl_bandits.laplace`.
    factored : {None, "mean-field", "published"}
        None samples Ψ from the exact joint effect posterior; otherwise each effect is
        sampled from its own Gaussian (meTS-Fa, paper App. E.1) with the named mean.
    horizon : int
        Number of rounds (logistic only: sizes the history buffer).
    prior_map : callable, optional
        Maps the problem's prior to the prior the agent uses (HierTS uses this).

    Examples
    --------
    >>> from ppl_bandits.spec import fig2_prior
    >>> agent = mets()
    >>> prior = fig2_prior(jax.random.key(0), 10)
    >>> state = agent.init(jax.random.key(1), prior)
    >>> x = jnp.ones((10, 2))
    >>> a = agent.act(jax.random.key(2), state, x)
    >>> state = agent.update(jax.random.key(3), state, x, a, 1.0)
    >>> int(state.count.sum())
    1
    """
    _check_likelihood(likelihood, horizon)
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
        psi = _sample_effects(k_psi, state, factored, L, state.M.shape[1])
        theta = _sample_actions(k_theta, state, psi)
        return jnp.argmax(jnp.sum(contexts * theta, axis=-1))

    def update(key, state, contexts, action, reward):
        del key
        x = contexts[action]
        count = state.count.at[action].add(1)
        if likelihood == "gaussian":
            G_a, B_a = _gaussian_step(state.G[action], state.B[action], x, reward, state.noise_sd)
            return _refresh_action(state._replace(count=count), action, G_a, B_a)
        hist = _history_add(state.history, x, action, reward)
        lap = _refit(
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

    return Agent(name, init, act, update)


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


# --------------------------------------------------------------------------- independent arms


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
    prec, _, neg_logdet = _inverse_and_sqrt(cov)
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
        history=_history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def _indep_refresh(state: IndependentState, a, G_a, B_a) -> IndependentState:
    P0 = state.prior_prec[a]
    cov, sqrt, logdet = _inverse_and_sqrt(P0 + G_a)
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
            G_a, B_a = _gaussian_step(state.G[action], state.B[action], x, reward, state.noise_sd)
            return _indep_refresh(state, action, G_a, B_a)
        hist = _history_add(state.history, x, action, reward)
        lap = _refit(
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


def _indep_agent(name, likelihood, horizon, act, newton_tol, newton_max_iter) -> Agent:
    _check_likelihood(likelihood, horizon)

    def init(key, prior):
        del key
        return _indep_init(prior, likelihood, horizon)

    return Agent(name, init, act, _indep_update(likelihood, newton_tol, newton_max_iter))


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


# --------------------------------------------------------------------------- registry

AGENT_NAMES = (
    "meTS-Lin",
    "meTS-Lin-Fa",
    "meTS-GLM",
    "meTS-GLM-Fa",
    "HierTS",
    "LinTS",
    "LinUCB",
    "GLM-TS",
    "UCB-GLM",
)


def resolve_agent_name(name: str) -> str:
    """The canonical spelling of an agent name, matched case-insensitively.

    >>> resolve_agent_name("mets-lin")
    'meTS-Lin'
    """
    table = {n.lower(): n for n in AGENT_NAMES}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"agent is {name!r}; expected one of {', '.join(AGENT_NAMES)} (any case)"
        ) from None


def make_agent(name: str, *, horizon: int | None = None, factored_variant="mean-field", **kw):
    """Build an agent by its paper name (case-insensitive).

    ``horizon`` is needed by the logistic agents; ``factored_variant`` chooses the mean of
    the "-Fa" agents ("mean-field", the default, or "published").
    """
    canonical = resolve_agent_name(name)
    builders = {
        "meTS-Lin": lambda: mets("gaussian", **kw),
        "meTS-Lin-Fa": lambda: mets("gaussian", factored=factored_variant, **kw),
        "meTS-GLM": lambda: mets("logistic", horizon=horizon, **kw),
        "meTS-GLM-Fa": lambda: mets("logistic", factored=factored_variant, horizon=horizon, **kw),
        "HierTS": lambda: hier_ts(**kw),
        "LinTS": lambda: lin_ts(**kw),
        "LinUCB": lambda: lin_ucb(**kw),
        "GLM-TS": lambda: glm_ts(horizon=horizon, **kw),
        "UCB-GLM": lambda: ucb_glm(horizon=horizon, **kw),
    }
    return builders[canonical]()
