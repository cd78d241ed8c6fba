r"""Posteriors, agents and environments of the diffusion-prior bandit (dTS; Aouali, NeurIPS 2025).

The prior is a :class:`models.diffusion.DiffusionPrior` (indexing there: ``psi[l-1]`` is
:math:`\psi_\ell`, ``links[l-1]`` is :math:`W_\ell`, ``sigma_psi[l-1]`` is
:math:`\Sigma_{\ell+1}`, ``sigma_theta[a]`` is :math:`\Sigma_{1,a}`). Per action the data
enter through :math:`G_a = \hat G_a` and the natural mean :math:`B_a = \hat G_a\hat B_a`
(:math:`\sigma^{-2}\sum X_s X_s^\top` and :math:`\sigma^{-2}\sum X_s Y_s` for Gaussian
rewards; the Laplace terms of :mod:`ppl_bandits.laplace` for logistic rewards).

**Action terms.** With :math:`S_a = \Sigma_{1,a}^{-1}` and
:math:`\hat\Sigma_a = (S_a + G_a)^{-1}`,
:math:`\theta_a \mid \psi_1 \sim \mathcal{N}(\hat\Sigma_a(S_a f_1(\psi_1) + B_a), \hat\Sigma_a)`.
Integrating :math:`\theta_a` out, action :math:`a` observes :math:`W_1\psi_1` with precision
:math:`P_a = S_a - S_a\hat\Sigma_a S_a = S_a\hat\Sigma_a G_a` and natural mean
:math:`q_a = S_a\hat\Sigma_a B_a` (exact also for singular :math:`G_a`; no jitter).

**Upward recursion** (paper App. B), with :math:`S^\psi_\ell = \Sigma_{\ell+1}^{-1}`:

.. math::

    \bar G_1 = W_1^\top \Big(\sum_a P_a\Big) W_1, \qquad \bar B_1 = W_1^\top \sum_a q_a,

    \bar\Sigma_\ell = (S^\psi_\ell + \bar G_\ell)^{-1}, \qquad
    \bar G_{\ell+1} = W_{\ell+1}^\top S^\psi_\ell\bar\Sigma_\ell\bar G_\ell W_{\ell+1}, \qquad
    \bar B_{\ell+1} = W_{\ell+1}^\top S^\psi_\ell\bar\Sigma_\ell\bar B_\ell,

where :math:`S^\psi\bar\Sigma\bar G = S^\psi - S^\psi\bar\Sigma S^\psi` is the spec's
:math:`\Sigma_\ell^{-1} - \Sigma_\ell^{-1}\bar\Sigma_{\ell-1}\Sigma_\ell^{-1}` without the
cancellation. **Downward**: :math:`\psi_L \sim \mathcal{N}(\bar\Sigma_L\bar B_L, \bar\Sigma_L)`
and :math:`\psi_\ell \mid \psi_{\ell+1} \sim
\mathcal{N}(\bar\Sigma_\ell(S^\psi_\ell f_{\ell+1}(\psi_{\ell+1}) + \bar B_\ell), \bar\Sigma_\ell)`.
With linear links and Gaussian rewards this is the exact posterior (``method="exact"``).

**dTS approximation** (``method="dts"``, paper Sec. 3.2): the same formulas with every
:math:`W_\ell` dropped from the recursion (replaced by the identity) and
:math:`W_\ell\psi_\ell` replaced by :math:`f_\ell(\psi_\ell)` in the downward means. It
returns the prior with no data, but it is not the posterior of the nonlinear model; with
linear links it equals the exact posterior only when every :math:`W_\ell = I`.

Everything is a pure function of arrays; ``jax.jit`` and ``jax.vmap`` accept it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from models.diffusion import (
    DiffusionPrior,
    NeuralLink,
    apply_link,
    diffusion_prior,
    init_mlp,
    sample_diffusion_parameters,
)
from ppl_bandits.agents import History, _history_add, _history_init, _inverse_and_sqrt, mets
from ppl_bandits.laplace import NEWTON_MAX_ITER, NEWTON_TOL, laplace_terms
from ppl_bandits.mixed_effect import (
    ActionTerms,
    Gaussian,
    SufficientStats,
    action_terms,
    chol_inverse,
)
from ppl_bandits.spec import mixed_effect_prior
from ppl_bandits.types import Agent, Environment

__all__ = [
    "DIFFUSION_AGENT_NAMES",
    "METHODS",
    "DTSState",
    "DiffusionParams",
    "DiffusionPosterior",
    "LatentTerms",
    "conditional_action_posterior",
    "diffusion_environment",
    "diffusion_posterior",
    "diffusion_stats",
    "dts",
    "empty_diffusion_stats",
    "fixed_prior_environment",
    "hier_ts_1",
    "hier_ts_2",
    "hierts1_prior",
    "hierts2_prior",
    "joint_posterior",
    "joint_prior",
    "laplace_stats",
    "latent_terms",
    "log_posterior_density",
    "make_diffusion_agent",
    "marginal_action_prior",
    "marginal_mixed_effect_prior",
    "recursive_joint_posterior",
    "sample_posterior",
]

METHODS = ("exact", "dts")
LIKELIHOODS = ("gaussian", "logistic")


def _sym(A):
    return 0.5 * (A + jnp.swapaxes(A, -1, -2))


def _method(prior: DiffusionPrior, method: str | None) -> str:
    if method is None:
        return "exact" if prior.neural is None else "dts"
    if method not in METHODS:
        raise ValueError(f"method is {method!r}; expected one of {METHODS} or None")
    if method == "exact" and prior.neural is not None:
        raise ValueError(
            "method is 'exact' but the prior has neural links; exact posteriors need linear "
            "links (use method='dts')"
        )
    return method


# --------------------------------------------------------------------------- statistics


def empty_diffusion_stats(prior: DiffusionPrior, *, shared: bool = False) -> SufficientStats:
    """Statistics of no data: G = 0, B = 0, count = 0 (one slot when ``shared``)."""
    K = 1 if shared else prior.num_actions
    d, dtype = prior.dim, prior.sigma_psi.dtype
    return SufficientStats(
        jnp.zeros((K, d, d), dtype), jnp.zeros((K, d), dtype), jnp.zeros((K,), jnp.int32)
    )


def diffusion_stats(
    prior: DiffusionPrior, contexts, actions, rewards, *, shared: bool = False
) -> SufficientStats:
    """Gaussian-reward statistics of a history: G_a = σ⁻² Σ X Xᵀ, B_a = σ⁻² Σ X Y per action.

    With ``shared`` every round goes to the single slot 0 (``contexts`` are φ(x, a)).

    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=3, links=jnp.eye(2)[None])
    >>> s = diffusion_stats(p, jnp.array([[1.0, 2.0]]), jnp.array([1]), jnp.array([3.0]))
    >>> s.B[1], s.count
    (Array([3., 6.], dtype=float32), Array([0, 1, 0], dtype=int32))
    """
    dtype = prior.sigma_psi.dtype
    contexts = jnp.asarray(contexts, dtype)
    rewards = jnp.asarray(rewards, dtype)
    K = 1 if shared else prior.num_actions
    slots = jnp.zeros(contexts.shape[0], jnp.int32) if shared else jnp.asarray(actions)
    prec = 1.0 / prior.noise_sd**2
    G = jax.ops.segment_sum(prec * contexts[:, :, None] * contexts[:, None, :], slots, K)
    B = jax.ops.segment_sum(prec * contexts * rewards[:, None], slots, K)
    count = jax.ops.segment_sum(jnp.ones_like(slots, dtype=jnp.int32), slots, K)
    return SufficientStats(G.astype(dtype), B.astype(dtype), count)


def _chain_marginals(prior: DiffusionPrior):
    """Prior covariances of ψ_1..ψ_L (L, d, d) under linear links (all means are 0)."""
    L = prior.num_levels
    covs = [None] * L
    covs[L - 1] = prior.sigma_psi[L - 1]
    for level in range(L - 1, 0, -1):
        W = prior.links[level]
        covs[level - 1] = W @ covs[level] @ W.T + prior.sigma_psi[level - 1]
    return jnp.stack(covs)


def marginal_action_prior(prior: DiffusionPrior, key=None, num_samples: int = 1024) -> Gaussian:
    r"""Gaussian marginal prior of each θ_a: means (K, d), covariances (K, d, d).

    Linear links: exact, :math:`\mathcal{N}(0, \Sigma_{1,a} + W_1 C_1 W_1^\top)` with
    :math:`C_1` the prior covariance of :math:`\psi_1`. Neural links: the moments of
    ``num_samples`` prior draws of :math:`f_1(\psi_1)` (``key`` required) plus
    :math:`\Sigma_{1,a}` — a moment-matched Gaussian, used only as the Laplace expansion
    prior of dTS-GLM.
    """
    K, d = prior.num_actions, prior.dim
    if prior.neural is None:
        C1 = _chain_marginals(prior)[0]
        W = prior.links[0]
        cov = prior.sigma_theta + W @ C1 @ W.T
        return Gaussian(jnp.zeros((K, d), cov.dtype), _sym(cov))
    mean, link_cov = _link_moments(prior, key, num_samples)
    cov = prior.sigma_theta + link_cov[None]
    return Gaussian(jnp.broadcast_to(mean, (K, d)), _sym(cov))


def _link_moments(prior: DiffusionPrior, key, num_samples: int):
    """Mean (d,) and covariance (d, d) of f_1(ψ_1) over ``num_samples`` prior draws."""
    if key is None:
        raise ValueError("key is None; neural priors need a key for the moment-matched prior")
    keys = jax.random.split(key, num_samples)
    psi = jax.vmap(lambda k: sample_diffusion_parameters(k, prior, shared=True)[0])(keys)
    loc = apply_link(prior, 1, psi[:, 0])
    mean = jnp.mean(loc, 0)
    r = loc - mean
    return mean, _sym(r.T @ r / (num_samples - 1))


def marginal_mixed_effect_prior(prior: DiffusionPrior, key=None, num_samples: int = 1024):
    r"""A one-effect :class:`~ppl_bandits.spec.MixedEffectPrior` with the θ_a marginals of
    ``prior``, for the per-action baselines (LinTS, LinUCB, GLM-TS, UCB-GLM).

    Those baselines use only each action's marginal prior, which this reproduces:
    linear links give :func:`hierts2_prior` (exact marginals
    :math:`\mathcal{N}(0, \Sigma_{1,a} + W_1C_1W_1^\top)`); neural links give
    ψ ~ N(m, C), θ_a | ψ ~ N(ψ, Σ_{1,a}) with m, C the moments of ``num_samples`` prior
    draws of f_1(ψ_1) (``key`` required), the moment-matched marginals of
    :func:`marginal_action_prior`. Traceable (usable inside an agent's ``init``).
    """
    if prior.neural is None:
        return hierts2_prior(prior)
    mean, link_cov = _link_moments(prior, key, num_samples)
    K, d = prior.num_actions, prior.dim
    return mixed_effect_prior(
        mean,
        link_cov,
        mixing=jnp.broadcast_to(jnp.eye(d, dtype=mean.dtype), (K, 1, d, d)),
        sigma0=prior.sigma_theta,
        noise_sd=prior.noise_sd,
    )


def laplace_stats(
    prior: DiffusionPrior,
    contexts,
    actions,
    rewards,
    *,
    shared: bool = False,
    key=None,
    tol: float = NEWTON_TOL,
    max_iter: int = NEWTON_MAX_ITER,
) -> SufficientStats:
    """Laplace likelihood terms (H_a, b_a) of logistic rewards, in place of (G_a, B_a).

    Each action's log-likelihood is expanded at its posterior mode under the marginal
    prior :func:`marginal_action_prior` and its own data
    (:func:`ppl_bandits.laplace.laplace_terms`).
    """
    dtype = prior.sigma_psi.dtype
    X = jnp.asarray(contexts, dtype)
    y = jnp.asarray(rewards, dtype)
    K = 1 if shared else prior.num_actions
    slots = jnp.zeros(X.shape[0], jnp.int32) if shared else jnp.asarray(actions)
    marg = marginal_action_prior(prior, key)
    prec = chol_inverse(marg.cov[:K])

    def one(a, m, P):
        w = (slots == a).astype(dtype)
        return laplace_terms(X, y, w, m, P, tol=tol, max_iter=max_iter)

    lap = jax.vmap(one)(jnp.arange(K), marg.mean[:K], prec)
    count = jax.ops.segment_sum(jnp.ones_like(slots, dtype=jnp.int32), slots, K)
    return SufficientStats(lap.H, lap.b, count)


# --------------------------------------------------------------------------- recursions


class LatentTerms(NamedTuple):
    """Output of the upward recursion: what the data say about each latent ψ_ℓ."""

    G_bar: jax.Array
    """(L, d, d) Ḡ_ℓ at [ℓ−1], the data precision reaching ψ_ℓ."""
    B_bar: jax.Array
    """(L, d) B̄_ℓ at [ℓ−1], its natural mean."""
    cov: jax.Array
    """(L, d, d) Σ̄_ℓ = (Σ_{ℓ+1}⁻¹ + Ḡ_ℓ)⁻¹: covariance of ψ_ℓ given ψ_{ℓ+1} and the data."""
    sqrt: jax.Array
    """(L, d, d) R_ℓ with R_ℓ R_ℓᵀ = Σ̄_ℓ."""
    feed: jax.Array
    """(L, d, d) Σ̄_ℓ Σ_{ℓ+1}⁻¹: the mean of ψ_ℓ | ψ_{ℓ+1} is feed_ℓ f_{ℓ+1}(ψ_{ℓ+1}) + shift_ℓ."""
    shift: jax.Array
    """(L, d) Σ̄_ℓ B̄_ℓ (for ℓ = L, the posterior mean of ψ_L)."""


def _recursion_links(prior: DiffusionPrior, method: str):
    if method == "exact":
        return prior.links
    L, d = prior.num_levels, prior.dim
    return jnp.broadcast_to(jnp.eye(d, dtype=prior.sigma_psi.dtype), (L, d, d))


def _upward(prior: DiffusionPrior, S_psi, P_sum, q_sum, method: str) -> LatentTerms:
    """Upward recursion from the θ-level message (Σ_a P_a, Σ_a q_a); O(L d³)."""
    L = prior.num_levels
    W = _recursion_links(prior, method)
    G = W[0].T @ P_sum @ W[0]
    B = W[0].T @ q_sum
    out = {k: [] for k in LatentTerms._fields}
    for level in range(1, L + 1):
        S = S_psi[level - 1]
        G = _sym(G)
        cov, sqrt, _ = _inverse_and_sqrt(S + G)
        feed = cov @ S
        for k, v in zip(LatentTerms._fields, (G, B, cov, sqrt, feed, cov @ B), strict=True):
            out[k].append(v)
        if level < L:
            SC = feed.T  # S Σ̄ (both symmetric)
            G = W[level].T @ (SC @ G) @ W[level]
            B = W[level].T @ (SC @ B)
    return LatentTerms(*(jnp.stack(out[k]) for k in LatentTerms._fields))


def latent_terms(
    prior: DiffusionPrior, stats: SufficientStats, method: str | None = None
) -> tuple[ActionTerms, LatentTerms]:
    """Action terms (Σ̂_a, P_a, q_a) and the upward recursion (Ḡ_ℓ, B̄_ℓ, Σ̄_ℓ, ...).

    ``method`` is "exact" (linear links; the default for them) or "dts" (the
    approximation; the default for neural links). ``stats`` has one row per action, or a
    single row for the shared-parameter variant.
    """
    method = _method(prior, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    act = action_terms(S, stats.G, stats.B)
    S_psi = chol_inverse(prior.sigma_psi)
    return act, _upward(prior, S_psi, jnp.sum(act.P, 0), jnp.sum(act.q, 0), method)


def conditional_action_posterior(prior: DiffusionPrior, stats: SufficientStats, psi1) -> Gaussian:
    """θ_a | ψ_1, data ~ N(Σ̂_a (S_a f_1(ψ_1) + B_a), Σ̂_a) for every action (or the one θ)."""
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    act = action_terms(S, stats.G, stats.B)
    loc = apply_link(prior, 1, psi1)
    mean = jnp.einsum("kij,kj->ki", act.cond_cov, jnp.einsum("kij,j->ki", S, loc) + stats.B)
    return Gaussian(mean, act.cond_cov)


class DiffusionPosterior(NamedTuple):
    """Exact posterior of a linear diffusion prior, by the recursions."""

    latents: Gaussian
    """Marginal posteriors of ψ_1..ψ_L: means (L, d), covariances (L, d, d)."""
    actions: Gaussian
    """Marginal posteriors of θ_a: means (K, d), covariances (K, d, d)."""
    terms: LatentTerms
    """The upward recursion (conditional posteriors ψ_ℓ | ψ_{ℓ+1})."""
    action_terms: ActionTerms
    """Σ̂_a, P_a, q_a (conditional posteriors θ_a | ψ_1)."""


def diffusion_posterior(prior: DiffusionPrior, stats: SufficientStats) -> DiffusionPosterior:
    r"""Every latent's posterior and the actions' posteriors (linear links; exact).

    Downward from :math:`\psi_L`: with :math:`A_\ell = \bar\Sigma_\ell S^\psi_\ell W_{\ell+1}`,
    :math:`m_\ell = A_\ell m_{\ell+1} + \bar\Sigma_\ell\bar B_\ell` and
    :math:`C_\ell = A_\ell C_{\ell+1} A_\ell^\top + \bar\Sigma_\ell`; then
    :math:`\theta_a` has mean :math:`\hat\Sigma_a(S_a W_1 m_1 + B_a)` and covariance
    :math:`\hat\Sigma_a + \hat\Sigma_a S_a W_1 C_1 W_1^\top S_a \hat\Sigma_a`.

    Examples
    --------
    With no data it is the prior:

    >>> p = diffusion_prior(2 * jnp.eye(2)[None], jnp.eye(2), num_actions=3,
    ...                     links=jnp.eye(2)[None])
    >>> post = diffusion_posterior(p, empty_diffusion_stats(p))
    >>> post.actions.cov[0]
    Array([[3., 0.],
           [0., 3.]], dtype=float32)
    """
    act, lat = latent_terms(prior, stats, "exact")
    L = prior.num_levels
    means, covs = [None] * L, [None] * L
    means[L - 1], covs[L - 1] = lat.shift[L - 1], lat.cov[L - 1]
    for level in range(L - 1, 0, -1):
        A = lat.feed[level - 1] @ prior.links[level]
        means[level - 1] = A @ means[level] + lat.shift[level - 1]
        covs[level - 1] = _sym(A @ covs[level] @ A.T + lat.cov[level - 1])
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    A = jnp.einsum("kij,kjl,lm->kim", act.cond_cov, S, prior.links[0])
    mean = jnp.einsum("kij,j->ki", A, means[0]) + jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    cov = act.cond_cov + jnp.einsum("kij,jl,kml->kim", A, covs[0], A)
    return DiffusionPosterior(
        Gaussian(jnp.stack(means), jnp.stack(covs)), Gaussian(mean, _sym(cov)), lat, act
    )


def _sem_gaussian(A, c, D):
    """z = A z + c + e, e ~ N(0, D), A strictly block-triangular: N((I−A)⁻¹c, T⁻¹ D T⁻ᵀ)."""
    T = jnp.eye(A.shape[0], dtype=A.dtype) - A
    mean = jnp.linalg.solve(T, c)
    Tinv_D = jnp.linalg.solve(T, D)
    cov = jnp.linalg.solve(T, Tinv_D.T).T
    return Gaussian(mean, _sym(cov))


def _block_diag(blocks):
    return jax.scipy.linalg.block_diag(*blocks)


def recursive_joint_posterior(prior: DiffusionPrior, stats: SufficientStats) -> Gaussian:
    """Joint posterior of (ψ_1, …, ψ_L, θ_1, …, θ_K) assembled from the recursions (linear).

    The recursion says ψ_L = Σ̄_L B̄_L + e_L, ψ_ℓ = Σ̄_ℓ S^ψ_ℓ W_{ℓ+1} ψ_{ℓ+1} + Σ̄_ℓ B̄_ℓ + e_ℓ
    and θ_a = Σ̂_a S_a W_1 ψ_1 + Σ̂_a B_a + e_a with independent e ~ N(0, Σ̄ or Σ̂). Used
    to compare every mean, covariance and cross-covariance with :func:`joint_posterior`.
    O((L + K)³ d³): for audits, not agents. The vector is ordered (ψ_1..ψ_L, θ_1..θ_K).
    """
    act, lat = latent_terms(prior, stats, "exact")
    L, d = prior.num_levels, prior.dim
    K = stats.G.shape[0]
    N = (L + K) * d
    A = jnp.zeros((N, N), lat.cov.dtype)
    for level in range(1, L):  # ψ_ℓ depends on ψ_{ℓ+1}
        r, c = (level - 1) * d, level * d
        A = A.at[r : r + d, c : c + d].set(lat.feed[level - 1] @ prior.links[level])
    S = chol_inverse(prior.sigma_theta[:K])
    gain = jnp.einsum("kij,kjl,lm->kim", act.cond_cov, S, prior.links[0])
    for a in range(K):
        r = (L + a) * d
        A = A.at[r : r + d, 0:d].set(gain[a])
    c = jnp.concatenate(
        [lat.shift.reshape(-1), jnp.einsum("kij,kj->ki", act.cond_cov, stats.B).reshape(-1)]
    )
    D = _block_diag([*lat.cov, *act.cond_cov])
    return _sem_gaussian(A, c, D)


def joint_prior(prior: DiffusionPrior, *, shared: bool = False) -> Gaussian:
    """The prior of (ψ_1, …, ψ_L, θ_1, …, θ_K) as one Gaussian of dimension (L + K) d.

    Built explicitly from the linear structural equations ψ_ℓ = W_{ℓ+1} ψ_{ℓ+1} + e_ℓ,
    θ_a = W_1 ψ_1 + e_a (linear links only). With ``shared`` there is one θ.
    """
    _method(prior, "exact")
    L, d = prior.num_levels, prior.dim
    K = 1 if shared else prior.num_actions
    N = (L + K) * d
    A = jnp.zeros((N, N), prior.sigma_psi.dtype)
    for level in range(1, L):
        r, c = (level - 1) * d, level * d
        A = A.at[r : r + d, c : c + d].set(prior.links[level])
    for a in range(K):
        r = (L + a) * d
        A = A.at[r : r + d, 0:d].set(prior.links[0])
    D = _block_diag([*prior.sigma_psi, *prior.sigma_theta[:K]])
    return _sem_gaussian(A, jnp.zeros(N, A.dtype), D)


def joint_posterior(
    prior: DiffusionPrior, contexts, actions, rewards, *, shared: bool = False
) -> Gaussian:
    """Brute-force joint posterior of (ψ_1, …, ψ_L, θ_1, …, θ_K): the exact reference.

    The joint prior covariance C of all (L + K) d parameters is built explicitly
    (:func:`joint_prior`) and conditioned on the raw observations y = H w + noise, with
    row t of H holding X_t in the block of θ_{A_t}:
    mean m + C Hᵀ (H C Hᵀ + σ² I)⁻¹ (y − H m), covariance C − C Hᵀ (H C Hᵀ + σ² I)⁻¹ H C.
    Neither the sufficient statistics nor any recursion identity is used. O(((L + K) d)³ + n³).
    """
    p0 = joint_prior(prior, shared=shared)
    dtype = p0.cov.dtype
    X = jnp.asarray(contexts, dtype)
    y = jnp.asarray(rewards, dtype)
    n = X.shape[0]
    if n == 0:
        return p0
    L, d = prior.num_levels, prior.dim
    K = 1 if shared else prior.num_actions
    slots = jnp.zeros(n, jnp.int32) if shared else jnp.asarray(actions)
    onehot = jax.nn.one_hot(slots, K, dtype=dtype)
    H = jnp.concatenate(
        [jnp.zeros((n, L * d), dtype), (onehot[:, :, None] * X[:, None, :]).reshape(n, K * d)], 1
    )
    CH = p0.cov @ H.T
    Sy = _sym(H @ CH) + prior.noise_sd**2 * jnp.eye(n, dtype=dtype)
    chol = jnp.linalg.cholesky(Sy)
    gain_T = cho_solve((chol, True), CH.T)  # (H C Hᵀ + σ² I)⁻¹ H C
    mean = p0.mean + gain_T.T @ (y - H @ p0.mean)
    cov = p0.cov - CH @ gain_T
    return Gaussian(mean, _sym(cov))


def _mvn_logpdf(x, mean, cov):
    chol = jnp.linalg.cholesky(cov)
    z = solve_triangular(chol, (x - mean)[..., None], lower=True)[..., 0]
    p = x.shape[-1]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    return -0.5 * (jnp.sum(z**2, -1) + logdet + p * jnp.log(2 * jnp.pi))


def log_posterior_density(
    prior: DiffusionPrior, stats: SufficientStats, psi, theta, method: str | None = None
) -> jax.Array:
    r"""log density of (ψ, θ) under the recursion's factorisation.

    :math:`\log\mathcal{N}(\psi_L; \bar\Sigma_L\bar B_L, \bar\Sigma_L) + \sum_{\ell<L}
    \log p(\psi_\ell \mid \psi_{\ell+1}, \text{data}) + \sum_a \log p(\theta_a \mid \psi_1,
    \text{data})`. Exact (method "exact") it is log p(ψ, θ | data), and its difference with
    the NumPyro model's joint log density must not depend on (ψ, θ) (validation.md §1).
    ``psi`` is (L, d); ``theta`` is (K, d), or (d,) for the shared variant.
    """
    _, lat = latent_terms(prior, stats, method)
    L = prior.num_levels
    total = _mvn_logpdf(psi[L - 1], lat.shift[L - 1], lat.cov[L - 1])
    for level in range(1, L):
        mean = lat.feed[level - 1] @ apply_link(prior, level + 1, psi[level])
        total += _mvn_logpdf(psi[level - 1], mean + lat.shift[level - 1], lat.cov[level - 1])
    cond = conditional_action_posterior(prior, stats, psi[0])
    theta = jnp.reshape(theta, cond.mean.shape)
    return total + jnp.sum(_mvn_logpdf(theta, cond.mean, cond.cov))


def _descend_latents(keys, prior: DiffusionPrior, lat: LatentTerms):
    """ψ_L, then ψ_ℓ | ψ_{ℓ+1} down to ψ_1, with ``keys[ℓ−1]`` for ψ_ℓ; returns (L, d)."""
    L, d = prior.num_levels, prior.dim
    dtype = lat.shift.dtype
    psis = [None] * L
    z = jax.random.normal(keys[L - 1], (d,), dtype)
    psis[L - 1] = lat.shift[L - 1] + lat.sqrt[L - 1] @ z
    for level in range(L - 1, 0, -1):
        z = jax.random.normal(keys[level - 1], (d,), dtype)
        loc = lat.feed[level - 1] @ apply_link(prior, level + 1, psis[level])
        psis[level - 1] = loc + lat.shift[level - 1] + lat.sqrt[level - 1] @ z
    return jnp.stack(psis)


def _descend(key, prior: DiffusionPrior, lat: LatentTerms, cond_feed, shift, cond_sqrt):
    """ψ_L, then ψ_ℓ | ψ_{ℓ+1} down to ψ_1, then every θ_a | ψ_1 (vectorised)."""
    keys = jax.random.split(key, prior.num_levels + 1)
    psi = _descend_latents(keys, prior, lat)
    z = jax.random.normal(keys[-1], shift.shape, shift.dtype)
    f1 = apply_link(prior, 1, psi[0])
    theta = jnp.einsum("kij,j->ki", cond_feed, f1) + shift + jnp.einsum("kij,kj->ki", cond_sqrt, z)
    return psi, theta


def _sample_scores(key, state: DTSState, contexts):
    r"""One posterior draw of the scores :math:`x_a^\top\theta_a` of every action.

    Given ψ_1 the θ_a are independent Gaussians, so :math:`x_a^\top\theta_a \mid \psi_1
    \sim \mathcal{N}(x_a^\top(\hat\Sigma_aS_a f_1(\psi_1) + \hat\Sigma_aB_a), \|R_a^\top x_a\|^2)`
    (:math:`\hat\Sigma_aS_a f_1(\psi_1) + \hat\Sigma_aB_a` is θ_a's conditional mean): the
    same law as scoring a full θ draw (:func:`_descend`), with K normals instead of K d.
    """
    keys = jax.random.split(key, state.prior.num_levels + 1)
    psi = _descend_latents(keys, state.prior, state.latent)
    f1 = apply_link(state.prior, 1, psi[0])
    # Batched matrix-vector products (einsum): under the runner's vmap these are several
    # times faster on CPU than the equivalent multiply-and-sum.
    u = jnp.einsum("kij,ki->kj", state.cond_feed, contexts)  # (Σ̂_a S_a)ᵀ x_a
    v = jnp.einsum("kij,ki->kj", state.cond_sqrt, contexts)  # R_aᵀ x_a
    mean = u @ f1 + jnp.sum(contexts * state.shift, -1)
    z = jax.random.normal(keys[-1], mean.shape, mean.dtype)
    return mean + jnp.sqrt(jnp.sum(v**2, -1)) * z


def sample_posterior(key, prior: DiffusionPrior, stats: SufficientStats, method: str | None = None):
    """One draw (ψ (L, d), θ (K, d)) from the recursion's posterior (exact or dTS).

    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=3, links=jnp.eye(2)[None])
    >>> psi, theta = sample_posterior(jax.random.key(0), p, empty_diffusion_stats(p))
    >>> psi.shape, theta.shape
    ((1, 2), (3, 2))
    """
    act, lat = latent_terms(prior, stats, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    _, sqrt, _ = _inverse_and_sqrt(S + stats.G)
    feed = act.cond_cov @ S
    shift = jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    return _descend(key, prior, lat, feed, shift, sqrt)


# --------------------------------------------------------------------------- agents


class DTSState(NamedTuple):
    """State of the dTS agents. Only the played action's rows change in a round."""

    G: jax.Array
    """(K, d, d) likelihood precision per action (σ⁻²ΣXXᵀ, or the Laplace H); K = 1 if shared."""
    B: jax.Array
    """(K, d) likelihood natural mean per action."""
    count: jax.Array
    """(K,) rounds per action (per slot)."""
    P: jax.Array
    """(K + 1, d, d) rows a < K: P_a = S_a Σ̂_a G_a, the precision of action a's observation
    of f_1(ψ_1); row K: Σ_a P_a, kept up to date in O(d²) per round (one array, so that
    XLA updates both rows in place)."""
    q: jax.Array
    """(K + 1, d) rows a < K: q_a = S_a Σ̂_a B_a, its natural mean; row K: Σ_a q_a."""
    S: jax.Array
    """(K, d, d) S_a = Σ_{1,a}⁻¹."""
    S_psi: jax.Array
    """(L, d, d) Σ_{ℓ+1}⁻¹ at [ℓ−1]."""
    cond_sqrt: jax.Array
    """(K, d, d) R_a with R_a R_aᵀ = Σ̂_a = (S_a + G_a)⁻¹."""
    cond_feed: jax.Array
    """(K, d, d) Σ̂_a S_a: the mean of θ_a | ψ_1 is cond_feed_a f_1(ψ_1) + shift_a."""
    shift: jax.Array
    """(K, d) Σ̂_a B_a."""
    latent: LatentTerms
    """The upward recursion for the current data (leaves (L, d, d) and (L, d))."""
    prior: DiffusionPrior
    """The prior (links and covariances), used by the downward pass."""
    noise_sd: jax.Array
    """() reward noise σ assumed by the Gaussian likelihood."""
    theta0: jax.Array
    """(K, d) Laplace expansion points (logistic; the prior mean otherwise)."""
    marg_mean: jax.Array
    """(K, d) marginal prior means of θ_a (the Laplace expansion prior)."""
    marg_prec: jax.Array
    """(K, d, d) marginal prior precisions."""
    history: History | None
    """Round buffer (logistic agents), else None."""
    newton_failures: jax.Array
    """() number of updates whose Newton iteration did not converge."""


def _check_likelihood(likelihood, horizon):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood is {likelihood!r}; expected one of {LIKELIHOODS}")
    if likelihood == "logistic" and (horizon is None or int(horizon) < 1):
        raise ValueError(
            f"horizon is {horizon!r}; logistic agents need the number of rounds (>= 1) "
            "to size their history buffer"
        )


def _dts_init(key, prior: DiffusionPrior, likelihood, horizon, shared, method) -> DTSState:
    K = 1 if shared else prior.num_actions
    d, dtype = prior.dim, prior.sigma_psi.dtype
    S = chol_inverse(prior.sigma_theta[:K])
    S_psi = chol_inverse(prior.sigma_psi)
    G = jnp.zeros((K, d, d), dtype)
    B = jnp.zeros((K, d), dtype)
    cond_cov, cond_sqrt, _ = _inverse_and_sqrt(S + G)
    marg = marginal_action_prior(prior, key)
    zero = jnp.zeros((d, d), dtype)
    return DTSState(
        G=G,
        B=B,
        count=jnp.zeros((K,), jnp.int32),
        P=jnp.zeros((K + 1, d, d), dtype),
        q=jnp.zeros((K + 1, d), dtype),
        S=S,
        S_psi=S_psi,
        cond_sqrt=cond_sqrt,
        cond_feed=cond_cov @ S,
        shift=B,
        latent=_upward(prior, S_psi, zero, jnp.zeros((d,), dtype), method),
        prior=prior,
        noise_sd=prior.noise_sd,
        theta0=marg.mean[:K],
        marg_mean=marg.mean[:K],
        marg_prec=chol_inverse(marg.cov[:K]),
        history=_history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def _dts_refresh(state: DTSState, a, method) -> DTSState:
    """Recompute the played action's terms (O(d³)) and the recursion (O(L d³)).

    ``state.G`` and ``state.B`` already hold action ``a``'s new statistics. Only rows of
    the (K, ...) arrays are read or written, and every new row depends only on rows read
    after their array was written (G, B) or on old rows of its own array (P and q, whose
    last row is the sum): XLA then updates the rows in place inside the runner's scan. A
    row read from one array feeding the update of another makes XLA copy the whole
    (K, d, d) array every round (ten times slower at K = 10⁴, d = 20).
    """
    K = state.P.shape[0] - 1
    G_a, B_a, S_a = state.G[a], state.B[a], state.S[a]
    cond_cov, cond_sqrt, _ = _inverse_and_sqrt(S_a + G_a)
    SC = S_a @ cond_cov
    P_a = _sym(SC @ G_a)
    q_a = SC @ B_a
    rows = jnp.stack([jnp.asarray(a, jnp.int32), jnp.asarray(K, jnp.int32)])
    P = state.P.at[rows].set(jnp.stack([P_a, _sym(state.P[K] + P_a - state.P[a])]))
    q = state.q.at[rows].set(jnp.stack([q_a, state.q[K] + q_a - state.q[a]]))
    P_sum, q_sum = P[K], q[K]
    return state._replace(
        P=P,
        q=q,
        cond_sqrt=state.cond_sqrt.at[a].set(cond_sqrt),
        cond_feed=state.cond_feed.at[a].set(SC.T),
        shift=state.shift.at[a].set(cond_cov @ B_a),
        latent=_upward(state.prior, state.S_psi, P_sum, q_sum, method),
    )


def dts(
    likelihood: str = "gaussian",
    *,
    shared: bool = False,
    method: str | None = None,
    horizon: int | None = None,
    name: str | None = None,
    newton_tol: float = NEWTON_TOL,
    newton_max_iter: int = NEWTON_MAX_ITER,
) -> Agent:
    """Diffusion Thompson sampling (dTS).

    Per round: ψ_L from its posterior, ψ_ℓ | ψ_{ℓ+1} down to ψ_1, then for every action the
    score x_aᵀθ_a drawn from its exact law given ψ_1 (vectorised; the shared variant draws
    θ itself), play the argmax, update the played action's terms (O(d³)) and the O(L d³)
    recursion. Cost O(L d³ + K d²) time and O((L + K) d²) memory per round.

    Parameters
    ----------
    likelihood : {"gaussian", "logistic"}
        "logistic" is dTS-GLM with the Laplace terms of :mod:`ppl_bandits.laplace`.
    shared : bool
        Shared-parameter dTS: one θ, reward of action a is g(φ(x, a)ᵀθ) with φ(x, a)
        the row a of the round's contexts.
    method : {None, "exact", "dts"}
        None picks "exact" for linear links (the exact posterior for Gaussian rewards)
        and "dts" (the approximation) for neural links.
    horizon : int
        Number of rounds (logistic only: sizes the history buffer).

    Examples
    --------
    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=4, links=jnp.eye(2)[None])
    >>> agent = dts()
    >>> state = agent.init(jax.random.key(0), p)
    >>> x = jnp.ones((4, 2))
    >>> a = agent.act(jax.random.key(1), state, x)
    >>> int(agent.update(jax.random.key(2), state, x, a, 1.0).count.sum())
    1
    """
    _check_likelihood(likelihood, horizon)
    if method is not None and method not in METHODS:
        raise ValueError(f"method is {method!r}; expected one of {METHODS} or None")
    if name is None:
        name = "dTS" if likelihood == "gaussian" else "dTS-GLM"
        if shared:
            name += "-shared"

    def _resolved(prior):
        return _method(prior, method)

    def init(key, prior):
        return _dts_init(key, prior, likelihood, horizon, shared, _resolved(prior))

    def act(key, state: DTSState, contexts):
        if shared:
            _, theta = _descend(
                key, state.prior, state.latent, state.cond_feed, state.shift, state.cond_sqrt
            )
            return jnp.argmax(contexts @ theta[0])
        return jnp.argmax(_sample_scores(key, state, contexts))

    def update(key, state: DTSState, contexts, action, reward):
        del key
        m = _resolved(state.prior)
        x = contexts[action]
        slot = jnp.zeros((), jnp.int32) if shared else jnp.asarray(action, jnp.int32)
        count = state.count.at[slot].add(1)
        if likelihood == "gaussian":
            prec = 1.0 / state.noise_sd**2
            state = state._replace(
                count=count,
                G=state.G.at[slot].add(prec * jnp.outer(x, x)),
                B=state.B.at[slot].add(prec * reward * x),
            )
            return _dts_refresh(state, slot, m)
        hist = _history_add(state.history, x, slot, reward)
        w = (hist.a == slot).astype(hist.y.dtype)
        lap = laplace_terms(
            hist.X,
            hist.y,
            w,
            state.marg_mean[slot],
            state.marg_prec[slot],
            state.theta0[slot],
            tol=newton_tol,
            max_iter=newton_max_iter,
        )
        state = state._replace(
            count=count,
            history=hist,
            theta0=state.theta0.at[slot].set(lap.point.mode),
            newton_failures=state.newton_failures + (~lap.point.converged).astype(jnp.int32),
            G=state.G.at[slot].set(lap.H),
            B=state.B.at[slot].set(lap.b),
        )
        return _dts_refresh(state, slot, m)

    return Agent(name, init, act, update)


def _check_linear(prior: DiffusionPrior, who: str):
    if prior.neural is not None:
        raise ValueError(f"prior has neural links; {who} applies to linear links only")


def hierts1_prior(prior: DiffusionPrior):
    r"""HierTS-1's one-effect prior: θ_a = B_L ψ_L + (rest), ψ_L ~ N(0, Σ_{L+1}).

    The spec's ψ ~ N(0, B_L Σ_{L+1} B_Lᵀ), θ_a | ψ ~ N(ψ, Ω_1) with
    :math:`B_\ell = W_1\cdots W_\ell` and
    :math:`\Omega_1 = \Sigma_1 + \sum_{\ell<L} B_\ell\Sigma_{\ell+1}B_\ell^\top`, written with
    ψ_L as the effect and mixing matrix B_L: the same marginal law of the θ's, and no
    singular covariance when W has zeroed columns. Returns a
    :class:`~ppl_bandits.spec.MixedEffectPrior` with L = 1.
    """
    _check_linear(prior, "HierTS-1")
    L, d, K = prior.num_levels, prior.dim, prior.num_actions
    Bl = jnp.eye(d, dtype=prior.links.dtype)
    omega = prior.sigma_theta
    for level in range(1, L + 1):
        Bl = Bl @ prior.links[level - 1]
        if level < L:
            omega = omega + Bl @ prior.sigma_psi[level - 1] @ Bl.T
    return mixed_effect_prior(
        jnp.zeros(d, Bl.dtype),
        prior.sigma_psi[L - 1],
        mixing=jnp.broadcast_to(Bl, (K, 1, d, d)),
        sigma0=_sym(omega),
        noise_sd=prior.noise_sd,
    )


def hierts2_prior(prior: DiffusionPrior):
    r"""HierTS-2's one-effect prior: θ_a | ψ ~ N(W_1 ψ, Σ_1), ψ ~ N(0, C_1).

    :math:`C_1` is the prior covariance of :math:`\psi_1`, so
    :math:`W_1 C_1 W_1^\top = \Omega_2 = \sum_\ell B_\ell\Sigma_{\ell+1}B_\ell^\top`: the
    spec's ψ ~ N(0, Ω_2), θ_a | ψ ~ N(ψ, Σ_1) in a parameterisation without a singular
    covariance. Returns a :class:`~ppl_bandits.spec.MixedEffectPrior` with L = 1.
    """
    _check_linear(prior, "HierTS-2")
    d, K = prior.dim, prior.num_actions
    C1 = _chain_marginals(prior)[0]
    return mixed_effect_prior(
        jnp.zeros(d, C1.dtype),
        _sym(C1),
        mixing=jnp.broadcast_to(prior.links[0], (K, 1, d, d)),
        sigma0=prior.sigma_theta,
        noise_sd=prior.noise_sd,
    )


def hier_ts_1(*, name: str = "HierTS-1") -> Agent:
    """HierTS on the two-level hierarchy that keeps ψ_L (spec §Baselines); linear links."""
    return mets("gaussian", prior_map=hierts1_prior, name=name)


def hier_ts_2(*, name: str = "HierTS-2") -> Agent:
    """HierTS on the two-level hierarchy that keeps ψ_1 (spec §Baselines); linear links."""
    return mets("gaussian", prior_map=hierts2_prior, name=name)


DIFFUSION_AGENT_NAMES = ("dTS", "dTS-GLM", "dTS-shared", "dTS-GLM-shared", "HierTS-1", "HierTS-2")


def make_diffusion_agent(name: str, *, horizon: int | None = None) -> Agent:
    """Build a diffusion-family agent by name (case-insensitive).

    "dTS" is exact with linear links and the dTS approximation with neural links.

    >>> make_diffusion_agent("dts-glm", horizon=10).name
    'dTS-GLM'
    """
    table = {n.lower(): n for n in DIFFUSION_AGENT_NAMES}
    canonical = table.get(str(name).lower())
    if canonical is None:
        raise ValueError(f"agent is {name!r}; expected one of {', '.join(DIFFUSION_AGENT_NAMES)}")
    builders = {
        "dTS": lambda: dts(),
        "dTS-GLM": lambda: dts("logistic", horizon=horizon),
        "dTS-shared": lambda: dts(shared=True),
        "dTS-GLM-shared": lambda: dts("logistic", shared=True, horizon=horizon),
        "HierTS-1": hier_ts_1,
        "HierTS-2": hier_ts_2,
    }
    return builders[canonical]()


# --------------------------------------------------------------------------- environment


class DiffusionParams(NamedTuple):
    """True parameters of one run."""

    psi: jax.Array
    """(L, d) latents, row ℓ−1 being ψ_ℓ."""
    theta: jax.Array
    """(K, d) action parameters, or (d,) for the shared-parameter variant."""
    noise_sd: jax.Array
    """() reward noise σ (linear rewards)."""


LINKS = ("linear", "neural")
REWARDS = ("linear", "logistic")


def diffusion_environment(
    num_actions: int = 100,
    num_levels: int = 2,
    dim: int = 5,
    *,
    link: str = "linear",
    reward: str = "linear",
    shared: bool = False,
    zero_prob: float = 0.5,
    hidden: int = 16,
    noise_sd: float = 1.0,
) -> Environment:
    """A diffusion-prior bandit whose true parameters are drawn from the NumPyro model.

    Per run: links W_ℓ ~ U[−1, 1]^{d×d} with each column zeroed with probability
    ``zero_prob`` (``link="linear"``), or a random 2-layer ReLU MLP f_ℓ(ψ) = ε(ψ, ℓ) with
    ``hidden`` units (``link="neural"``); Σ_ℓ = I; then (ψ, θ) from
    :func:`models.diffusion.sample_diffusion_parameters`. Contexts x_t ~ U[−1, 1]^d are
    shared by the actions; with ``shared`` (one θ) each action gets its own feature vector
    φ(x_t, a) ~ U[−1, 1]^d. Expected rewards x_aᵀθ_a or sigmoid(x_aᵀθ_a).

    Examples
    --------
    >>> env = diffusion_environment(6, 2, 3)
    >>> prior, params = env.draw(jax.random.key(0))
    >>> params.theta.shape, env.contexts(jax.random.key(1), params).shape
    ((6, 3), (6, 3))
    """
    for arg, value in (("num_actions", num_actions), ("num_levels", num_levels), ("dim", dim)):
        if int(value) != value or value < 1:
            raise ValueError(f"{arg} is {value!r}; expected an integer >= 1")
    if link not in LINKS:
        raise ValueError(f"link is {link!r}; expected one of {LINKS}")
    if reward not in REWARDS:
        raise ValueError(f"reward is {reward!r}; expected one of {REWARDS}")
    if not 0 <= zero_prob < 1:
        raise ValueError(f"zero_prob is {zero_prob!r}; expected a number in [0, 1)")
    K, L, d = int(num_actions), int(num_levels), int(dim)

    def draw(key):
        k_links, k_params = jax.random.split(key)
        dtype = jnp.result_type(float)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (L, d, d))
        if link == "linear":
            k_w, k_z = jax.random.split(k_links)
            W = jax.random.uniform(k_w, (L, d, d), dtype, -1.0, 1.0)
            keep = jax.random.bernoulli(k_z, 1.0 - zero_prob, (L, 1, d))
            prior = diffusion_prior(
                eye, eye[0], num_actions=K, links=W * keep.astype(dtype), noise_sd=noise_sd
            )
        else:
            nl = NeuralLink(
                init_mlp(k_links, d, hidden, dtype=dtype),
                jnp.zeros((L,), dtype),
                -jnp.ones((L,), dtype),
            )
            prior = diffusion_prior(eye, eye[0], num_actions=K, neural=nl, noise_sd=noise_sd)
        psi, theta = sample_diffusion_parameters(k_params, prior, shared=shared)
        return prior, DiffusionParams(psi, theta, prior.noise_sd)

    def contexts(key, params: DiffusionParams, t=None):  # iid: the round index is unused
        dtype = params.theta.dtype
        if shared:
            return jax.random.uniform(key, (K, d), dtype, -1.0, 1.0)
        x = jax.random.uniform(key, (d,), dtype, -1.0, 1.0)
        return jnp.broadcast_to(x, (K, d))

    def mean_rewards(params: DiffusionParams, ctx):
        z = ctx @ params.theta if shared else jnp.sum(ctx * params.theta, axis=-1)
        return z if reward == "linear" else jax.nn.sigmoid(z)

    def sample_reward(key, params: DiffusionParams, ctx, action):
        mean = mean_rewards(params, ctx)[action]
        if reward == "linear":
            return mean + params.noise_sd * jax.random.normal(key, (), mean.dtype)
        return jax.random.bernoulli(key, mean).astype(mean.dtype)

    name = f"diffusion-{link}-{reward}" + ("-shared" if shared else "")
    return Environment(name, draw, contexts, mean_rewards, sample_reward)


def fixed_prior_environment(
    prior: DiffusionPrior,
    *,
    truth: Callable | None = None,
    noise_sd=None,
    name: str = "diffusion-fixed-prior",
) -> Environment:
    """A bandit whose agents are told one fixed (e.g. pre-trained) diffusion prior.

    Per run the true (ψ, θ) come from :func:`models.diffusion.sample_diffusion_parameters`
    (well specified), or θ of shape (K, d) from ``truth(key)`` (misspecified; ψ is then
    recorded as zeros, it has no meaning outside the model). Contexts x_t ~ U[−1, 1]^d are
    shared by the actions; rewards x_tᵀθ_a + σ ε with σ = ``noise_sd`` (default the
    prior's).

    >>> from models.diffusion import diffusion_prior
    >>> eye2 = jnp.stack([jnp.eye(2), jnp.eye(2)])
    >>> prior = diffusion_prior(eye2, jnp.eye(2), num_actions=3, links=eye2)
    >>> env = fixed_prior_environment(prior, truth=lambda k: jnp.ones((3, 2)))
    >>> env.draw(jax.random.key(0))[1].theta.tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    K, d, L = prior.num_actions, prior.dim, prior.num_levels
    sd = jnp.asarray(prior.noise_sd if noise_sd is None else noise_sd, prior.sigma_psi.dtype)

    def draw(key):
        if truth is None:
            psi, theta = sample_diffusion_parameters(key, prior)
        else:
            theta = jnp.asarray(truth(key), prior.sigma_psi.dtype).reshape(K, d)
            psi = jnp.zeros((L, d), theta.dtype)
        return prior, DiffusionParams(psi, theta, sd)

    def contexts(key, params: DiffusionParams, t=None):  # iid: the round index is unused
        x = jax.random.uniform(key, (d,), params.theta.dtype, -1.0, 1.0)
        return jnp.broadcast_to(x, (K, d))

    def mean_rewards(params: DiffusionParams, ctx):
        return jnp.sum(ctx * params.theta, axis=-1)

    def reward(key, params: DiffusionParams, ctx, action):
        mean = mean_rewards(params, ctx)[action]
        return mean + params.noise_sd * jax.random.normal(key, (), mean.dtype)

    return Environment(name, draw, contexts, mean_rewards, reward)
