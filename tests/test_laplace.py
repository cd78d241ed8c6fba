"""Laplace likelihood terms: Newton's convergence (separable data included), the
expansion-point algebra, and agreement with the GLM-TS posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl_bandits.core.laplace import laplace_terms, newton_mode

pytestmark = pytest.mark.exact


def _objective(theta, X, y, w, m, P):
    z = X @ theta
    return np.sum(w * (y * z - np.logaddexp(0, z))) - 0.5 * (theta - m) @ P @ (theta - m)


def _data(rng, n, d, separable=False):
    X = rng.uniform(-1, 1, size=(n, d))
    theta = rng.normal(size=d) * 2
    if separable:
        y = (X @ theta > 0).astype(float)
    else:
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ theta))).astype(float)
    dtype = jnp.result_type(float)
    return jnp.asarray(X, dtype), jnp.asarray(y, dtype)


@pytest.mark.parametrize("separable", [False, True])
def test_newton_finds_the_mode(rng, separable):
    X, y = _data(rng, 200, 3, separable)
    w = jnp.ones(200, X.dtype)
    m, P = jnp.zeros(3, X.dtype), 0.5 * jnp.eye(3, dtype=X.dtype)
    r = newton_mode(X, y, w, m, P)
    assert bool(r.converged) and int(r.iterations) < 50
    Xn, yn = np.asarray(X, np.float64), np.asarray(y, np.float64)
    theta = np.asarray(r.mode, np.float64)
    grad = Xn.T @ (yn - 1 / (1 + np.exp(-Xn @ theta))) - 0.5 * theta
    tol = 1e-8 if jax.config.jax_enable_x64 else 2e-3
    assert np.max(np.abs(grad)) < tol * max(1.0, np.abs(Xn).sum())
    # Every perturbation lowers the objective: it is the maximum.
    f0 = _objective(theta, Xn, yn, 1.0, 0.0, 0.5 * np.eye(3))
    for _ in range(20):
        other = theta + rng.normal(size=3) * 0.1
        assert _objective(other, Xn, yn, 1.0, 0.0, 0.5 * np.eye(3)) < f0


def test_separable_data_have_no_mle_but_a_finite_mode(rng):
    X, y = _data(rng, 100, 2, separable=True)
    w = jnp.ones(100, X.dtype)
    weak = newton_mode(X, y, w, jnp.zeros(2, X.dtype), 1e-3 * jnp.eye(2, dtype=X.dtype))
    strong = newton_mode(X, y, w, jnp.zeros(2, X.dtype), 1e-1 * jnp.eye(2, dtype=X.dtype))
    assert bool(weak.converged) and bool(strong.converged)
    # The weaker the prior, the larger the mode: the MLE is at infinity.
    assert float(jnp.linalg.norm(weak.mode)) > 3 * float(jnp.linalg.norm(strong.mode))


def test_convergence_check_reports_failure():
    """Negative control: one iteration from far away cannot meet the tolerance."""
    rng = np.random.default_rng(0)
    X, y = _data(rng, 100, 3)
    w = jnp.ones(100, X.dtype)
    r = newton_mode(
        X,
        y,
        w,
        jnp.zeros(3, X.dtype),
        jnp.eye(3, dtype=X.dtype),
        init=jnp.full(3, 5.0, X.dtype),
        max_iter=1,
    )
    assert not bool(r.converged) and int(r.iterations) == 1


def test_masked_rounds_are_ignored(rng):
    X, y = _data(rng, 60, 2)
    w = jnp.asarray(np.r_[np.ones(30), np.zeros(30)], X.dtype)
    m, P = jnp.zeros(2, X.dtype), jnp.eye(2, dtype=X.dtype)
    full = laplace_terms(X[:30], y[:30], jnp.ones(30, X.dtype), m, P)
    masked = laplace_terms(X, y, w, m, P)
    np.testing.assert_allclose(masked.H, full.H, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked.b, full.b, rtol=1e-5, atol=1e-6)


def test_terms_reproduce_the_laplace_posterior(rng):
    """(H, b) at the mode: prior + Gaussian likelihood term has its mean at the mode and
    precision P + H, i.e. the Laplace approximation of the posterior (GLM-TS)."""
    X, y = _data(rng, 80, 3)
    w = jnp.ones(80, X.dtype)
    m = jnp.asarray(rng.normal(size=3), X.dtype)
    P = jnp.asarray(np.diag([0.5, 1.0, 2.0]), X.dtype)
    t = laplace_terms(X, y, w, m, P)
    mean = jnp.linalg.solve(P + t.H, P @ m + t.b)
    tol = 1e-8 if jax.config.jax_enable_x64 else 1e-4
    np.testing.assert_allclose(mean, t.point.mode, rtol=tol, atol=tol)
    # H is the negative Hessian of the log-likelihood at the mode.
    hess = jax.hessian(lambda th: jnp.sum(y * (X @ th) - jax.nn.softplus(X @ th)))(t.point.mode)
    np.testing.assert_allclose(t.H, -hess, rtol=10 * tol, atol=10 * tol)


def test_at_the_mle_the_terms_are_the_papers(rng):
    """With a negligible prior the mode is the MLE, ∇ log L = 0 and b = H μ_LAP."""
    X, y = _data(rng, 2000, 2)
    w = jnp.ones(2000, X.dtype)
    t = laplace_terms(X, y, w, jnp.zeros(2, X.dtype), 1e-8 * jnp.eye(2, dtype=X.dtype))
    np.testing.assert_allclose(t.b, t.H @ t.point.mode, rtol=1e-3, atol=1e-3)
