r"""Closed-form posteriors of the mixed-effect bandit (Aouali, Kveton, Katariya 2023).

Notation (``spec.py``): effects :math:`\Psi\in\mathbb{R}^{Ld}`, action parameters
:math:`\theta_i\in\mathbb{R}^d`, mixing :math:`M_i`, :math:`S_i = \Sigma_{0,i}^{-1}`.
Sufficient statistics of action :math:`i` with rounds :math:`S_i`:

.. math::

    G_i = \sigma^{-2}\sum_{s} X_s X_s^\top, \qquad B_i = \sigma^{-2}\sum_s X_s Y_s .

For logistic rewards :math:`(G_i, B_i)` are the precision and natural mean of the Laplace
likelihood approximation (:mod:`ppl_bandits.core.laplace`); every formula below is unchanged.

Action :math:`i`'s data, with :math:`\theta_i` integrated out, are a Gaussian observation
of :math:`M_i\Psi` with precision :math:`P_i` and natural mean :math:`q_i`. With
:math:`\tilde\Sigma_i = (S_i + G_i)^{-1}` the identities

.. math::

    P_i = S_i - S_i\tilde\Sigma_i S_i = S_i\tilde\Sigma_i G_i, \qquad
    q_i = S_i\tilde\Sigma_i B_i

hold also for singular :math:`G_i` (an unplayed action has :math:`P_i = 0`,
:math:`q_i = 0`): :math:`G_i^{-1}` is never formed and no jitter is added. Then

.. math::

    \bar\Sigma^{-1} = \Sigma_\Psi^{-1} + \sum_i M_i^\top P_i M_i, \qquad
    \bar\mu = \bar\Sigma\Big(\Sigma_\Psi^{-1}\mu_\Psi + \sum_i M_i^\top q_i\Big),

    \theta_i \mid \Psi, \text{data} \sim
    \mathcal{N}\big(\tilde\Sigma_i(S_i M_i\Psi + B_i),\ \tilde\Sigma_i\big).

Everything here is a pure function of arrays; ``jax.jit`` and ``jax.vmap`` accept it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from models.mixed_effect import MixedEffectPrior, mixing_matrices
from ppl_bandits.core.likelihood import SufficientStats
from ppl_bandits.core.linalg import Gaussian, chol_inverse, mvn_logpdf, sym

__all__ = [
    "FACTORED_VARIANTS",
    "ActionTerms",
    "action_terms",
    "conditional_action_posterior",
    "effect_posterior",
    "factored_effect_posterior",
    "factored_from_natural",
    "hierarchical_joint_posterior",
    "joint_posterior",
    "joint_prior",
    "log_posterior_density",
    "marginal_action_posterior",
    "marginal_prior",
]


FACTORED_VARIANTS = ("mean-field", "published")


class ActionTerms(NamedTuple):
    """What action i's data say, derived from (S_i, G_i, B_i)."""

    cond_cov: jax.Array
    """(..., d, d) Σ̃_i = (S_i + G_i)⁻¹, covariance of θ_i given Ψ and the data."""
    P: jax.Array
    """(..., d, d) precision of the Gaussian observation of M_i Ψ."""
    q: jax.Array
    """(..., d) natural mean of that observation."""


def action_terms(S: jax.Array, G: jax.Array, B: jax.Array) -> ActionTerms:
    """Σ̃ = (S + G)⁻¹, P = S Σ̃ G and q = S Σ̃ B, batched over leading axes.

    ``S`` is the prior precision Σ_0⁻¹. P = S Σ̃ G equals S − S Σ̃ S without the
    cancellation, and both are exact for singular ``G``.
    """
    cond_cov = chol_inverse(S + G)
    SC = S @ cond_cov
    P = sym(SC @ G)
    q = jnp.einsum("...ij,...j->...i", SC, B)
    return ActionTerms(cond_cov, P, q)


def _prior_precisions(prior: MixedEffectPrior):
    S = chol_inverse(prior.sigma0)
    sigma_psi_inv = chol_inverse(prior.sigma_psi)
    return S, sigma_psi_inv


def _effect_natural(prior: MixedEffectPrior, stats: SufficientStats):
    """Effect posterior precision Λ̄ and natural mean η = Λ̄ μ̄."""
    S, sigma_psi_inv = _prior_precisions(prior)
    terms = action_terms(S, stats.G, stats.B)
    M = mixing_matrices(prior)
    prec = sigma_psi_inv + jnp.einsum("kdi,kde,kej->ij", M, terms.P, M)
    nat = sigma_psi_inv @ prior.mu_psi + jnp.einsum("kdi,kd->i", M, terms.q)
    return sym(prec), nat, terms, S, M


def effect_posterior(prior: MixedEffectPrior, stats: SufficientStats) -> Gaussian:
    """The effect posterior Q = N(μ̄, Σ̄) of the stacked effects Ψ (L*d,).

    Examples
    --------
    With no data it is the prior:

    >>> from models.mixed_effect import fig2_prior
    >>> p = fig2_prior(jax.random.key(0), 5)
    >>> from ppl_bandits.core.likelihood import empty_stats
    >>> q = effect_posterior(p, empty_stats(p))
    >>> bool(jnp.allclose(q.cov, p.sigma_psi)), bool(jnp.allclose(q.mean, p.mu_psi))
    (True, True)
    """
    prec, nat, *_ = _effect_natural(prior, stats)
    chol = jnp.linalg.cholesky(prec)
    mean = cho_solve((chol, True), nat)
    return Gaussian(mean, chol_inverse(prec))


def conditional_action_posterior(
    prior: MixedEffectPrior, stats: SufficientStats, psi: jax.Array
) -> Gaussian:
    """θ_i | Ψ, data ~ N(Σ̃_i (S_i M_i Ψ + B_i), Σ̃_i) for every action.

    Returns means (K, d) and covariances (K, d, d).
    """
    S, _ = _prior_precisions(prior)
    terms = action_terms(S, stats.G, stats.B)
    loc = jnp.einsum("kde,e->kd", mixing_matrices(prior), psi)
    mean = jnp.einsum("kij,kj->ki", terms.cond_cov, jnp.einsum("kij,kj->ki", S, loc) + stats.B)
    return Gaussian(mean, terms.cond_cov)


def _gains(terms: ActionTerms, S, M):
    """A_i = Σ̃_i S_i M_i (K, d, Ld): the conditional mean of θ_i is A_i Ψ + Σ̃_i B_i."""
    return jnp.einsum("kij,kjl,kle->kie", terms.cond_cov, S, M)


def marginal_action_posterior(prior: MixedEffectPrior, stats: SufficientStats) -> Gaussian:
    """θ_i | data, Ψ integrated out: means (K, d) and covariances (K, d, d).

    mean Σ̃_i(S_i M_i μ̄ + B_i), covariance Σ̃_i + Σ̃_i S_i M_i Σ̄ M_iᵀ S_i Σ̃_i.
    """
    prec, nat, terms, S, M = _effect_natural(prior, stats)
    eff_cov = chol_inverse(prec)
    eff_mean = eff_cov @ nat
    A = _gains(terms, S, M)
    shift = jnp.einsum("kij,kj->ki", terms.cond_cov, stats.B)
    mean = jnp.einsum("kde,e->kd", A, eff_mean) + shift
    cov = terms.cond_cov + jnp.einsum("kie,ef,kjf->kij", A, eff_cov, A)
    return Gaussian(mean, sym(cov))


def hierarchical_joint_posterior(prior: MixedEffectPrior, stats: SufficientStats) -> Gaussian:
    """The joint posterior of (Ψ, θ_1, ..., θ_K) assembled from the hierarchical formulas.

    Cov(θ_i, Ψ) = A_i Σ̄ and Cov(θ_i, θ_j) = A_i Σ̄ A_jᵀ + δ_ij Σ̃_i with A_i = Σ̃_i S_i M_i.
    Used to compare the fast path with :func:`joint_posterior` in full, cross-covariances
    included. O(K²d²) memory: for audits, not for agents.
    """
    K, L, d, _ = prior.mixing.shape
    prec, nat, terms, S, M = _effect_natural(prior, stats)
    eff_cov = chol_inverse(prec)
    eff_mean = eff_cov @ nat
    A = _gains(terms, S, M).reshape(K * d, L * d)
    shift = jnp.einsum("kij,kj->ki", terms.cond_cov, stats.B).reshape(K * d)
    theta_mean = A @ eff_mean + shift
    cross = A @ eff_cov
    block = jax.scipy.linalg.block_diag(*terms.cond_cov) if K > 0 else jnp.zeros((0, 0))
    theta_cov = cross @ A.T + block
    mean = jnp.concatenate([eff_mean, theta_mean])
    cov = jnp.block([[eff_cov, cross.T], [cross, theta_cov]])
    return Gaussian(mean, sym(cov))


def joint_prior(prior: MixedEffectPrior) -> Gaussian:
    """The prior of (Ψ, θ_1, ..., θ_K) as one Gaussian of dimension (L + K) d."""
    K, L, d, _ = prior.mixing.shape
    M = mixing_matrices(prior).reshape(K * d, L * d)
    cross = M @ prior.sigma_psi
    theta_cov = cross @ M.T + jax.scipy.linalg.block_diag(*prior.sigma0)
    mean = jnp.concatenate([prior.mu_psi, M @ prior.mu_psi])
    cov = jnp.block([[prior.sigma_psi, cross.T], [cross, theta_cov]])
    return Gaussian(mean, cov)


def joint_posterior(prior: MixedEffectPrior, stats: SufficientStats) -> Gaussian:
    """Brute-force joint posterior of (Ψ, θ_1, ..., θ_K): the exact reference, O(K³d³).

    The prior covariance of all (L + K) d parameters is built explicitly and inverted; the
    data add blockdiag(0, G_1, ..., G_K) to the precision and (0, B_1, ..., B_K) to the
    natural mean. No hierarchical identity is used, so agreement with
    :func:`hierarchical_joint_posterior` is a real check.
    """
    K, L, d, _ = prior.mixing.shape
    p0 = joint_prior(prior)
    prec0 = chol_inverse(p0.cov)
    data_prec = jax.scipy.linalg.block_diag(jnp.zeros((L * d, L * d), p0.cov.dtype), *stats.G)
    data_nat = jnp.concatenate([jnp.zeros(L * d, p0.cov.dtype), stats.B.reshape(K * d)])
    prec = sym(prec0 + data_prec)
    chol = jnp.linalg.cholesky(prec)
    mean = cho_solve((chol, True), prec0 @ p0.mean + data_nat)
    return Gaussian(mean, chol_inverse(prec))


def log_posterior_density(
    prior: MixedEffectPrior, stats: SufficientStats, psi: jax.Array, theta: jax.Array
) -> jax.Array:
    """log p(Ψ, θ | data) by the hierarchical factorization log Q(Ψ) + Σ_i log P_i(θ_i | Ψ).

    The exact check compares it with the NumPyro model's joint
    log density: their difference must not depend on (Ψ, θ).
    """
    q = effect_posterior(prior, stats)
    cond = conditional_action_posterior(prior, stats, psi)
    return mvn_logpdf(psi, q.mean, q.cov) + jnp.sum(mvn_logpdf(theta, cond.mean, cond.cov))


def factored_effect_posterior(
    prior: MixedEffectPrior, stats: SufficientStats, variant: str = "mean-field"
) -> Gaussian:
    r"""Factored effect posterior (meTS-Fa, paper App. E.1): one Gaussian per effect.

    Factor ℓ is :math:`\mathcal{N}(m_\ell, \bar\Lambda_{\ell\ell}^{-1})` with
    :math:`\bar\Lambda = \bar\Sigma^{-1}`. The variants differ in the mean:

    - ``"mean-field"``: :math:`m_\ell = \bar\mu_\ell`, the exact joint mean; this is the
      KL(q || p)-optimal product of Gaussians (the paper's own derivation).
    - ``"published"``: :math:`m_\ell = \bar\Lambda_{\ell\ell}^{-1}\eta_\ell` with
      :math:`\eta = \Sigma_\Psi^{-1}\mu_\Psi + \sum_i M_i^\top q_i` (the paper's eq. 43
      and the authors' code). It drops :math:`-\sum_{m\ne\ell}\bar\Lambda_{\ell m}\bar\mu_m`
      and so is biased whenever actions couple effects.

    Returns means (L, d) and covariances (L, d, d).
    """
    if variant not in FACTORED_VARIANTS:
        raise ValueError(f"variant is {variant!r}; expected one of {FACTORED_VARIANTS}")
    _, L, d, _ = prior.mixing.shape
    prec, nat, *_ = _effect_natural(prior, stats)
    return factored_from_natural(prec, nat, L, d, variant)


def factored_from_natural(prec, nat, L: int, d: int, variant: str) -> Gaussian:
    blocks = prec.reshape(L, d, L, d)
    diag = jnp.stack([blocks[l, :, l, :] for l in range(L)])
    covs = chol_inverse(diag)
    if variant == "mean-field":
        chol = jnp.linalg.cholesky(prec)
        means = cho_solve((chol, True), nat).reshape(L, d)
    else:
        means = jnp.einsum("lij,lj->li", covs, nat.reshape(L, d))
    return Gaussian(means, covs)


def marginal_prior(prior: MixedEffectPrior):
    """Marginal prior of each θ_i.

    Mean M_i μ_Ψ (K, d) and covariance Σ_{0,i} + M_i Σ_Ψ M_iᵀ (K, d, d).
    """
    M = mixing_matrices(prior)
    mean = jnp.einsum("kde,e->kd", M, prior.mu_psi)
    cov = prior.sigma0 + jnp.einsum("kde,ef,kgf->kdg", M, prior.sigma_psi, M)
    return mean, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
