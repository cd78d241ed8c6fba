"""Shared fixtures. Tolerances depend on JAX's float width: the exactness tests run in the
default float32 pass with a float32 tolerance and again with ``JAX_ENABLE_X64=1``, where
they must agree to round-off (rtol 1e-8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.mixed_effect import mixed_effect_prior

X64 = bool(jax.config.jax_enable_x64)
#: Relative tolerance of an exact identity: round-off in float64, float32 otherwise.
EXACT_RTOL = 1e-8 if X64 else 2e-3

#: Fields issue 6 requires in calibration.json.
CALIBRATION_RECORD_KEYS = (
    "posterior",
    "replications",
    "rounds",
    "uniformity",
    "coverage",
    "negative_controls",
    "wall_seconds",
    "command",
    "seed",
    "versions",
)


def random_spd(rng, n, scale=1.0, batch=()):
    A = rng.normal(size=(*batch, n, n))
    return scale * (A @ np.swapaxes(A, -1, -2) / n + 0.5 * np.eye(n))


def random_prior(rng, K, L, d, *, matrix_mixing=False, noise_sd=0.7):
    """A random mixed-effect prior with correlated effects and per-action Σ_0."""
    mu = rng.normal(size=L * d)
    sigma_psi = random_spd(rng, L * d, 2.0)
    sigma0 = random_spd(rng, d, 0.8, (K,))
    dtype = jnp.float64 if X64 else jnp.float32
    if matrix_mixing:
        C = rng.normal(size=(K, L, d, d))
        return mixed_effect_prior(
            jnp.asarray(mu, dtype),
            sigma_psi.astype(dtype),
            mixing=C.astype(dtype),
            sigma0=sigma0.astype(dtype),
            noise_sd=noise_sd,
        )
    b = rng.uniform(-1, 1, size=(K, L))
    return mixed_effect_prior(
        jnp.asarray(mu, dtype),
        sigma_psi.astype(dtype),
        weights=b.astype(dtype),
        sigma0=sigma0.astype(dtype),
        noise_sd=noise_sd,
    )


def random_history(rng, prior, n, *, unplayed=(), rank_one=()):
    """A history where actions in ``unplayed`` never appear and actions in ``rank_one``
    see one repeated context direction (singular G)."""
    K, _, d, _ = prior.mixing.shape
    allowed = np.array([k for k in range(K) if k not in unplayed])
    actions = rng.choice(allowed, size=n)
    contexts = rng.uniform(-1, 1, size=(n, d))
    direction = rng.normal(size=d)
    for k in rank_one:
        idx = actions == k
        contexts[idx] = rng.normal(size=(idx.sum(), 1)) * direction
    rewards = rng.normal(size=n)
    dtype = prior.mu_psi.dtype
    return jnp.asarray(contexts, dtype), jnp.asarray(actions), jnp.asarray(rewards, dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(20231)
