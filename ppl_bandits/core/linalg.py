"""Small linear-algebra pieces shared by every family: Gaussians, SPD inverses and square roots,
log densities.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

__all__ = [
    "Gaussian",
    "block_diag",
    "chol_inverse",
    "inverse_and_sqrt",
    "mvn_logpdf",
    "sym",
]


class Gaussian(NamedTuple):
    """A multivariate normal by its moments."""

    mean: jax.Array
    """(..., p) mean."""
    cov: jax.Array
    """(..., p, p) covariance."""


def chol_inverse(A: jax.Array) -> jax.Array:
    """Inverse of symmetric positive-definite matrices (batched) through their Cholesky factor.

    >>> chol_inverse(jnp.array([[4.0, 0.0], [0.0, 2.0]])).round(5).tolist()
    [[0.25, 0.0], [0.0, 0.5]]
    """
    chol = jnp.linalg.cholesky(A)
    eye = jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)
    inv = cho_solve((chol, True), eye)
    return 0.5 * (inv + jnp.swapaxes(inv, -1, -2))


def sym(A):
    return 0.5 * (A + jnp.swapaxes(A, -1, -2))


def mvn_logpdf(x, mean, cov):
    chol = jnp.linalg.cholesky(cov)
    z = solve_triangular(chol, (x - mean)[..., None], lower=True)[..., 0]
    p = x.shape[-1]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    return -0.5 * (jnp.sum(z**2, -1) + logdet + p * jnp.log(2 * jnp.pi))


def inverse_and_sqrt(A):
    """For SPD ``A`` = L Lᵀ: A⁻¹ = L⁻ᵀ L⁻¹, its square root R = L⁻ᵀ (R Rᵀ = A⁻¹) and log det A.

    One Cholesky factorization and one triangular solve; R is all a sampler needs.
    """
    L = jnp.linalg.cholesky(A)
    eye = jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)
    Linv = solve_triangular(L, eye, lower=True)
    R = jnp.swapaxes(Linv, -1, -2)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return R @ Linv, R, logdet


def block_diag(blocks):
    return jax.scipy.linalg.block_diag(*blocks)


def spd_solve(A, b):
    """A⁻¹b for a symmetric positive definite A: one Cholesky and two dependent solves."""
    L = jnp.linalg.cholesky(A)
    half = solve_triangular(L, b[..., None], lower=True)
    return solve_triangular(jnp.swapaxes(L, -1, -2), half, lower=False)[..., 0]
