r"""Posteriors, agents and environments of the diffusion-prior bandit (dTS; Aouali, NeurIPS 2025).

The prior is a :class:`models.diffusion.DiffusionPrior` (indexing there: ``psi[l-1]`` is
:math:`\psi_\ell`, ``links[l-1]`` is :math:`W_\ell`, ``sigma_psi[l-1]`` is
:math:`\Sigma_{\ell+1}`, ``sigma_theta[a]`` is :math:`\Sigma_{1,a}`). Per action the data
enter through :math:`G_a = \hat G_a` and the natural mean :math:`B_a = \hat G_a\hat B_a`
(:math:`\sigma^{-2}\sum X_s X_s^\top` and :math:`\sigma^{-2}\sum X_s Y_s` for Gaussian
rewards; the Laplace terms of :mod:`ppl_bandits.core.laplace` for logistic rewards).

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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from models.diffusion import (
    DiffusionPrior,
    apply_link,
    sample_diffusion_parameters,
)
from models.mixed_effect import mixed_effect_prior
from ppl_bandits.core.laplace import NEWTON_MAX_ITER, NEWTON_TOL, laplace_terms
from ppl_bandits.core.likelihood import SufficientStats
from ppl_bandits.core.linalg import (
    Gaussian,
    block_diag,
    chol_inverse,
    inverse_and_sqrt,
    mvn_logpdf,
    sym,
)
from ppl_bandits.mixed_effect.posterior import ActionTerms, action_terms

__all__ = [
    "METHODS",
    "DiffusionPosterior",
    "LatentTerms",
    "chain_marginals",
    "conditional_action_posterior",
    "descend",
    "descend_latents",
    "diffusion_posterior",
    "diffusion_stats",
    "empty_diffusion_stats",
    "hierts1_prior",
    "hierts2_prior",
    "joint_posterior",
    "joint_prior",
    "laplace_stats",
    "latent_terms",
    "log_posterior_density",
    "marginal_action_prior",
    "marginal_mixed_effect_prior",
    "recursion_gaussian",
    "recursive_joint_posterior",
    "resolve_method",
    "sample_posterior",
    "structural_gaussian",
    "upward_recursion",
]


METHODS = ("exact", "dts")


def resolve_method(prior: DiffusionPrior, method: str | None) -> str:
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

    >>> from models.diffusion import diffusion_prior
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


def chain_marginals(prior: DiffusionPrior):
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
        C1 = chain_marginals(prior)[0]
        W = prior.links[0]
        cov = prior.sigma_theta + W @ C1 @ W.T
        return Gaussian(jnp.zeros((K, d), cov.dtype), sym(cov))
    mean, link_cov = _link_moments(prior, key, num_samples)
    cov = prior.sigma_theta + link_cov[None]
    return Gaussian(jnp.broadcast_to(mean, (K, d)), sym(cov))


def _link_moments(prior: DiffusionPrior, key, num_samples: int):
    """Mean (d,) and covariance (d, d) of f_1(ψ_1) over ``num_samples`` prior draws."""
    if key is None:
        raise ValueError("key is None; neural priors need a key for the moment-matched prior")
    keys = jax.random.split(key, num_samples)
    psi = jax.vmap(lambda k: sample_diffusion_parameters(k, prior, shared=True)[0])(keys)
    loc = apply_link(prior, 1, psi[:, 0])
    mean = jnp.mean(loc, 0)
    r = loc - mean
    return mean, sym(r.T @ r / (num_samples - 1))


def marginal_mixed_effect_prior(prior: DiffusionPrior, key=None, num_samples: int = 1024):
    r"""A one-effect :class:`~models.mixed_effect.MixedEffectPrior` with the θ_a marginals of
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
    (:func:`ppl_bandits.core.laplace.laplace_terms`).
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


def upward_recursion(prior: DiffusionPrior, S_psi, P_sum, q_sum, method: str) -> LatentTerms:
    """Upward recursion from the θ-level message (Σ_a P_a, Σ_a q_a); O(L d³)."""
    L = prior.num_levels
    W = _recursion_links(prior, method)
    G = W[0].T @ P_sum @ W[0]
    B = W[0].T @ q_sum
    out = {k: [] for k in LatentTerms._fields}
    for level in range(1, L + 1):
        S = S_psi[level - 1]
        G = sym(G)
        cov, sqrt, _ = inverse_and_sqrt(S + G)
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
    method = resolve_method(prior, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    act = action_terms(S, stats.G, stats.B)
    S_psi = chol_inverse(prior.sigma_psi)
    return act, upward_recursion(prior, S_psi, jnp.sum(act.P, 0), jnp.sum(act.q, 0), method)


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

    >>> from models.diffusion import diffusion_prior
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
        covs[level - 1] = sym(A @ covs[level] @ A.T + lat.cov[level - 1])
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    A = jnp.einsum("kij,kjl,lm->kim", act.cond_cov, S, prior.links[0])
    mean = jnp.einsum("kij,j->ki", A, means[0]) + jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    cov = act.cond_cov + jnp.einsum("kij,jl,kml->kim", A, covs[0], A)
    return DiffusionPosterior(
        Gaussian(jnp.stack(means), jnp.stack(covs)), Gaussian(mean, sym(cov)), lat, act
    )


def _sem_gaussian(A, c, D):
    """z = A z + c + e, e ~ N(0, D), A strictly block-triangular: N((I−A)⁻¹c, T⁻¹ D T⁻ᵀ)."""
    T = jnp.eye(A.shape[0], dtype=A.dtype) - A
    mean = jnp.linalg.solve(T, c)
    Tinv_D = jnp.linalg.solve(T, D)
    cov = jnp.linalg.solve(T, Tinv_D.T).T
    return Gaussian(mean, sym(cov))


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
    D = block_diag([*lat.cov, *act.cond_cov])
    return _sem_gaussian(A, c, D)


def joint_prior(prior: DiffusionPrior, *, shared: bool = False) -> Gaussian:
    """The prior of (ψ_1, …, ψ_L, θ_1, …, θ_K) as one Gaussian of dimension (L + K) d.

    Built explicitly from the linear structural equations ψ_ℓ = W_{ℓ+1} ψ_{ℓ+1} + e_ℓ,
    θ_a = W_1 ψ_1 + e_a (linear links only). With ``shared`` there is one θ.
    """
    resolve_method(prior, "exact")
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
    D = block_diag([*prior.sigma_psi, *prior.sigma_theta[:K]])
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
    Sy = sym(H @ CH) + prior.noise_sd**2 * jnp.eye(n, dtype=dtype)
    chol = jnp.linalg.cholesky(Sy)
    gain_T = cho_solve((chol, True), CH.T)  # (H C Hᵀ + σ² I)⁻¹ H C
    mean = p0.mean + gain_T.T @ (y - H @ p0.mean)
    cov = p0.cov - CH @ gain_T
    return Gaussian(mean, sym(cov))


def log_posterior_density(
    prior: DiffusionPrior, stats: SufficientStats, psi, theta, method: str | None = None
) -> jax.Array:
    r"""log density of (ψ, θ) under the recursion's factorisation.

    :math:`\log\mathcal{N}(\psi_L; \bar\Sigma_L\bar B_L, \bar\Sigma_L) + \sum_{\ell<L}
    \log p(\psi_\ell \mid \psi_{\ell+1}, \text{data}) + \sum_a \log p(\theta_a \mid \psi_1,
    \text{data})`. Exact (method "exact") it is log p(ψ, θ | data), and its difference with
    the NumPyro model's joint log density must not depend on (ψ, θ) (an exact check).
    ``psi`` is (L, d); ``theta`` is (K, d), or (d,) for the shared variant.
    """
    _, lat = latent_terms(prior, stats, method)
    L = prior.num_levels
    total = mvn_logpdf(psi[L - 1], lat.shift[L - 1], lat.cov[L - 1])
    for level in range(1, L):
        mean = lat.feed[level - 1] @ apply_link(prior, level + 1, psi[level])
        total += mvn_logpdf(psi[level - 1], mean + lat.shift[level - 1], lat.cov[level - 1])
    cond = conditional_action_posterior(prior, stats, psi[0])
    theta = jnp.reshape(theta, cond.mean.shape)
    return total + jnp.sum(mvn_logpdf(theta, cond.mean, cond.cov))


def descend_latents(keys, prior: DiffusionPrior, lat: LatentTerms):
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


def descend(key, prior: DiffusionPrior, lat: LatentTerms, cond_feed, shift, cond_sqrt):
    """ψ_L, then ψ_ℓ | ψ_{ℓ+1} down to ψ_1, then every θ_a | ψ_1 (vectorised)."""
    keys = jax.random.split(key, prior.num_levels + 1)
    psi = descend_latents(keys, prior, lat)
    z = jax.random.normal(keys[-1], shift.shape, shift.dtype)
    f1 = apply_link(prior, 1, psi[0])
    theta = jnp.einsum("kij,j->ki", cond_feed, f1) + shift + jnp.einsum("kij,kj->ki", cond_sqrt, z)
    return psi, theta


def sample_posterior(key, prior: DiffusionPrior, stats: SufficientStats, method: str | None = None):
    """One draw (ψ (L, d), θ (K, d)) from the recursion's posterior (exact or dTS).

    >>> from models.diffusion import diffusion_prior
    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=3, links=jnp.eye(2)[None])
    >>> psi, theta = sample_posterior(jax.random.key(0), p, empty_diffusion_stats(p))
    >>> psi.shape, theta.shape
    ((1, 2), (3, 2))
    """
    act, lat = latent_terms(prior, stats, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    _, sqrt, _ = inverse_and_sqrt(S + stats.G)
    feed = act.cond_cov @ S
    shift = jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    return descend(key, prior, lat, feed, shift, sqrt)


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
    :class:`~models.mixed_effect.MixedEffectPrior` with L = 1.
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
        sigma0=sym(omega),
        noise_sd=prior.noise_sd,
    )


def hierts2_prior(prior: DiffusionPrior):
    r"""HierTS-2's one-effect prior: θ_a | ψ ~ N(W_1 ψ, Σ_1), ψ ~ N(0, C_1).

    :math:`C_1` is the prior covariance of :math:`\psi_1`, so
    :math:`W_1 C_1 W_1^\top = \Omega_2 = \sum_\ell B_\ell\Sigma_{\ell+1}B_\ell^\top`: the
    spec's ψ ~ N(0, Ω_2), θ_a | ψ ~ N(ψ, Σ_1) in a parameterisation without a singular
    covariance. Returns a :class:`~models.mixed_effect.MixedEffectPrior` with L = 1.
    """
    _check_linear(prior, "HierTS-2")
    d, K = prior.dim, prior.num_actions
    C1 = chain_marginals(prior)[0]
    return mixed_effect_prior(
        jnp.zeros(d, C1.dtype),
        sym(C1),
        mixing=jnp.broadcast_to(prior.links[0], (K, 1, d, d)),
        sigma0=prior.sigma_theta,
        noise_sd=prior.noise_sd,
    )


def structural_gaussian(links, feed, shift, lat_cov, cond_feed, cond_shift, cond_cov) -> Gaussian:
    r"""The Gaussian of the linear structural equations of a (linear) diffusion posterior.

    ψ_L = shift_L + e_L, ψ_ℓ = feed_ℓ W_{ℓ+1} ψ_{ℓ+1} + shift_ℓ + e_ℓ and
    θ_a = cond_feed_a W_1 ψ_1 + cond_shift_a + e_a, with independent
    e ~ N(0, lat_cov_ℓ or cond_cov_a): with z = A z + c + e,
    z ~ N((I − A)⁻¹c, (I − A)⁻¹ D (I − A)⁻ᵀ). Ordered (ψ_1, ..., ψ_L, θ_1, ..., θ_K).
    """
    L, d = shift.shape
    K = cond_shift.shape[0]
    N = (L + K) * d
    A = jnp.zeros((N, N), shift.dtype)
    for level in range(1, L):
        r, c = (level - 1) * d, level * d
        A = A.at[r : r + d, c : c + d].set(feed[level - 1] @ links[level])
    theta_rows = jnp.einsum("kij,jl->kil", cond_feed, links[0]).reshape(K * d, d)
    A = A.at[L * d :, :d].set(theta_rows)
    c = jnp.concatenate([shift.reshape(-1), cond_shift.reshape(-1)])
    D = block_diag(sym(jnp.concatenate([lat_cov, cond_cov], axis=0)))
    T = jnp.eye(N, dtype=shift.dtype) - A
    mean = jnp.linalg.solve(T, c)
    left = jnp.linalg.solve(T, D)
    cov = jnp.linalg.solve(T, left.T).T
    return Gaussian(mean, sym(cov))


def recursion_gaussian(prior: DiffusionPrior, stats: SufficientStats, method: str = "exact"):
    """The Gaussian a linear diffusion posterior recursion defines for statistics ``stats``.

    ``method="exact"`` is :func:`recursive_joint_posterior`; ``method="dts"`` is the dTS
    approximation (W_ℓ dropped from the upward recursion, kept in the downward means),
    which for linear links is Gaussian too. Ordered (ψ_1, ..., ψ_L, θ_1, ..., θ_K).
    """
    act, lat = latent_terms(prior, stats, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    cond_feed = jnp.einsum("kij,kjl->kil", act.cond_cov, S)
    cond_shift = jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    return structural_gaussian(
        prior.links, lat.feed, lat.shift, lat.cov, cond_feed, cond_shift, act.cond_cov
    )
