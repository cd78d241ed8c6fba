r"""Prior specification of the mixed-effect bandit: one object for the model and the fast path.

The generative process (Aouali, Kveton, Katariya 2023) with ``K`` actions, ``L`` effects
and context dimension ``d``; the effects are stacked as
:math:`\Psi = (\psi_1, \dots, \psi_L) \in \mathbb{R}^{Ld}` (block :math:`\ell` is
``Psi[l*d:(l+1)*d]``):

.. math::

    \Psi \sim \mathcal{N}(\mu_\Psi, \Sigma_\Psi), \qquad
    \theta_i \mid \Psi \sim \mathcal{N}(M_i \Psi, \Sigma_{0,i}), \qquad
    M_i = [C_{i,1} \cdots C_{i,L}] \in \mathbb{R}^{d \times Ld},

with :math:`C_{i,\ell} = b_{i\ell} I_d` in the mixing-weight case. Rewards are
:math:`Y \sim \mathcal{N}(x^\top\theta_A, \sigma^2)` or
:math:`\mathrm{Bernoulli}(\mathrm{sigmoid}(x^\top\theta_A))`.

The same :class:`MixedEffectPrior` is read by :mod:`models.mixed_effect` (the NumPyro
model) and by :mod:`ppl_bandits.mixed_effect` (the closed-form posteriors), so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits._checks import as_positive_definite, check_finite, check_shape, is_traced

__all__ = [
    "MixedEffectPrior",
    "fig2_prior",
    "hierarchical_prior",
    "mixed_effect_prior",
    "mixing_matrices",
]


class MixedEffectPrior(NamedTuple):
    """Prior of the mixed-effect bandit (all fields are arrays; shapes below).

    Build it with :func:`mixed_effect_prior`, which validates its inputs.
    """

    mu_psi: jax.Array
    """(L*d,) prior mean of the stacked effects Ψ."""
    sigma_psi: jax.Array
    """(L*d, L*d) prior covariance of Ψ."""
    mixing: jax.Array
    """(K, L, d, d) mixing matrices C_{iℓ}; b_{iℓ} I_d in the mixing-weight case."""
    sigma0: jax.Array
    """(K, d, d) conditional covariance Σ_{0,i} of θ_i given Ψ."""
    noise_sd: jax.Array
    """() reward noise standard deviation σ (used by Gaussian rewards only)."""

    @property
    def num_actions(self) -> int:
        return self.mixing.shape[0]

    @property
    def num_effects(self) -> int:
        return self.mixing.shape[1]

    @property
    def dim(self) -> int:
        return self.mixing.shape[2]


def mixing_matrices(prior: MixedEffectPrior) -> jax.Array:
    """The (K, d, L*d) matrices M_i = [C_{i,1} ... C_{i,L}].

    >>> p = mixed_effect_prior(jnp.zeros(4), jnp.eye(4), weights=jnp.array([[1.0, 2.0]]),
    ...                        sigma0=jnp.eye(2), noise_sd=1.0)
    >>> mixing_matrices(p)[0]
    Array([[1., 0., 2., 0.],
           [0., 1., 0., 2.]], dtype=float32)
    """
    K, L, d, _ = prior.mixing.shape
    return jnp.transpose(prior.mixing, (0, 2, 1, 3)).reshape(K, d, L * d)


def mixed_effect_prior(
    mu_psi,
    sigma_psi,
    *,
    weights=None,
    mixing=None,
    sigma0,
    noise_sd=1.0,
) -> MixedEffectPrior:
    """Build and validate a :class:`MixedEffectPrior`.

    Parameters
    ----------
    mu_psi : array (L*d,)
        Prior mean of the stacked effects.
    sigma_psi : array (L*d, L*d)
        Prior covariance of the stacked effects; symmetric positive definite.
    weights : array (K, L), optional
        Mixing weights b_{iℓ}; gives C_{iℓ} = b_{iℓ} I_d. Exactly one of ``weights`` and
        ``mixing`` is given.
    mixing : array (K, L, d, d), optional
        General mixing matrices C_{iℓ} (the paper's App. E.2).
    sigma0 : array (d, d) or (K, d, d)
        Conditional covariance of each θ_i given Ψ; a single (d, d) matrix is shared by
        all actions.
    noise_sd : float
        Reward noise standard deviation σ > 0.

    Raises
    ------
    ValueError
        Naming the argument, when a shape does not match, an entry is not finite, a
        covariance is not symmetric positive definite or ``noise_sd`` is not positive.

    Examples
    --------
    >>> p = mixed_effect_prior(jnp.zeros(6), 3 * jnp.eye(6), weights=jnp.ones((5, 3)),
    ...                        sigma0=jnp.eye(2))
    >>> p.num_actions, p.num_effects, p.dim
    (5, 3, 2)
    """
    if (weights is None) == (mixing is None):
        raise ValueError("give exactly one of weights (K, L) and mixing (K, L, d, d)")
    mu_psi = jnp.asarray(mu_psi)
    dtype = jnp.result_type(mu_psi.dtype, jnp.float32)
    mu_psi = mu_psi.astype(dtype)
    sigma_psi = jnp.asarray(sigma_psi, dtype)
    sigma0 = jnp.asarray(sigma0, dtype)
    noise_sd = jnp.asarray(noise_sd, dtype)
    if mixing is None:
        weights = jnp.asarray(weights, dtype)
        if weights.ndim != 2:
            raise ValueError(f"weights has shape {weights.shape}; expected (K, L)")
        K, L = weights.shape
        if mu_psi.ndim != 1 or mu_psi.shape[0] % L:
            raise ValueError(
                f"mu_psi has shape {mu_psi.shape}; expected (L*d,) with L={L} from weights"
            )
        d = mu_psi.shape[0] // L
        mixing = weights[:, :, None, None] * jnp.eye(d, dtype=dtype)
    else:
        mixing = jnp.asarray(mixing, dtype)
        if mixing.ndim != 4 or mixing.shape[2] != mixing.shape[3]:
            raise ValueError(f"mixing has shape {mixing.shape}; expected (K, L, d, d)")
        K, L, d, _ = mixing.shape
    if sigma0.ndim == 2:
        sigma0 = jnp.broadcast_to(sigma0, (K, *sigma0.shape))
    prior = MixedEffectPrior(mu_psi, sigma_psi, mixing, sigma0, noise_sd)
    if not is_traced(*prior):
        validate_prior(prior)
    return prior


def validate_prior(prior: MixedEffectPrior) -> None:
    """Check shapes, finiteness and positive definiteness; raise ``ValueError`` naming the field."""
    K, L, d, _ = prior.mixing.shape
    check_shape("mu_psi", prior.mu_psi, (L * d,))
    check_shape("sigma_psi", prior.sigma_psi, (L * d, L * d))
    check_shape("mixing", prior.mixing, (K, L, d, d))
    check_shape("sigma0", prior.sigma0, (K, d, d))
    check_shape("noise_sd", prior.noise_sd, ())
    check_finite("mu_psi", prior.mu_psi)
    check_finite("mixing", prior.mixing)
    as_positive_definite("sigma_psi", prior.sigma_psi)
    as_positive_definite("sigma0", prior.sigma0)
    sd = float(prior.noise_sd)
    if not np.isfinite(sd) or sd <= 0:
        raise ValueError(f"noise_sd is {sd}; expected a finite positive number")


def fig2_prior(key, num_actions: int = 100, num_effects: int = 3, dim: int = 2) -> MixedEffectPrior:
    """The synthetic prior of the paper's Fig. 2, with fresh mixing weights.

    μ_Ψ = 0, Σ_Ψ = 3 I, Σ_0 = I, σ = 1, and b_{iℓ} ~ U[-1, 1] drawn from ``key`` (a new
    draw per run). Jit- and vmap-friendly (no validation of traced arrays).
    """
    Ld = num_effects * dim
    b = jax.random.uniform(key, (num_actions, num_effects), minval=-1.0, maxval=1.0)
    return mixed_effect_prior(
        jnp.zeros(Ld), 3.0 * jnp.eye(Ld), weights=b, sigma0=jnp.eye(dim), noise_sd=1.0
    )


def hierarchical_prior(
    num_actions: int, dim: int, *, psi_var: float = 3.0, sigma0=None, noise_sd=1.0, dtype=None
) -> MixedEffectPrior:
    """The one-effect hierarchy of HierTS (Hong et al. 2022).

    ψ ~ N(0, psi_var I) and θ_i | ψ ~ N(ψ, Σ_0): the mixed-effect prior with L = 1 and
    every weight b_i = 1.
    """
    dtype = dtype or jnp.result_type(float)
    sigma0 = jnp.eye(dim, dtype=dtype) if sigma0 is None else sigma0
    return mixed_effect_prior(
        jnp.zeros(dim, dtype),
        psi_var * jnp.eye(dim, dtype=dtype),
        weights=jnp.ones((num_actions, 1), dtype),
        sigma0=sigma0,
        noise_sd=noise_sd,
    )
