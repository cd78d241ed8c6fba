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
model) and by :mod:`ppl_bandits.mixed_effect.posterior` (the closed-form posteriors), so the two
cannot drift apart.

The NumPyro model:

.. math::

    \Psi \sim \mathcal{N}(\mu_\Psi, \Sigma_\Psi), \quad
    \theta_i \mid \Psi \sim \mathcal{N}(M_i\Psi, \Sigma_{0,i}), \quad
    Y_t \mid X_t, \theta \sim \mathcal{N}(X_t^\top\theta_{A_t}, \sigma^2)
    \ \text{or}\ \mathrm{Bernoulli}(\mathrm{sigmoid}(X_t^\top\theta_{A_t})).

Sites: ``psi`` (L*d,), ``theta`` (K, d), ``y`` (n,). The non-centred parameterization
samples standard normals ``psi_raw`` and ``theta_raw`` and exposes ``psi`` and ``theta``
as deterministic sites; both parameterizations define the same joint distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from models.checks import as_positive_definite, check_finite, check_shape, is_traced

__all__ = [
    "LIKELIHOODS",
    "PARAMETERIZATIONS",
    "MixedEffectPrior",
    "check_history",
    "fig2_prior",
    "hierarchical_prior",
    "mixed_effect_model",
    "mixed_effect_prior",
    "mixing_matrices",
    "sample_mixed_effect_parameters",
    "validate_prior",
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


LIKELIHOODS = ("gaussian", "logistic")
PARAMETERIZATIONS = ("centered", "noncentered")


def check_history(contexts, actions, rewards, num_actions: int, dim: int, likelihood: str) -> None:
    """Validate a bandit history at the boundary (skipped on traced arrays).

    ``contexts`` (n, d) are the played contexts, ``actions`` (n,) integers in [0, K),
    ``rewards`` (n,) or None; logistic rewards must be 0 or 1.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood is {likelihood!r}; expected one of {LIKELIHOODS}")
    if contexts is None:
        if actions is not None or rewards is not None:
            raise ValueError("contexts is None but actions or rewards were given")
        return
    if is_traced(contexts, actions, rewards):
        return
    n = np.shape(contexts)[0] if np.ndim(contexts) else -1
    check_shape("contexts", contexts, (None, dim))
    check_finite("contexts", contexts)
    check_shape("actions", actions, (n,))
    acts = np.asarray(actions)
    if not np.issubdtype(acts.dtype, np.integer):
        raise ValueError(f"actions has dtype {acts.dtype}; expected integers")
    if acts.size and (acts.min() < 0 or acts.max() >= num_actions):
        raise ValueError(
            f"actions has values in [{acts.min()}, {acts.max()}]; expected [0, {num_actions})"
        )
    if rewards is not None:
        check_shape("rewards", rewards, (n,))
        check_finite("rewards", rewards)
        if likelihood == "logistic":
            r = np.asarray(rewards)
            if not np.all((r == 0) | (r == 1)):
                raise ValueError("rewards must be 0 or 1 for the logistic likelihood")


def mixed_effect_model(
    prior: MixedEffectPrior,
    contexts=None,
    actions=None,
    rewards=None,
    *,
    likelihood: str = "gaussian",
    parameterization: str = "centered",
):
    """The mixed-effect bandit as a NumPyro model.

    Parameters
    ----------
    prior : MixedEffectPrior
    contexts : array (n, d) or None
        Context of the played action in each round; None samples the parameters only.
    actions : int array (n,) or None
    rewards : array (n,) or None
        Observed rewards; None gives the prior predictive.
    likelihood : {"gaussian", "logistic"}
    parameterization : {"centered", "noncentered"}

    Examples
    --------
    >>> import jax
    >>> from models.mixed_effect import fig2_prior
    >>> prior = fig2_prior(jax.random.key(0), num_actions=4)
    >>> tr = handlers.trace(handlers.seed(mixed_effect_model, 1)).get_trace(prior)
    >>> tr["psi"]["value"].shape, tr["theta"]["value"].shape
    ((6,), (4, 2))
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization is {parameterization!r}; expected one of {PARAMETERIZATIONS}"
        )
    K, L, d, _ = prior.mixing.shape
    check_history(contexts, actions, rewards, K, d, likelihood)
    chol_psi = jnp.linalg.cholesky(prior.sigma_psi)
    chol0 = jnp.linalg.cholesky(prior.sigma0)
    if parameterization == "centered":
        psi = numpyro.sample("psi", dist.MultivariateNormal(prior.mu_psi, scale_tril=chol_psi))
    else:
        raw = numpyro.sample("psi_raw", dist.Normal(0.0, 1.0).expand([L * d]).to_event(1))
        psi = numpyro.deterministic("psi", prior.mu_psi + chol_psi @ raw)
    loc = jnp.einsum("kde,e->kd", mixing_matrices(prior), psi)
    with numpyro.plate("actions", K, dim=-1):
        if parameterization == "centered":
            theta = numpyro.sample("theta", dist.MultivariateNormal(loc, scale_tril=chol0))
        else:
            raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            theta = numpyro.deterministic("theta", loc + jnp.einsum("kde,ke->kd", chol0, raw))
    if contexts is None or contexts.shape[0] == 0:
        return  # no rounds observed: the posterior is the prior
    logits = jnp.sum(contexts * theta[actions], axis=-1)
    with numpyro.plate("rounds", logits.shape[0], dim=-1):
        if likelihood == "gaussian":
            numpyro.sample("y", dist.Normal(logits, prior.noise_sd), obs=rewards)
        else:
            numpyro.sample("y", dist.Bernoulli(logits=logits), obs=rewards)


def sample_mixed_effect_parameters(key, prior: MixedEffectPrior):
    """Draw (Ψ, θ) from the model's prior: the environment's true parameters.

    Jit- and vmap-friendly; it runs :func:`mixed_effect_model` itself, so environments
    are simulated from exactly the model that defines the ground truth.

    Returns
    -------
    psi : (L*d,), theta : (K, d)
    """
    tr = handlers.trace(handlers.seed(mixed_effect_model, key)).get_trace(prior)
    return tr["psi"]["value"], tr["theta"]["value"]
