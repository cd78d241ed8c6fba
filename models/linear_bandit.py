r"""NumPyro model of the linear-Gaussian contextual bandit: the reference for LinTS-shared.

.. math::

    \theta^* \sim \mathcal{N}(\mu, \Sigma), \qquad
    Y_t \mid x_t, \theta^* \sim \mathcal{N}(x_t^\top\theta^*, \sigma^2),

with one shared parameter :math:`\theta^* \in \mathbb{R}^d` for every arm; ``x_t`` is the
context of the arm played in round ``t``. Sites: ``theta`` (d,), ``y`` (n,).

One :class:`LinearBanditPrior` feeds this model and the closed-form posterior of
:func:`ppl_bandits.linear_contextual.baselines.shared_lin_ts`, so the two cannot drift apart.
With ``rewards=None`` the model is the prior predictive (it simulates rewards).
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
    "LinearBanditPrior",
    "isotropic_linear_bandit_prior",
    "linear_bandit_model",
    "linear_bandit_prior",
    "sample_linear_bandit_parameters",
]


class LinearBanditPrior(NamedTuple):
    """Prior of the linear-Gaussian contextual bandit (all fields are arrays).

    Build it with :func:`linear_bandit_prior`, which validates its inputs.
    """

    mu: jax.Array
    """(d,) prior mean μ of θ*."""
    sigma: jax.Array
    """(d, d) prior covariance Σ of θ*; symmetric positive definite."""
    noise_sd: jax.Array
    """() reward noise standard deviation σ > 0."""

    @property
    def dim(self) -> int:
        return self.mu.shape[-1]


def linear_bandit_prior(mu, sigma, noise_sd=1.0) -> LinearBanditPrior:
    """Build and validate a :class:`LinearBanditPrior`.

    Parameters
    ----------
    mu : array (d,)
        Prior mean of θ*.
    sigma : array (d, d)
        Prior covariance of θ*; symmetric positive definite.
    noise_sd : float
        Reward noise standard deviation σ > 0.

    Raises
    ------
    ValueError
        Naming the argument, when a shape does not match, an entry is not finite, ``sigma``
        is not symmetric positive definite or ``noise_sd`` is not positive. Traced
        arguments (inside ``jax.jit``) are not checked.

    Examples
    --------
    >>> p = linear_bandit_prior(jnp.zeros(3), jnp.eye(3), noise_sd=0.5)
    >>> p.dim, float(p.noise_sd)
    (3, 0.5)
    >>> linear_bandit_prior(jnp.zeros(3), jnp.eye(2))
    Traceback (most recent call last):
    ...
    ValueError: sigma has shape (2, 2); expected (3, 3)
    """
    mu = jnp.asarray(mu)
    dtype = jnp.result_type(mu.dtype, jnp.float32)
    mu = mu.astype(dtype)
    sigma = jnp.asarray(sigma, dtype)
    noise_sd = jnp.asarray(noise_sd, dtype)
    prior = LinearBanditPrior(mu, sigma, noise_sd)
    if not is_traced(*prior):
        if mu.ndim != 1:
            raise ValueError(f"mu has shape {mu.shape}; expected (d,)")
        d = mu.shape[0]
        check_shape("sigma", sigma, (d, d))
        check_shape("noise_sd", noise_sd, ())
        check_finite("mu", mu)
        as_positive_definite("sigma", sigma)
        sd = float(noise_sd)
        if not np.isfinite(sd) or sd <= 0:
            raise ValueError(f"noise_sd is {sd}; expected a finite positive number")
    return prior


def isotropic_linear_bandit_prior(
    d: int, *, theta_var: float | None = None, noise_sd: float = 1.0, dtype=None
) -> LinearBanditPrior:
    """θ* ~ N(0, theta_var I_d); ``theta_var`` defaults to 1/d, so that E‖θ*‖² = 1.

    Examples
    --------
    >>> p = isotropic_linear_bandit_prior(4)
    >>> p.sigma[0, 0]
    Array(0.25, dtype=float32)
    """
    if int(d) != d or d < 1:
        raise ValueError(f"d is {d!r}; expected an integer >= 1")
    theta_var = 1.0 / d if theta_var is None else theta_var
    if not np.isfinite(theta_var) or theta_var <= 0:
        raise ValueError(f"theta_var is {theta_var}; expected a finite positive number")
    dtype = dtype or jnp.result_type(float)
    return linear_bandit_prior(
        jnp.zeros(d, dtype), theta_var * jnp.eye(d, dtype=dtype), jnp.asarray(noise_sd, dtype)
    )


def _check_history(contexts, rewards, d: int) -> None:
    if contexts is None:
        if rewards is not None:
            raise ValueError("contexts is None but rewards were given; expected both or neither")
        return
    if is_traced(contexts, rewards):
        return
    check_shape("contexts", contexts, (None, d))
    check_finite("contexts", contexts)
    if rewards is not None:
        check_shape("rewards", rewards, (np.shape(contexts)[0],))
        check_finite("rewards", rewards)


def linear_bandit_model(prior: LinearBanditPrior, contexts=None, rewards=None):
    """The linear-Gaussian bandit as a NumPyro model.

    Parameters
    ----------
    prior : LinearBanditPrior
    contexts : array (n, d) or None
        Context of the played arm in each round; None samples θ* only.
    rewards : array (n,) or None
        Observed rewards; None gives the prior predictive (rewards are sampled).

    Returns
    -------
    theta : array (d,)

    Examples
    --------
    >>> prior = isotropic_linear_bandit_prior(3, noise_sd=0.1)
    >>> x = jnp.eye(3)
    >>> tr = handlers.trace(handlers.seed(linear_bandit_model, 0)).get_trace(prior, x)
    >>> tr["theta"]["value"].shape, tr["y"]["value"].shape
    ((3,), (3,))
    """
    d = prior.mu.shape[-1]
    _check_history(contexts, rewards, d)
    chol = jnp.linalg.cholesky(prior.sigma)
    theta = numpyro.sample("theta", dist.MultivariateNormal(prior.mu, scale_tril=chol))
    if contexts is None:
        return theta
    means = contexts @ theta
    with numpyro.plate("rounds", means.shape[0], dim=-1):
        numpyro.sample("y", dist.Normal(means, prior.noise_sd), obs=rewards)
    return theta


def sample_linear_bandit_parameters(key, prior: LinearBanditPrior):
    """Draw θ* (d,) from the model's prior: the environment's true parameter.

    Jit- and vmap-friendly; it runs :func:`linear_bandit_model` itself, so environments are
    simulated from exactly the model that defines the Bayesian reference.

    Examples
    --------
    >>> prior = isotropic_linear_bandit_prior(5)
    >>> sample_linear_bandit_parameters(jax.random.key(0), prior).shape
    (5,)
    """
    tr = handlers.trace(handlers.seed(linear_bandit_model, key)).get_trace(prior)
    return tr["theta"]["value"]
