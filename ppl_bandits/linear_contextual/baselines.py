r"""The N-arm linear contextual bandit: environments and baseline agents of the HCSA+TS family.

One parameter :math:`\theta^* \in \mathbb{R}^d` is shared by all arms; each round the
environment reveals an (N, d) context matrix and the reward of arm i is
:math:`Y = x_i^\top\theta^* + \eta`, :math:`\eta \sim N(0, \sigma^2)`. θ* is drawn from the
NumPyro model :func:`models.linear_bandit.linear_bandit_model` (or U(−1/√d, 1/√d)^d as in
the DRTS and HyRan papers).

Environments (:func:`hcsa_environment`, W. Kim 2025, Sec. 6):

- ``"iid"``: entries iid N(μ, 1), each context normalized to unit norm and scaled by
  U(a, b); with probability ``mask_prob`` the last ``mask_dims`` entries of every context
  are zeroed (missing features), one draw per round;
- ``"drift"`` (non-iid): the entry mean drifts, μ_t = μ + A sin(2π t / P) s with a random
  sign vector s per problem; needs the round index, ``contexts(key, params, t)``;
- ``"low_rank"`` (non-iid across arms, rank-deficient Gram): the contexts lie in a random
  ``rank``-dimensional subspace drawn per problem.

Agents (all ``(init, act, update)`` with NamedTuple states, jit- and vmap-compatible):
:func:`shared_lin_ts` ("LinTS-shared": conjugate Gaussian posterior, exploration scale v),
:func:`shared_lin_ucb` ("LinUCB-shared": OFUL, Abbasi-Yadkori, Pál, Szepesvári 2011),
:func:`drts` (Kim, Kim, Paik 2021), :func:`hy_ran` (Kim, Paik, Oh 2023), :func:`sup_lin_ucb`
(Chu, Li, Reyzin, Schapire 2011), :func:`uniform_random`, and HCSA+TS from
:mod:`ppl_bandits.linear_contextual.hcsa`. The shared-θ LinTS and LinUCB carry the suffix
"-shared"; the per-action "LinTS" and "LinUCB" of :mod:`ppl_bandits.mixed_effect.baselines`
are different algorithms.

Experiments (``ppl-bandits simulate hcsa``, ``hcsa-drift``, ``hcsa-low-rank``; see
:func:`register_experiments`): the six agents of :func:`hcsa_experiment_agents`, the
cumulative regret and the maximum prediction error :math:`\max_k |x_k^\top(\hat\theta_t -
\theta^*)|` (:func:`prediction_error_curve`) with the agents' estimates read by
:func:`point_estimate`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import log_ndtr

from models.linear_bandit import LinearBanditPrior
from ppl_bandits.core.claims import GaussianClaim
from ppl_bandits.core.linalg import chol_inverse, spd_solve, sym
from ppl_bandits.core.types import Agent
from ppl_bandits.linear_contextual.environment import check_int
from ppl_bandits.linear_contextual.hcsa import (
    check_action,
    check_contexts,
    check_positive,
    check_probability,
    check_reward,
    max_trials,
    prior_dim_dtype,
    serial_after,
)

__all__ = [
    "DRTSState",
    "HyRanState",
    "SharedLinTSState",
    "SharedLinUCBState",
    "SupLinUCBState",
    "UniformState",
    "drts",
    "drts_claim",
    "drts_regularizer",
    "drts_selection_probs",
    "estimate_claim",
    "hy_ran",
    "hy_ran_claim",
    "hy_ran_regularizer",
    "oful_radius",
    "shared_lin_ts",
    "shared_lin_ts_claim",
    "shared_lin_ts_posterior",
    "shared_lin_ucb",
    "shared_lin_ucb_claim",
    "sup_lin_ucb",
    "sup_lin_ucb_claim",
    "uniform_random",
]


def _prepare(state_dim: int, dtype, contexts):
    check_contexts(contexts, state_dim)
    return jnp.asarray(contexts, dtype)


def _prepare_update(state_dim: int, dtype, contexts, action, reward):
    check_contexts(contexts, state_dim)
    check_action(action, np.shape(contexts)[0])
    check_reward(reward)
    return jnp.asarray(contexts, dtype), jnp.asarray(reward, dtype)


def _chol_solve_and_widths(gram, moment, contexts):
    """(G⁻¹ m, diag(X G⁻¹ Xᵀ), log det G) with LAPACK calls in one dependent chain.

    One Cholesky factor, one forward solve of the stacked right-hand sides [Xᵀ | m] and one
    backward solve that needs its result: never two LAPACK calls at once (see
    :func:`ppl_bandits.linear_contextual.hcsa.serial_after`).
    """
    L = jnp.linalg.cholesky(gram)
    rhs = jnp.concatenate([contexts.T, moment[:, None]], axis=1)
    half = solve_triangular(L, rhs, lower=True)
    theta = solve_triangular(L.T, half[:, -1], lower=False)
    widths2 = jnp.sum(half[:, :-1] ** 2, axis=0)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return theta, widths2, logdet


class UniformState(NamedTuple):
    """State of uniform random play."""

    round: jax.Array
    """() int32: rounds played."""
    dim: jax.Array
    """(d,) zeros; carries d and the dtype for the boundary checks."""


def uniform_random(*, name: str = "Uniform") -> Agent:
    """Play an arm uniformly at random (the regret reference that every agent must beat).

    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = uniform_random()
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    >>> 0 <= int(ag.act(jax.random.key(1), s, jnp.ones((5, 2)))) < 5
    True
    """

    def init(key, prior):
        d, dtype = prior_dim_dtype(prior)
        return UniformState(jnp.int32(0), jnp.zeros((d,), dtype))

    def act(key, state, contexts):
        contexts = _prepare(state.dim.shape[0], state.dim.dtype, contexts)
        return jax.random.randint(key, (), 0, contexts.shape[0]).astype(jnp.int32)

    def update(key, state, contexts, action, reward):
        _prepare_update(state.dim.shape[0], state.dim.dtype, contexts, action, reward)
        return state._replace(round=state.round + 1)

    return Agent(name, init, act, update)


class SharedLinTSState(NamedTuple):
    """Gaussian posterior of θ* in natural parameters (sufficient statistics G and B)."""

    precision: jax.Array
    """(d, d) G = Σ₀⁻¹ + Σ_s x_s x_sᵀ / σ²: posterior precision."""
    moment: jax.Array
    """(d,) B = Σ₀⁻¹ μ₀ + Σ_s x_s y_s / σ²: posterior precision times mean."""
    noise_var: jax.Array
    """() σ², the reward noise variance the posterior assumes."""


def shared_lin_ts_posterior(state: SharedLinTSState):
    r"""Posterior mean G⁻¹B and covariance G⁻¹ of θ* (v = 1): the exact conjugate posterior.

    >>> s = SharedLinTSState(4.0 * jnp.eye(2), jnp.array([4.0, 0.0]), jnp.float32(1.0))
    >>> shared_lin_ts_posterior(s)[0]
    Array([1., 0.], dtype=float32)
    """
    d = state.moment.shape[0]
    L = jnp.linalg.cholesky(state.precision)
    cov = jax.scipy.linalg.cho_solve((L, True), jnp.eye(d, dtype=state.moment.dtype))
    cov = 0.5 * (cov + cov.T)
    return cov @ state.moment, cov


def shared_lin_ts(
    v: float = 1.0,
    lam: float | None = None,
    *,
    noise_sd: float | None = None,
    name: str = "LinTS-shared",
) -> Agent:
    r"""LinTS-shared: linear Thompson sampling with one shared θ and a Gaussian posterior.

    Bayesian (``lam=None``): prior θ* ~ N(μ, Σ) and noise σ from the
    :class:`~models.linear_bandit.LinearBanditPrior` given to ``init``; the posterior

    .. math:: G = \Sigma^{-1} + \sum_s x_s x_s^\top/\sigma^2, \quad
              B = \Sigma^{-1}\mu + \sum_s x_s y_s/\sigma^2, \quad
              \theta \mid \mathcal H \sim N(G^{-1}B, G^{-1})

    is the exact posterior of :func:`models.linear_bandit.linear_bandit_model`. Frequentist
    (``lam`` given, Agrawal and Goyal 2013): the ridge prior N(0, σ²/λ I), so that
    G⁻¹ = σ²(λI + Σ x xᵀ)⁻¹. Each round samples θ̃ ~ N(G⁻¹B, v² G⁻¹) and plays
    argmax_i x_iᵀθ̃; v = 1 is exact Thompson sampling.

    Parameters
    ----------
    v : float > 0
        Exploration scale (the papers' grid: 0.001, 0.01, 0.1, 1).
    lam : float > 0, optional
        Ridge parameter; None uses the prior.
    noise_sd : float > 0, optional
        Overrides the prior's σ.
    name : str

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = shared_lin_ts()
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2, noise_sd=1.0))
    >>> s = ag.update(jax.random.key(1), s, jnp.eye(2), 0, jnp.float32(1.0))
    >>> shared_lin_ts_posterior(s)[0].round(4)
    Array([0.3333, 0.    ], dtype=float32)
    """
    v = check_positive("v", v)
    if lam is not None:
        lam = check_positive("lam", lam)
    if noise_sd is not None:
        noise_sd = check_positive("noise_sd", noise_sd)

    def init(key, prior: LinearBanditPrior) -> SharedLinTSState:
        d, dtype = prior_dim_dtype(prior)
        sd = jnp.asarray(prior.noise_sd if noise_sd is None else noise_sd, dtype)
        if lam is None:
            L = jnp.linalg.cholesky(jnp.asarray(prior.sigma, dtype))
            prec = jax.scipy.linalg.cho_solve((L, True), jnp.eye(d, dtype=dtype))
            prec = 0.5 * (prec + prec.T)
            moment = prec @ jnp.asarray(prior.mu, dtype)
        else:
            prec = (lam / sd**2) * jnp.eye(d, dtype=dtype)
            moment = jnp.zeros((d,), dtype)
        return SharedLinTSState(prec, moment, sd**2)

    def act(key, state: SharedLinTSState, contexts):
        d = state.moment.shape[0]
        contexts = _prepare(d, state.moment.dtype, contexts)
        # θ̃ = L⁻ᵀ(L⁻¹B + vξ) = G⁻¹B + v L⁻ᵀξ: two dependent triangular solves
        L = jnp.linalg.cholesky(state.precision)
        xi = jax.random.normal(key, (d,), state.moment.dtype)
        half = solve_triangular(L, state.moment, lower=True)
        theta = solve_triangular(L.T, half + v * xi, lower=False)
        return jnp.argmax(contexts @ theta).astype(jnp.int32)

    def update(key, state: SharedLinTSState, contexts, action, reward) -> SharedLinTSState:
        d = state.moment.shape[0]
        contexts, reward = _prepare_update(d, state.moment.dtype, contexts, action, reward)
        x = contexts[action]
        return SharedLinTSState(
            state.precision + jnp.outer(x, x) / state.noise_var,
            state.moment + x * reward / state.noise_var,
            state.noise_var,
        )

    return Agent(name, init, act, update, shared_lin_ts_claim)


class SharedLinUCBState(NamedTuple):
    """Ridge statistics of OFUL."""

    gram: jax.Array
    """(d, d) V_t = λI + Σ_s x_s x_sᵀ."""
    moment: jax.Array
    """(d,) Σ_s x_s y_s."""
    noise_sd: jax.Array
    """() R, the sub-Gaussian noise scale the radius assumes."""


def oful_radius(gram, lam, noise_sd, delta, theta_norm_bound):
    r"""Confidence radius of OFUL (Abbasi-Yadkori et al. 2011, Theorem 2).

    .. math:: \beta_t(\delta) = R\sqrt{\log\det V_t - d\log\lambda + 2\log(1/\delta)}
              + \sqrt{\lambda}\,S .

    >>> float(oful_radius(jnp.eye(2), 1.0, 1.0, math.exp(-0.5), 0.0))
    1.0
    """
    L = jnp.linalg.cholesky(gram)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return _oful_beta(logdet, gram.shape[-1], lam, noise_sd, delta, theta_norm_bound)


def _oful_beta(logdet, d, lam, noise_sd, delta, theta_norm_bound):
    inner = logdet - d * math.log(lam) + 2.0 * math.log(1.0 / delta)
    return noise_sd * jnp.sqrt(jnp.maximum(inner, 0.0)) + math.sqrt(lam) * theta_norm_bound


def shared_lin_ucb(
    alpha: float = 1.0,
    lam: float = 1.0,
    delta: float = 0.05,
    *,
    theta_norm_bound: float = 1.0,
    noise_sd: float | None = None,
    name: str = "LinUCB-shared",
) -> Agent:
    r"""LinUCB-shared: OFUL / LinUCB with one shared θ (Abbasi-Yadkori, Pál, Szepesvári 2011).

    Plays :math:`\arg\max_i x_i^\top\hat\theta_t + \alpha\,\beta_t(\delta)\,\|x_i\|_{V_t^{-1}}`
    with :math:`\hat\theta_t = V_t^{-1}\sum_s x_s y_s` and β from :func:`oful_radius`.

    Parameters
    ----------
    alpha : float > 0
        Confidence-bound inflation (the HCSA paper tunes it on a grid); 1 is the theory.
    lam : float > 0
    delta : float in (0, 1)
    theta_norm_bound : float >= 0
        S >= ‖θ*‖.
    noise_sd : float > 0, optional
        R; defaults to the prior's σ.
    name : str

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = shared_lin_ucb()
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    >>> int(ag.act(jax.random.key(1), s, jnp.array([[0.1, 0.0], [1.0, 0.0]])))
    1
    """
    alpha = check_positive("alpha", alpha)
    lam = check_positive("lam", lam)
    delta = check_probability("delta", delta)
    theta_norm_bound = check_positive("theta_norm_bound", theta_norm_bound, allow_zero=True)
    if noise_sd is not None:
        noise_sd = check_positive("noise_sd", noise_sd)

    def init(key, prior) -> SharedLinUCBState:
        d, dtype = prior_dim_dtype(prior)
        sd = prior.noise_sd if noise_sd is None else noise_sd
        return SharedLinUCBState(
            lam * jnp.eye(d, dtype=dtype), jnp.zeros((d,), dtype), jnp.asarray(sd, dtype)
        )

    def act(key, state: SharedLinUCBState, contexts):
        d = state.moment.shape[0]
        contexts = _prepare(d, state.moment.dtype, contexts)
        theta, widths2, logdet = _chol_solve_and_widths(state.gram, state.moment, contexts)
        beta = _oful_beta(logdet, d, lam, state.noise_sd, delta, theta_norm_bound)
        return jnp.argmax(contexts @ theta + alpha * beta * jnp.sqrt(widths2)).astype(jnp.int32)

    def update(key, state: SharedLinUCBState, contexts, action, reward) -> SharedLinUCBState:
        d = state.moment.shape[0]
        contexts, reward = _prepare_update(d, state.moment.dtype, contexts, action, reward)
        x = contexts[action]
        return state._replace(gram=state.gram + jnp.outer(x, x), moment=state.moment + reward * x)

    return Agent(name, init, act, update, shared_lin_ucb_claim)


class DRTSState(NamedTuple):
    """State of doubly robust Thompson sampling."""

    gram_all: jax.Array
    """(d, d) F_t = Σ_s Σ_i x_{s,i} x_{s,i}ᵀ: contexts of all arms."""
    moment: jax.Array
    """(d,) Σ_s Σ_i x_{s,i} Y^DR_{s,i}: DR pseudo-rewards of all arms."""
    ref_gram: jax.Array
    """(d, d) Σ_s x_{s,a_s} x_{s,a_s}ᵀ: played contexts, for the imputation estimator β̌."""
    ref_moment: jax.Array
    """(d,) Σ_s x_{s,a_s} y_s."""
    round: jax.Array
    """() int32: t, rounds completed."""
    lam: jax.Array
    """() λ of the main estimator's regularization λ√(t − 1) (so :func:`point_estimate`
    reads β̂ from the state alone)."""


_GH_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _gauss_hermite(n: int):
    if n not in _GH_CACHE:
        z, w = np.polynomial.hermite_e.hermegauss(n)
        _GH_CACHE[n] = (z, w / math.sqrt(2.0 * math.pi))
    return _GH_CACHE[n]


def drts_regularizer(state: DRTSState):
    """λ√(t − 1) for the coming round t = ``state.round`` + 1 (λ√1 in round 1)."""
    return state.lam * jnp.sqrt(jnp.maximum(state.round, 1).astype(state.lam.dtype))


def drts_selection_probs(means, sds, num_quadrature: int = 64):
    r"""P(arm i wins) when the scores s_i ~ N(m_i, σ_i²) are independent (DRTS, Kim et al. 2021).

    .. math:: \pi_i = \int \varphi(z)\prod_{j\ne i}
              \Phi\Big(\frac{m_i + \sigma_i z - m_j}{\sigma_j}\Big)\,dz ,

    by Gauss–Hermite quadrature with ``num_quadrature`` nodes, then renormalized to sum to
    one (removes the quadrature error). An arm with σ_j = 0 enters as the step function.

    >>> p = drts_selection_probs(jnp.zeros(4), jnp.ones(4))
    >>> bool(jnp.allclose(p, 0.25, atol=1e-4))
    True
    """
    raw = _drts_raw_probs(means, sds, num_quadrature)
    return raw / jnp.sum(raw)


def _drts_raw_probs(means, sds, num_quadrature: int, arms=None):
    """Un-normalized quadrature of π_i for the ``arms`` (default: all), shape (len(arms),).

    Row i costs N·Q normal log-CDFs, so an agent that needs π of one arm computes one row.
    """
    z, w = _gauss_hermite(num_quadrature)
    dtype = jnp.result_type(means.dtype, jnp.float32)
    z = jnp.asarray(z, dtype)
    w = jnp.asarray(w, dtype)
    N = means.shape[0]
    pos = sds > 0
    safe = jnp.where(pos, sds, 1.0)[:, None]

    def integrand(i):  # (Q,): prod_{j != i} Phi((m_i + s_i z - m_j) / s_j) at the nodes
        diff = (means[i] + sds[i] * z)[None, :] - means[:, None]  # (N_j, Q)
        logcdf = jnp.where(pos[:, None], log_ndtr(diff / safe), jnp.where(diff > 0, 0.0, -jnp.inf))
        logcdf = jnp.where((jnp.arange(N) == i)[:, None], 0.0, logcdf)
        return jnp.exp(jnp.sum(logcdf, axis=0))

    arms = jnp.arange(N) if arms is None else jnp.asarray(arms)
    return jax.vmap(integrand)(arms) @ w


def drts(
    v: float = 1.0,
    lam: float = 1.0,
    gamma: float | None = None,
    delta: float = 0.1,
    *,
    ref_lam: float = 1.0,
    num_quadrature: int = 64,
    name: str = "DRTS",
) -> Agent:
    r"""Doubly robust Thompson sampling (Kim, Kim, Paik, NeurIPS 2021).

    Round t: independent per-arm samples :math:`\tilde\beta_i \sim N(\hat\beta, v^2V^{-1})`,
    i.e. scores :math:`s_i \sim N(x_i^\top\hat\beta, v^2\|x_i\|^2_{V^{-1}})`, with selection
    probabilities π_i (:func:`drts_selection_probs`); resample until the drawn arm has
    π_a > γ, at most M_t = ⌈log((t+1)²/δ)/log(1/(1−γ))⌉ times. The DR pseudo-rewards of all
    arms

    .. math:: Y^{DR}_i = x_i^\top\check\beta + \frac{\mathbb 1\{i = a_t\}}{\tilde\pi_{a_t}}
              (Y - x_{a_t}^\top\check\beta)

    use the exact probability :math:`\tilde\pi_a` that the resampling plays a:
    :math:`(\pi_a/\pi_S)(1 - (1-\pi_S)^{M_t})` for a ∈ S = {π > γ} and
    :math:`\pi_a(1-\pi_S)^{M_t - 1}` otherwise. Eligibility π_a > γ is tested on the
    quadrature before renormalization, the same number in ``act`` (which computes π of the
    drawn arm only) and ``update``. Estimator
    :math:`\hat\beta_t = (F_t + \lambda\sqrt{t}\,I)^{-1}\sum_s\sum_i x_{s,i}Y^{DR}_{s,i}`,
    imputation β̌ = ridge (``ref_lam``) on the played pairs. Round 1 uses λ√1 (the
    paper's λ√(t−1) vanishes there).

    Parameters
    ----------
    v : float > 0
    lam : float > 0
    gamma : float in (0, 1/N), optional
        Selection-probability threshold; default 1/(N + 1), as in the paper.
    delta : float in (0, 1)
    ref_lam : float > 0
    num_quadrature : int >= 2
    name : str

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = drts()
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    >>> x = jnp.eye(2)
    >>> a = ag.act(jax.random.key(1), s, x)
    >>> ag.update(jax.random.key(2), s, x, a, jnp.float32(1.0)).gram_all
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    v = check_positive("v", v)
    lam = check_positive("lam", lam)
    ref_lam = check_positive("ref_lam", ref_lam)
    delta = check_probability("delta", delta)
    if gamma is not None:
        gamma = check_probability("gamma", gamma)
    nq = check_int("num_quadrature", num_quadrature, 2)

    def _gamma(N: int) -> float:
        if gamma is None:
            return 1.0 / (N + 1)
        if gamma >= 1.0 / N:
            raise ValueError(
                f"gamma is {gamma!r}; expected a number in (0, 1/N) = (0, {1 / N:.4g})"
            )
        return gamma

    def _scores(state: DRTSState, contexts, after=()):
        d = state.moment.shape[0]
        V = serial_after(
            state.gram_all + drts_regularizer(state) * jnp.eye(d, dtype=contexts.dtype), *after
        )
        beta, widths2, _ = _chol_solve_and_widths(V, state.moment, contexts)
        means = contexts @ beta
        sds = v * jnp.sqrt(widths2)
        return means, sds

    def init(key, prior) -> DRTSState:
        d, dtype = prior_dim_dtype(prior)
        z = jnp.zeros((d, d), dtype)
        zv = jnp.zeros((d,), dtype)
        return DRTSState(z, zv, z, zv, jnp.int32(0), jnp.asarray(lam, dtype))

    def act(key, state: DRTSState, contexts):
        contexts = _prepare(state.moment.shape[0], state.moment.dtype, contexts)
        N = contexts.shape[0]
        g = _gamma(N)
        means, sds = _scores(state, contexts)
        M = max_trials(state.round + 1, g, delta)

        def cond(c):
            m, _, pi_a = c
            return (m == 0) | ((pi_a <= g) & (m < M))

        def body(c):
            m, _, _ = c
            m = m + 1
            xi = jax.random.normal(jax.random.fold_in(key, m), (N,), means.dtype)
            a = jnp.argmax(means + sds * xi).astype(jnp.int32)
            # π of the drawn arm only (one quadrature row): the eligibility test of update
            return m, a, _drts_raw_probs(means, sds, nq, a[None])[0]

        init = (jnp.int32(0), jnp.int32(0), jnp.zeros((), means.dtype))
        _, a, _ = jax.lax.while_loop(cond, body, init)
        return a

    def update(key, state: DRTSState, contexts, action, reward) -> DRTSState:
        d = state.moment.shape[0]
        contexts, reward = _prepare_update(d, state.moment.dtype, contexts, action, reward)
        N = contexts.shape[0]
        g = _gamma(N)
        # recompute π after act's LAPACK calls (see hcsa.serial_after): depend on the action
        means, sds = _scores(state, contexts, after=(action,))
        raw = _drts_raw_probs(means, sds, nq)
        pi = raw / jnp.sum(raw)
        M = max_trials(state.round + 1, g, delta).astype(contexts.dtype)
        eligible = raw > g  # the test act applies to the drawn arm
        pi_s = jnp.sum(jnp.where(eligible, pi, 0.0))
        miss = 1.0 - pi_s
        p_a = jnp.where(
            eligible[action],
            pi[action] / pi_s * (1.0 - miss**M),
            pi[action] * miss ** (M - 1.0),
        )
        ref = state.ref_gram + ref_lam * jnp.eye(d, dtype=contexts.dtype)
        beta_check = jnp.linalg.solve(serial_after(ref, pi), state.ref_moment)
        pred = contexts @ beta_check
        y_dr = pred.at[action].add((reward - pred[action]) / p_a)
        x = contexts[action]
        return DRTSState(
            state.gram_all + contexts.T @ contexts,
            state.moment + contexts.T @ y_dr,
            state.ref_gram + jnp.outer(x, x),
            state.ref_moment + reward * x,
            state.round + 1,
            state.lam,
        )

    return Agent(name, init, act, update, drts_claim)


class HyRanState(NamedTuple):
    """State of the hybridization-by-randomization bandit."""

    gram: jax.Array
    """(d, d) Σ_{s∈Ψ} Σ_i x_{s,i}x_{s,i}ᵀ + Σ_{s∉Ψ} x_{s,a_s}x_{s,a_s}ᵀ (hybrid design)."""
    moment: jax.Array
    """(d,) Σ_{s∈Ψ} Σ_i x_{s,i} Y^DR_{s,i} + Σ_{s∉Ψ} x_{s,a_s} y_s."""
    round: jax.Array
    """() int32: t, rounds completed."""
    num_full: jax.Array
    """() int32: ``|Ψ_t|``, rounds that used the contexts of all arms."""
    reg_const: jax.Array
    """() c₀ of the main estimator's regularization λ_t = c₀ + c₁ log(t + 1)."""
    reg_log: jax.Array
    """() c₁ (2d by default, 0 when a fixed ``lam`` is given)."""


def hy_ran_regularizer(state: HyRanState):
    """λ_t = c₀ + c₁ log(t + 1) for the coming round t = ``state.round`` + 1."""
    t = (state.round + 1).astype(state.reg_log.dtype)
    return state.reg_const + state.reg_log * jnp.log(t + 1.0)


def hy_ran(
    p: float = 0.5,
    *,
    lam: float | None = None,
    impute_lam: float | None = None,
    name: str = "HyRan",
) -> Agent:
    r"""HyRan bandit (Kim, Paik, Oh, AISTATS 2023, "Squeeze all").

    Greedy arm :math:`a_t = \arg\max_i x_i^\top\hat\beta_{t-1}`; exploration comes from a
    randomized estimator: draw :math:`\tilde a_t` with probability p on a_t and
    (1 − p)/(N − 1) on each other arm. If :math:`\tilde a_t = a_t` (round joins Ψ) all arms
    contribute with DR pseudo-rewards
    :math:`Y^{DR}_i = x_i^\top\check\beta + \mathbb 1\{i=a_t\}(Y - x_{a_t}^\top\check\beta)/p`,
    otherwise only the played pair. :math:`\hat\beta_t = (\text{hybrid Gram} + \lambda_t I)^{-1}
    (\text{hybrid moment})`.

    As we read the paper (its equations were not available to us in full): λ_t = 2d log(t+1)
    for the main estimator and the imputation estimator β̌ is the same hybrid estimator
    with regularization √t; both are parameters.

    Parameters
    ----------
    p : float in (0, 1)
        Probability that the randomization picks the played arm.
    lam : float > 0, optional
        Fixed λ for the main estimator instead of 2d log(t+1).
    impute_lam : float > 0, optional
        Fixed regularization for β̌ instead of √t.
    name : str

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = hy_ran()
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    >>> s = ag.update(jax.random.key(1), s, jnp.eye(2), 0, jnp.float32(1.0))
    >>> int(s.round)
    1
    """
    p = check_probability("p", p)
    if lam is not None:
        lam = check_positive("lam", lam)
    if impute_lam is not None:
        impute_lam = check_positive("impute_lam", impute_lam)

    def _estimate(state: HyRanState, reg, after=()):
        d = state.moment.shape[0]
        A = serial_after(state.gram + reg * jnp.eye(d, dtype=state.gram.dtype), *after)
        return jnp.linalg.solve(A, state.moment)

    def init(key, prior) -> HyRanState:
        d, dtype = prior_dim_dtype(prior)
        c0, c1 = (0.0, 2.0 * d) if lam is None else (lam, 0.0)
        return HyRanState(
            jnp.zeros((d, d), dtype),
            jnp.zeros((d,), dtype),
            jnp.int32(0),
            jnp.int32(0),
            jnp.asarray(c0, dtype),
            jnp.asarray(c1, dtype),
        )

    def act(key, state: HyRanState, contexts):
        d = state.moment.shape[0]
        contexts = _prepare(d, state.moment.dtype, contexts)
        return jnp.argmax(contexts @ _estimate(state, hy_ran_regularizer(state))).astype(jnp.int32)

    def update(key, state: HyRanState, contexts, action, reward) -> HyRanState:
        d = state.moment.shape[0]
        contexts, reward = _prepare_update(d, state.moment.dtype, contexts, action, reward)
        t = (state.round + 1).astype(contexts.dtype)
        u = jax.random.uniform(key, (), contexts.dtype)
        full = u < p  # ã = a_t; otherwise ã is one of the N − 1 other arms
        reg = jnp.sqrt(t) if impute_lam is None else impute_lam
        beta_check = _estimate(state, reg, after=(action,))  # after act's solve
        pred = contexts @ beta_check
        y_dr = pred.at[action].add((reward - pred[action]) / p)
        x = contexts[action]
        gram_full = contexts.T @ contexts
        return HyRanState(
            state.gram + jnp.where(full, gram_full, jnp.outer(x, x)),
            state.moment + jnp.where(full, contexts.T @ y_dr, reward * x),
            state.round + 1,
            state.num_full + full.astype(jnp.int32),
            state.reg_const,
            state.reg_log,
        )

    return Agent(name, init, act, update, hy_ran_claim)


class SupLinUCBState(NamedTuple):
    """Per-stage ridge statistics of SupLinUCB (stages s = 1..S are indices 0..S−1)."""

    grams: jax.Array
    """(S, d, d) A_s = I + Σ_{τ∈Ψ^s} x_τ x_τᵀ."""
    moments: jax.Array
    """(S, d) Σ_{τ∈Ψ^s} x_τ y_τ."""
    round: jax.Array
    """() int32: rounds completed."""
    inv_grams: jax.Array
    """(S, d, d) A_s⁻¹, kept by Sherman–Morrison rank-one updates (no factorization per
    round)."""


def sup_lin_ucb(
    horizon: int,
    alpha: float | None = None,
    delta: float = 0.05,
    *,
    name: str = "SupLinUCB",
) -> Agent:
    r"""SupLinUCB (Chu, Li, Reyzin, Schapire, AISTATS 2011, Algorithms 1 and 3).

    S = ⌈ln T⌉ stages. In stage s (from 1), BaseLinUCB on the rounds Ψ^s gives
    :math:`\hat r_i = x_i^\top A_s^{-1}b_s` and :math:`w_i = (\alpha + 1)\|x_i\|_{A_s^{-1}}`
    for the surviving arms Â_s: (a) if all w_i ≤ 1/√T play argmax(r̂ + w) and update no
    stage; (b) else if all w_i ≤ 2^{-s} keep the arms with r̂ + w ≥ max(r̂ + w) − 2^{1−s} and
    go to stage s + 1; (c) else play an arm with w_i > 2^{-s} (the widest) and add the
    round to Ψ^s. ``update`` replays this deterministic selection to find the stage. The
    inverses A_s⁻¹ are kept by Sherman–Morrison updates,
    :math:`A^{-1} \leftarrow A^{-1} - A^{-1}xx^\top A^{-1}/(1 + x^\top A^{-1}x)`, so a round
    costs O(S N d²) and no LAPACK call.

    Parameters
    ----------
    horizon : int >= 1
        T (SupLinUCB needs it).
    alpha : float > 0, optional
        Default √(½ ln(2TN/δ)) as in the paper.
    delta : float in (0, 1)
    name : str

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> ag = sup_lin_ucb(horizon=100)
    >>> s = ag.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    >>> s.grams.shape
    (5, 2, 2)
    """
    T = check_int("horizon", horizon, 1)
    delta = check_probability("delta", delta)
    if alpha is not None:
        alpha = check_positive("alpha", alpha)
    S = max(1, math.ceil(math.log(T)))

    def _select(state: SupLinUCBState, contexts):
        N = contexts.shape[0]
        a_conf = math.sqrt(0.5 * math.log(2.0 * T * N / delta)) if alpha is None else alpha
        cand = jnp.ones((N,), bool)
        done = jnp.array(False)
        action = jnp.int32(0)
        stage = jnp.int32(-1)  # −1: no stage is updated
        neg = -jnp.inf
        last_ucb = jnp.zeros((N,), contexts.dtype)
        # all stages at once from the kept inverses
        theta = jnp.einsum("sij,sj->si", state.inv_grams, state.moments)
        r_hats = theta @ contexts.T  # (S, N)
        widths2 = jnp.einsum("ni,sij,nj->sn", contexts, state.inv_grams, contexts)
        ws = (a_conf + 1.0) * jnp.sqrt(jnp.maximum(widths2, 0.0))  # (S, N)
        for s in range(S):
            r_hat, w = r_hats[s], ws[s]
            ucb = r_hat + w
            case_a = jnp.all(jnp.where(cand, w <= 1.0 / math.sqrt(T), True))
            wide = cand & (w > 2.0 ** (-(s + 1)))
            case_c = ~case_a & jnp.any(wide)
            a_a = jnp.argmax(jnp.where(cand, ucb, neg)).astype(jnp.int32)
            a_c = jnp.argmax(jnp.where(wide, w, neg)).astype(jnp.int32)
            best = jnp.max(jnp.where(cand, ucb, neg))
            new_cand = cand & (ucb >= best - 2.0 ** (1 - (s + 1)))
            act_now = ~done & (case_a | case_c)
            action = jnp.where(act_now, jnp.where(case_a, a_a, a_c), action)
            stage = jnp.where(act_now & case_c, s, stage)
            cand = jnp.where(done | act_now, cand, new_cand)
            last_ucb = jnp.where(done, last_ucb, ucb)
            done = done | act_now
        # Unreachable in theory (2^{-S} < 1/√T forces case (a) by stage S); play the best
        # surviving arm without an update if it happens numerically.
        fallback = jnp.argmax(jnp.where(cand, last_ucb, neg)).astype(jnp.int32)
        return jnp.where(done, action, fallback), stage

    def init(key, prior) -> SupLinUCBState:
        d, dtype = prior_dim_dtype(prior)
        grams = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (S, d, d))
        return SupLinUCBState(grams, jnp.zeros((S, d), dtype), jnp.int32(0), grams)

    def act(key, state: SupLinUCBState, contexts):
        contexts = _prepare(state.moments.shape[1], state.moments.dtype, contexts)
        return _select(state, contexts)[0]

    def update(key, state: SupLinUCBState, contexts, action, reward) -> SupLinUCBState:
        d = state.moments.shape[1]
        contexts, reward = _prepare_update(d, state.moments.dtype, contexts, action, reward)
        _, stage = _select(state, contexts)
        x = contexts[action]
        onehot = (jnp.arange(S) == stage).astype(contexts.dtype)
        Ax = state.inv_grams @ x  # (S, d)
        shrink = Ax[:, :, None] * Ax[:, None, :] / (1.0 + Ax @ x)[:, None, None]
        return SupLinUCBState(
            state.grams + onehot[:, None, None] * jnp.outer(x, x)[None],
            state.moments + onehot[:, None] * (reward * x)[None],
            state.round + 1,
            state.inv_grams - onehot[:, None, None] * shrink,
        )

    return Agent(name, init, act, update, sup_lin_ucb_claim)


def estimate_claim(matrix, moment) -> GaussianClaim:
    """The Gaussian claim N(A⁻¹b, A⁻¹) of an estimate θ̂ = A⁻¹b with SPD ``matrix`` A.

    Site ``("theta", (d,))``. For the Bayesian LinTS-shared (v = 1) it is the exact conjugate
    posterior; for the other agents of this family it is the Gaussian of their regularised
    estimator (its mean is the point estimate they act on; the covariance is the inverse of
    the regularised Gram, which their confidence widths or sampling scales multiply).
    """
    d = moment.shape[-1]
    cov = sym(chol_inverse(matrix))
    return GaussianClaim(spd_solve(matrix, moment), cov, (("theta", (d,)),))


def shared_lin_ts_claim(state: SharedLinTSState) -> GaussianClaim:
    """LinTS-shared's posterior N(G⁻¹B, G⁻¹) (in ridge mode the ridge estimate and inverse Gram)."""
    return estimate_claim(state.precision, state.moment)


def shared_lin_ucb_claim(state: SharedLinUCBState) -> GaussianClaim:
    """N(V⁻¹Σ x y, V⁻¹) with V = λI + Σ x xᵀ: OFUL's ridge estimate and its ellipsoid's shape."""
    return estimate_claim(state.gram, state.moment)


def drts_claim(state: DRTSState) -> GaussianClaim:
    """N(β̂, (F_t + λ√t I)⁻¹): the β̂ of DRTS's next round and its regularised Gram."""
    d = state.moment.shape[-1]
    reg = drts_regularizer(state)[..., None, None] * jnp.eye(d, dtype=state.moment.dtype)
    return estimate_claim(state.gram_all + reg, state.moment)


def hy_ran_claim(state: HyRanState) -> GaussianClaim:
    """N(β̂, (hybrid Gram + λ_{t+1} I)⁻¹): HyRan's next greedy estimate."""
    d = state.moment.shape[-1]
    reg = hy_ran_regularizer(state)[..., None, None] * jnp.eye(d, dtype=state.moment.dtype)
    return estimate_claim(state.gram + reg, state.moment)


def sup_lin_ucb_claim(state: SupLinUCBState) -> GaussianClaim:
    """The pooled ridge over the stages, (I + Σ_s (A_s − I))⁻¹ Σ_s b_s (our choice: SupLinUCB
    keeps one estimate per stage and plays none of them alone), with that pooled Gram."""
    S, d = state.moments.shape[-2:]
    eye = jnp.eye(d, dtype=state.moments.dtype)
    pooled = jnp.sum(state.grams, axis=-3) - (S - 1) * eye
    return estimate_claim(pooled, jnp.sum(state.moments, axis=-2))
