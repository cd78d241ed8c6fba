"""Hierarchical closed forms against the brute-force joint Gaussian posterior and against
the NumPyro model's own log density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EXACT_RTOL, X64, random_history, random_prior
from models.mixed_effect import mixed_effect_model
from ppl_bandits.core.likelihood import empty_stats, stats_from_history, update_stats
from ppl_bandits.mixed_effect.posterior import (
    conditional_action_posterior,
    effect_posterior,
    factored_effect_posterior,
    hierarchical_joint_posterior,
    joint_posterior,
    log_posterior_density,
    marginal_action_posterior,
)

pytestmark = pytest.mark.exact

CASES = [
    # (K, L, d, n, matrix_mixing, unplayed, rank_one)
    (5, 3, 2, 40, False, (0,), (1,)),
    (7, 2, 3, 60, True, (2, 3), (4,)),
    (4, 1, 4, 3, False, (1, 2, 3), ()),
    (6, 4, 1, 25, True, (5,), ()),
]


def _scale(x):
    return max(1.0, float(np.max(np.abs(np.asarray(x)))))


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = float(np.max(np.abs(actual - expected))) / _scale(expected)
    assert err <= EXACT_RTOL, f"{what}: relative error {err:.3g} > {EXACT_RTOL}"


@pytest.mark.parametrize(("K", "L", "d", "n", "matrix", "unplayed", "rank_one"), CASES)
def test_hierarchical_equals_brute_force_joint(rng, K, L, d, n, matrix, unplayed, rank_one):
    prior = random_prior(rng, K, L, d, matrix_mixing=matrix)
    stats = stats_from_history(
        prior, *random_history(rng, prior, n, unplayed=unplayed, rank_one=rank_one)
    )
    if rank_one:  # the rank-one action's G really is singular
        G = np.asarray(stats.G[rank_one[0]], np.float64)
        assert np.linalg.matrix_rank(G, tol=1e-4 * np.linalg.norm(G)) <= 1
    brute = joint_posterior(prior, stats)
    hier = hierarchical_joint_posterior(prior, stats)
    assert_close(hier.mean, brute.mean, "joint mean")
    assert_close(hier.cov, brute.cov, "joint covariance incl. cross-covariances")
    Ld = L * d
    eff = effect_posterior(prior, stats)
    assert_close(eff.mean, brute.mean[:Ld], "effect mean")
    assert_close(eff.cov, brute.cov[:Ld, :Ld], "effect covariance")
    marg = marginal_action_posterior(prior, stats)
    for i in range(K):
        sl = slice(Ld + i * d, Ld + (i + 1) * d)
        assert_close(marg.mean[i], brute.mean[sl], f"marginal mean of action {i}")
        assert_close(marg.cov[i], brute.cov[sl, sl], f"marginal covariance of action {i}")


def test_conditional_posterior_is_the_joint_conditional(rng):
    prior = random_prior(rng, 5, 2, 2)
    stats = stats_from_history(prior, *random_history(rng, prior, 30, unplayed=(4,)))
    brute = joint_posterior(prior, stats)
    Ld = 4
    psi = jnp.asarray(rng.normal(size=Ld), prior.mu_psi.dtype)
    # Gaussian conditioning of the brute-force joint on Ψ = psi.
    S11, S21, S22 = brute.cov[:Ld, :Ld], brute.cov[Ld:, :Ld], brute.cov[Ld:, Ld:]
    gain = S21 @ jnp.linalg.inv(S11)
    mean = brute.mean[Ld:] + gain @ (psi - brute.mean[:Ld])
    cov = S22 - gain @ S21.T
    cond = conditional_action_posterior(prior, stats, psi)
    assert_close(cond.mean.reshape(-1), mean, "conditional mean")
    for i in range(5):
        sl = slice(2 * i, 2 * i + 2)
        assert_close(cond.cov[i], cov[sl, sl], f"conditional covariance {i}")
    # Given Ψ the actions are independent in the joint too.
    assert_close(cov[0:2, 2:4], jnp.zeros((2, 2)), "conditional cross-covariance")


def test_online_updates_match_batch_statistics(rng):
    prior = random_prior(rng, 4, 2, 3)
    contexts, actions, rewards = random_history(rng, prior, 50)
    stats = empty_stats(prior)
    for x, a, y in zip(contexts, actions, rewards, strict=True):
        stats = update_stats(stats, a, x, y, prior.noise_sd)
    batch = stats_from_history(prior, contexts, actions, rewards)
    assert_close(stats.G, batch.G, "G")
    assert_close(stats.B, batch.B, "B")
    np.testing.assert_array_equal(stats.count, batch.count)


@pytest.mark.parametrize("parameterization", ["centered", "noncentered"])
@pytest.mark.parametrize("matrix", [False, True])
def test_log_density_difference_is_constant(rng, matrix, parameterization):
    """log p(w | data) − log p(w, data) is the same for every w."""
    from numpyro.infer.util import log_density

    prior = random_prior(rng, 5, 2, 2, matrix_mixing=matrix)
    contexts, actions, rewards = random_history(rng, prior, 30, unplayed=(3,))
    stats = stats_from_history(prior, contexts, actions, rewards)
    post = joint_posterior(prior, stats)
    chol = np.linalg.cholesky(np.asarray(post.cov, np.float64))
    diffs = []
    for _ in range(20):
        w = np.asarray(post.mean) + 2.0 * chol @ rng.normal(size=post.mean.shape[0])
        psi, theta = w[:4], w[4:].reshape(5, 2)
        dtype = prior.mu_psi.dtype
        psi, theta = jnp.asarray(psi, dtype), jnp.asarray(theta, dtype)
        if parameterization == "centered":
            params = {"psi": psi, "theta": theta}
        else:
            # The non-centred model's density is over the raw variables; the Jacobian of
            # the affine map is constant, so the difference must still be constant.
            Lpsi = jnp.linalg.cholesky(prior.sigma_psi)
            L0 = jnp.linalg.cholesky(prior.sigma0)
            from models.mixed_effect import mixing_matrices

            loc = jnp.einsum("kde,e->kd", mixing_matrices(prior), psi)
            params = {
                "psi_raw": jax.scipy.linalg.solve_triangular(Lpsi, psi - prior.mu_psi, lower=True),
                "theta_raw": jax.vmap(
                    lambda L_, r: jax.scipy.linalg.solve_triangular(L_, r, lower=True)
                )(L0, theta - loc),
            }
        joint, _ = log_density(
            mixed_effect_model,
            (prior, contexts, actions, rewards),
            {"parameterization": parameterization},
            params,
        )
        diffs.append(float(log_posterior_density(prior, stats, psi, theta) - joint))
    spread = np.ptp(diffs)
    tol = 1e-8 * max(1.0, np.max(np.abs(diffs))) if X64 else 5e-2
    assert spread < tol, f"log-density difference varies by {spread:.3g}"


def test_log_density_check_rejects_a_wrong_posterior(rng):
    """Negative control: inflating the effect covariance breaks the constant difference."""
    from numpyro.infer.util import log_density

    prior = random_prior(rng, 4, 2, 2)
    contexts, actions, rewards = random_history(rng, prior, 30)
    stats = stats_from_history(prior, contexts, actions, rewards)
    wrong_prior = prior._replace(sigma0=1.3 * prior.sigma0)  # a wrong posterior
    post = joint_posterior(prior, stats)
    diffs = []
    for _ in range(10):
        w = post.mean + jnp.asarray(rng.normal(size=post.mean.shape[0]), post.mean.dtype)
        psi, theta = w[:4], w[4:].reshape(4, 2)
        joint, _ = log_density(
            mixed_effect_model,
            (prior, contexts, actions, rewards),
            {},
            {"psi": psi, "theta": theta},
        )
        diffs.append(float(log_posterior_density(wrong_prior, stats, psi, theta) - joint))
    assert np.ptp(diffs) > 0.1


def test_mean_field_factored_mean_is_exact_and_published_is_biased(rng):
    """The mean-field factor means are the exact joint mean; the published eq. 43 mean
    is not when actions couple the effects: its error is exactly the dropped coupling
    term Λ̄_ℓℓ⁻¹ Σ_{m≠ℓ} Λ̄_ℓm μ̄_m. Setting of the paper's Fig. 2 (Σ_Ψ = 3 I, b ~ U[-1, 1])
    with 20 actions and 500 rounds; the bias is printed in posterior standard deviations."""
    from models.mixed_effect import fig2_prior

    K, L, d = 20, 3, 2
    prior = fig2_prior(jax.random.key(3), K, L, d)
    if X64:
        prior = jax.tree.map(lambda a: a.astype(jnp.float64), prior)
    stats = stats_from_history(prior, *random_history(rng, prior, 500))
    exact = effect_posterior(prior, stats)
    mf = factored_effect_posterior(prior, stats, "mean-field")
    pub = factored_effect_posterior(prior, stats, "published")
    assert_close(mf.mean.reshape(-1), exact.mean, "mean-field factored mean")
    prec = np.linalg.inv(np.asarray(exact.cov, np.float64)).reshape(L, d, L, d)
    mu = np.asarray(exact.mean, np.float64).reshape(L, d)
    dropped = np.stack(
        [
            np.linalg.solve(
                prec[l, :, l, :], sum(prec[l, :, m, :] @ mu[m] for m in range(L) if m != l)
            )
            for l in range(L)
        ]
    )
    assert_close(
        np.asarray(pub.mean) - np.asarray(mf.mean),
        dropped,
        "published minus exact equals the dropped coupling term",
    )
    sd = np.sqrt(np.diag(np.asarray(exact.cov))).reshape(L, d)
    bias = np.abs(dropped) / sd
    print(
        f"published factored mean, Fig. 2 prior, K={K}, n=500: "
        f"bias up to {bias.max():.2f} posterior sd (median {np.median(bias):.2f})"
    )
    # The coupling term is far above round-off: the published variant is not exact.
    eps = float(jnp.finfo(prior.mu_psi.dtype).eps)
    assert np.max(np.abs(dropped)) > 1e4 * eps * _scale(mu)
    # Both variants use the same factor covariances, the inverse diagonal precision blocks.
    np.testing.assert_allclose(mf.cov, pub.cov)


def test_published_factored_mean_is_exact_without_coupling(rng):
    """Control: with one effect per action (block-diagonal posterior precision) the two
    variants coincide, so the bias above is caused by coupling and nothing else."""
    K, L, d = 6, 3, 2
    b = np.zeros((K, L))
    b[np.arange(K), np.arange(K) % L] = rng.uniform(0.5, 1.5, K)
    base = random_prior(rng, K, L, d)
    prior = base._replace(
        sigma_psi=jnp.eye(L * d, dtype=base.mu_psi.dtype) * 2.0,
        mixing=jnp.asarray(b, base.mu_psi.dtype)[:, :, None, None] * jnp.eye(d),
    )
    stats = stats_from_history(prior, *random_history(rng, prior, 100))
    mf = factored_effect_posterior(prior, stats, "mean-field")
    pub = factored_effect_posterior(prior, stats, "published")
    assert_close(pub.mean, mf.mean, "published vs mean-field without coupling")


def test_no_data_gives_the_prior(rng):
    prior = random_prior(rng, 3, 2, 2, matrix_mixing=True)
    stats = empty_stats(prior)
    from ppl_bandits.mixed_effect.posterior import joint_prior

    p0 = joint_prior(prior)
    post = hierarchical_joint_posterior(prior, stats)
    assert_close(post.mean, p0.mean, "prior mean")
    assert_close(post.cov, p0.cov, "prior covariance")
