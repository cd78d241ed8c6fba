"""Environments of the diffusion family: problems drawn from the NumPyro diffusion model, or from
a fixed (pre-trained) diffusion prior.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from models.diffusion import (
    DiffusionPrior,
    NeuralLink,
    diffusion_prior,
    init_mlp,
    sample_diffusion_parameters,
)
from ppl_bandits.core.types import Environment

__all__ = ["DiffusionParams", "diffusion_environment", "fixed_prior_environment"]


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
