r"""NumPyro model of the mixed-effect bandit (Aouali, Kveton, Katariya 2023).

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

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from ppl_bandits._checks import check_finite, check_shape, is_traced
from ppl_bandits.spec import MixedEffectPrior, mixing_matrices

__all__ = [
    "LIKELIHOODS",
    "PARAMETERIZATIONS",
    "check_history",
    "mixed_effect_model",
    "sample_mixed_effect_parameters",
]

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
    >>> from ppl_bandits.spec import fig2_prior
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
