"""The N-arm linear contextual bandit of the HCSA+TS comparison (Kim 2025, Sec. 6): iid masked,
drifting and low-rank context sequences.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.linear_bandit import (
    isotropic_linear_bandit_prior,
    sample_linear_bandit_parameters,
)
from ppl_bandits.core.types import Environment
from ppl_bandits.linear_contextual.hcsa import check_positive, check_probability, serial_after

__all__ = [
    "ENVIRONMENT_KINDS",
    "THETA_PRIORS",
    "LinearContextualParams",
    "check_int",
    "hcsa_environment",
]


ENVIRONMENT_KINDS = ("iid", "drift", "low_rank")

THETA_PRIORS = ("gaussian", "uniform")


class LinearContextualParams(NamedTuple):
    """True parameters of one problem."""

    theta: jax.Array
    """(d,) θ*, shared by all arms."""
    basis: jax.Array
    """(d, k) orthonormal basis of the context subspace (k = rank for ``"low_rank"``, else
    the identity with k = d)."""
    drift_direction: jax.Array
    """(d,) signs ±1 of the drifting mean (``"drift"``)."""
    noise_sd: jax.Array
    """() reward noise σ."""


def check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {low}")
    return int(value)


def hcsa_environment(
    d: int = 20,
    N: int = 20,
    *,
    kind: str = "iid",
    mask_prob: float = 0.5,
    mask_dims: int | None = None,
    context_mean: float = 0.0,
    scale_range: tuple[float, float] = (0.0, 1.0),
    theta_prior: str = "gaussian",
    theta_var: float | None = None,
    noise_sd: float = 1.0,
    rank: int | None = None,
    drift_amplitude: float = 1.0,
    drift_period: float = 1000.0,
    name: str | None = None,
) -> Environment:
    r"""The linear contextual bandit of the HCSA+TS experiments (Sec. 6) and two non-iid variants.

    Parameters
    ----------
    d : int >= 1
        Context dimension (the papers use 20 and 30).
    N : int >= 2
        Number of arms (the papers use 10 and 20).
    kind : {"iid", "drift", "low_rank"}
        Context sequence (module docstring).
    mask_prob : float in [0, 1]
        Probability that the last ``mask_dims`` entries of every context are zeroed in a round.
    mask_dims : int in [0, d), optional
        Number of masked trailing entries; default ``d // 2`` (the paper's number was lost).
    context_mean : float
        μ of the N(μ, 1) entries.
    scale_range : (a, b) with 0 <= a < b
        Each normalized context is scaled by U(a, b).
    theta_prior : {"gaussian", "uniform"}
        θ* ~ N(0, theta_var I) drawn from the NumPyro model, or U(−1/√d, 1/√d)^d (DRTS,
        HyRan). The agents are told :class:`models.linear_bandit.LinearBanditPrior` with
        mean 0 and covariance theta_var I (gaussian) or 1/(3d) I (uniform: its moments).
    theta_var : float, optional
        Default 1/d, so that E‖θ*‖² = 1.
    noise_sd : float > 0
        Reward noise σ (1 in the DRTS code).
    rank : int in [1, d], optional
        Subspace dimension for ``"low_rank"``; default ``max(1, d // 4)``.
    drift_amplitude, drift_period : float
        A and P of the drifting mean (``"drift"``).
    name : str, optional

    Returns
    -------
    Environment
        ``contexts(key, params, t=None)``; ``t`` (the round index) is required by ``"drift"``.

    Examples
    --------
    >>> env = hcsa_environment(d=4, N=3, mask_prob=1.0, mask_dims=2)
    >>> prior, params = env.draw(jax.random.key(0))
    >>> x = env.contexts(jax.random.key(1), params)
    >>> x.shape, bool(jnp.all(x[:, 2:] == 0))
    ((3, 4), True)
    >>> env.mean_rewards(params, x).shape, env.reward(jax.random.key(2), params, x, 0).shape
    ((3,), ())
    >>> hcsa_environment(N=1)
    Traceback (most recent call last):
    ...
    ValueError: N is 1; expected an integer >= 2
    """
    d = check_int("d", d, 1)
    N = check_int("N", N, 2)
    if kind not in ENVIRONMENT_KINDS:
        raise ValueError(f"kind is {kind!r}; expected one of {ENVIRONMENT_KINDS}")
    if theta_prior not in THETA_PRIORS:
        raise ValueError(f"theta_prior is {theta_prior!r}; expected one of {THETA_PRIORS}")
    mask_prob = check_probability("mask_prob", mask_prob, low_open=False, high_open=False)
    mask_dims = d // 2 if mask_dims is None else mask_dims
    if isinstance(mask_dims, bool) or int(mask_dims) != mask_dims or not 0 <= mask_dims < d:
        raise ValueError(f"mask_dims is {mask_dims!r}; expected an integer in [0, {d})")
    a, b = (float(s) for s in scale_range)
    if not (np.isfinite(a) and np.isfinite(b) and 0 <= a < b):
        raise ValueError(f"scale_range is {scale_range!r}; expected (a, b) with 0 <= a < b")
    if not np.isfinite(context_mean):
        raise ValueError(f"context_mean is {context_mean!r}; expected a finite number")
    noise_sd = check_positive("noise_sd", noise_sd)
    if theta_var is None:
        theta_var = 1.0 / d if theta_prior == "gaussian" else 1.0 / (3.0 * d)
    theta_var = check_positive("theta_var", theta_var)
    rank = max(1, d // 4) if rank is None else rank
    if isinstance(rank, bool) or int(rank) != rank or not 1 <= rank <= d:
        raise ValueError(f"rank is {rank!r}; expected an integer in [1, {d}]")
    drift_amplitude = check_positive("drift_amplitude", drift_amplitude, allow_zero=True)
    drift_period = check_positive("drift_period", drift_period)
    k = rank if kind == "low_rank" else d
    keep = (jnp.arange(d) < d - mask_dims).astype(float)

    def draw(key):
        k_theta, k_basis, k_sign = jax.random.split(key, 3)
        prior = isotropic_linear_bandit_prior(d, theta_var=theta_var, noise_sd=noise_sd)
        if theta_prior == "gaussian":
            theta = sample_linear_bandit_parameters(k_theta, prior)
        else:
            half = 1.0 / math.sqrt(d)
            theta = jax.random.uniform(k_theta, (d,), minval=-half, maxval=half)
        if kind == "low_rank":  # QR after the model's Cholesky (see hcsa.serial_after)
            basis, _ = jnp.linalg.qr(serial_after(jax.random.normal(k_basis, (d, k)), theta))
        else:
            basis = jnp.eye(d)
        signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (d,)), 1.0, -1.0)
        # the agents' init may factor the prior covariance: order it after this draw
        prior = prior._replace(sigma=serial_after(prior.sigma, theta, basis))
        return prior, LinearContextualParams(theta, basis, signs, jnp.asarray(noise_sd))

    def contexts(key, params: LinearContextualParams, t=None):
        if kind == "drift" and t is None:
            raise ValueError(
                "t is None; the drifting environment needs the round index: "
                "contexts(key, params, t)"
            )
        k_raw, k_scale, k_mask = jax.random.split(key, 3)
        dtype = params.theta.dtype
        if kind == "low_rank":
            raw = (context_mean + jax.random.normal(k_raw, (N, k), dtype)) @ params.basis.T
        else:
            mean = jnp.full((d,), context_mean, dtype)
            if kind == "drift":
                phase = jnp.sin(2.0 * jnp.pi * jnp.asarray(t, dtype) / drift_period)
                mean = mean + drift_amplitude * phase * params.drift_direction
            raw = mean + jax.random.normal(k_raw, (N, d), dtype)
        norm = jnp.linalg.norm(raw, axis=1, keepdims=True)
        unit = raw / jnp.where(norm > 0, norm, 1.0)
        x = unit * jax.random.uniform(k_scale, (N, 1), dtype, minval=a, maxval=b)
        masked = jax.random.bernoulli(k_mask, mask_prob)
        return jnp.where(masked, x * keep.astype(dtype), x)

    def mean_rewards(params: LinearContextualParams, contexts):
        return contexts @ params.theta

    def reward(key, params: LinearContextualParams, contexts, action):
        return contexts[action] @ params.theta + params.noise_sd * jax.random.normal(
            key, (), params.theta.dtype
        )

    label = name or f"hcsa-{kind}-d{d}-N{N}"
    return Environment(label, draw, contexts, mean_rewards, reward)
