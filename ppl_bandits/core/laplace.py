r"""Laplace likelihood approximation for logistic rewards.

The paper (Aouali, Kveton, Katariya 2023, Sec. 4.2) replaces action :math:`i`'s logistic
likelihood by :math:`\mathcal{N}(\theta_i;\ \mu_i^{\rm LAP}, (G_i^{\rm LAP})^{-1})` with
:math:`\mu_i^{\rm LAP}` the maximum-likelihood estimate. The MLE does not exist with few or
linearly separable data, so we expand the log-likelihood at a point :math:`\theta^0` that
always exists:

.. math::

    \log L(\theta) \approx \text{const} - \tfrac12 \theta^\top H \theta + \theta^\top b,
    \qquad H = \sum_s w_s\,\dot f(X_s^\top\theta^0)\,X_s X_s^\top, \qquad
    b = H\theta^0 + \nabla \log L(\theta^0),

with :math:`\dot f = f(1-f)` the logistic derivative and :math:`w_s \in \{0, 1\}` selecting
the action's rounds. ``(H, b)`` take the places of :math:`(G_i, B_i)` in every Gaussian
formula. At the MLE :math:`\nabla\log L = 0` and this is the paper's form.

**Expansion point.** :math:`\theta^0_i` is the mode of :math:`\theta_i`'s posterior under
its *marginal* prior :math:`\mathcal{N}(M_i\mu_\Psi, \Sigma_{0,i} + M_i\Sigma_\Psi M_i^\top)`
and action :math:`i`'s data alone (the GLM-TS posterior mode). It exists for any data,
moves to the MLE as data accumulate, and does not depend on the other actions, so a
round changes only the played action's expansion. The audits measure what this choice costs.

Newton's method with backtracking line search finds the mode; :func:`newton_mode` reports
the number of iterations and whether the step fell below ``tol`` (the convergence check).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

__all__ = ["LaplaceTerms", "NewtonResult", "laplace_terms", "newton_mode"]

#: Default convergence tolerance on the max-norm of the Newton step.
NEWTON_TOL = 1e-6
#: Default iteration cap of Newton's method.
NEWTON_MAX_ITER = 50
_MAX_HALVINGS = 30


class NewtonResult(NamedTuple):
    """Result of :func:`newton_mode`."""

    mode: jax.Array
    """(d,) posterior mode."""
    iterations: jax.Array
    """() Newton iterations taken."""
    converged: jax.Array
    """() bool, True when the last step's max-norm was below ``tol``."""


class LaplaceTerms(NamedTuple):
    """Gaussian approximation of a logistic log-likelihood at an expansion point."""

    H: jax.Array
    """(d, d) precision Σ_s w_s ḟ(x_sᵀθ⁰) x_s x_sᵀ: plays G_i."""
    b: jax.Array
    """(d,) natural mean H θ⁰ + ∇ log L(θ⁰): plays B_i."""
    point: NewtonResult
    """The expansion point θ⁰ and its Newton diagnostics."""


def _loglik_parts(theta, X, y, w):
    z = X @ theta
    mu = jax.nn.sigmoid(z)
    ll = jnp.sum(w * (y * z - jax.nn.softplus(z)))
    grad = X.T @ (w * (y - mu))
    H = (X * (w * mu * (1.0 - mu))[:, None]).T @ X
    return ll, grad, H


def newton_mode(
    X,
    y,
    w,
    prior_mean,
    prior_prec,
    init=None,
    *,
    tol: float = NEWTON_TOL,
    max_iter: int = NEWTON_MAX_ITER,
) -> NewtonResult:
    r"""Posterior mode under a Gaussian prior.

    Maximizes :math:`\sum_s w_s \log p(y_s \mid \theta) - \frac12 (\theta - m)^\top P (\theta - m)`.

    Damped Newton: each step solves :math:`(H + P)\,\delta = g` and is halved until the
    objective does not decrease. The objective is strictly concave (``P`` positive
    definite), so the mode exists and is unique even for separable data.

    Parameters
    ----------
    X : (n, d) contexts, y : (n,) rewards in {0, 1}, w : (n,) weights (0 masks a round out).
    prior_mean : (d,), prior_prec : (d, d) positive definite.
    init : (d,) starting point (default ``prior_mean``); warm starts make updates cheap.

    Examples
    --------
    Separable data still have a finite mode under the prior:

    >>> X = jnp.array([[1.0, 0.0], [-1.0, 0.0]]); y = jnp.array([1.0, 0.0])
    >>> r = newton_mode(X, y, jnp.ones(2), jnp.zeros(2), jnp.eye(2))
    >>> bool(r.converged), bool(jnp.isfinite(r.mode).all())
    (True, True)
    """
    init = prior_mean if init is None else init

    def objective(theta):
        ll, grad, H = _loglik_parts(theta, X, y, w)
        r = theta - prior_mean
        return ll - 0.5 * r @ prior_prec @ r, grad - prior_prec @ r, H + prior_prec

    def cond(carry):
        _, it, step, _ = carry
        return (it < max_iter) & (step >= tol)

    def body(carry):
        theta, it, _, f = carry
        _, g, A = objective(theta)
        delta = cho_solve((jnp.linalg.cholesky(A), True), g)

        def shrink(c):
            t, k = c
            return t * 0.5, k + 1

        def worse(c):
            t, k = c
            return (objective(theta + t * delta)[0] < f) & (k < _MAX_HALVINGS)

        t, _ = jax.lax.while_loop(worse, shrink, (jnp.asarray(1.0, theta.dtype), 0))
        new = theta + t * delta
        return new, it + 1, jnp.max(jnp.abs(t * delta)), objective(new)[0]

    f0 = objective(init)[0]
    big = jnp.asarray(jnp.inf, init.dtype)
    theta, it, step, _ = jax.lax.while_loop(cond, body, (init, 0, big, f0))
    return NewtonResult(theta, jnp.asarray(it), step < tol)


def laplace_terms(
    X, y, w, prior_mean, prior_prec, init=None, *, tol=NEWTON_TOL, max_iter=NEWTON_MAX_ITER
) -> LaplaceTerms:
    """Expand the logistic log-likelihood at the posterior mode under the given prior.

    Returns ``(H, b)`` that play ``(G_i, B_i)`` in the Gaussian formulas, and the
    expansion point with its Newton diagnostics. See the module docstring.
    """
    point = newton_mode(X, y, w, prior_mean, prior_prec, init, tol=tol, max_iter=max_iter)
    _, grad, H = _loglik_parts(point.mode, X, y, w)
    return LaplaceTerms(H, H @ point.mode + grad, point)
