"""Linear-diffusion recursions against the brute-force joint Gaussian posterior and against
the NumPyro model's own log density (Aouali 2025, App. B)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular
from numpyro.infer.util import log_density

from conftest import EXACT_RTOL, X64, random_spd
from models.diffusion import apply_link, diffusion_model, diffusion_prior
from ppl_bandits.diffusion.posterior import (
    conditional_action_posterior,
    diffusion_posterior,
    diffusion_stats,
    empty_diffusion_stats,
    joint_posterior,
    joint_prior,
    latent_terms,
    log_posterior_density,
    recursive_joint_posterior,
)

pytestmark = pytest.mark.exact

# Jitted once per shape: the same functions, compiled as whole graphs (much faster than
# op-by-op dispatch on a loaded 2-core machine).
joint_posterior = jax.jit(joint_posterior, static_argnames="shared")
joint_prior = jax.jit(joint_prior)
recursive_joint_posterior = jax.jit(recursive_joint_posterior)
diffusion_posterior = jax.jit(diffusion_posterior)
latent_terms = jax.jit(latent_terms, static_argnames="method")
conditional_action_posterior = jax.jit(conditional_action_posterior)

DTYPE = jnp.float64 if X64 else jnp.float32

CASES = [
    # (K, L, d, n, unplayed, rank_one)
    (5, 3, 2, 40, (0,), (1,)),
    (7, 2, 3, 60, (2, 3), (4,)),
    (4, 1, 4, 3, (1, 2, 3), ()),
    (3, 4, 1, 25, (2,), ()),
    (6, 2, 3, 30, (), (0, 5)),
]


def random_diffusion_prior(rng, K, L, d, *, sparse=True, noise_sd=0.7):
    """Random linear links (some columns zeroed) and random SPD covariances per level."""
    W = rng.uniform(-1, 1, size=(L, d, d))
    if sparse and d > 1:
        W[:, :, rng.integers(d)] = 0.0
    sigma_psi = np.stack([random_spd(rng, d, 1.5) for _ in range(L)])
    sigma_theta = random_spd(rng, d, 0.8, (K,))
    return diffusion_prior(
        sigma_psi.astype(DTYPE),
        sigma_theta.astype(DTYPE),
        links=W.astype(DTYPE),
        noise_sd=noise_sd,
    )


def random_diffusion_history(rng, K, d, n, *, unplayed=(), rank_one=()):
    """Actions in ``unplayed`` never appear; actions in ``rank_one`` see one direction."""
    allowed = np.array([k for k in range(K) if k not in unplayed])
    actions = rng.choice(allowed, size=n)
    contexts = rng.uniform(-1, 1, size=(n, d))
    direction = rng.normal(size=d)
    for k in rank_one:
        idx = actions == k
        contexts[idx] = rng.normal(size=(idx.sum(), 1)) * direction
    rewards = rng.normal(size=n)
    return jnp.asarray(contexts, DTYPE), jnp.asarray(actions), jnp.asarray(rewards, DTYPE)


def _scale(x):
    return max(1.0, float(np.max(np.abs(np.asarray(x))))) if np.size(x) else 1.0


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = float(np.max(np.abs(actual - expected))) / _scale(expected) if actual.size else 0.0
    assert err <= EXACT_RTOL, f"{what}: relative error {err:.3g} > {EXACT_RTOL}"


@pytest.mark.parametrize(("K", "L", "d", "n", "unplayed", "rank_one"), CASES)
def test_recursions_equal_brute_force_joint(rng, K, L, d, n, unplayed, rank_one):
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, n, unplayed=unplayed, rank_one=rank_one)
    stats = diffusion_stats(prior, *hist)
    for k in rank_one:  # the rank-one action's G really is singular
        G = np.asarray(stats.G[k], np.float64)
        if d > 1 and np.any(G):
            assert np.linalg.matrix_rank(G, tol=1e-4 * np.linalg.norm(G)) <= 1
    brute = joint_posterior(prior, *hist)
    rec = recursive_joint_posterior(prior, stats)
    assert_close(rec.mean, brute.mean, "joint mean")
    assert_close(rec.cov, brute.cov, "joint covariance incl. cross-covariances")
    post = diffusion_posterior(prior, stats)
    for level in range(1, L + 1):
        sl = slice((level - 1) * d, level * d)
        assert_close(post.latents.mean[level - 1], brute.mean[sl], f"mean of psi_{level}")
        assert_close(post.latents.cov[level - 1], brute.cov[sl, sl], f"cov of psi_{level}")
    for a in range(K):
        sl = slice((L + a) * d, (L + a + 1) * d)
        assert_close(post.actions.mean[a], brute.mean[sl], f"marginal mean of theta_{a}")
        assert_close(post.actions.cov[a], brute.cov[sl, sl], f"marginal cov of theta_{a}")


def _condition(joint, idx_a, idx_b, value_b):
    """Gaussian conditioning of block a on block b = value_b (the brute-force way)."""
    m, C = np.asarray(joint.mean, np.float64), np.asarray(joint.cov, np.float64)
    Cab, Cbb = C[np.ix_(idx_a, idx_b)], C[np.ix_(idx_b, idx_b)]
    gain = np.linalg.solve(Cbb, Cab.T).T
    mean = m[idx_a] + gain @ (np.asarray(value_b, np.float64) - m[idx_b])
    return mean, C[np.ix_(idx_a, idx_a)] - gain @ Cab.T


def test_downward_conditionals_are_the_joint_conditionals(rng):
    """ψ_ℓ | ψ_{ℓ+1}, data and θ_a | ψ_1, data from the recursion equal Gaussian conditioning
    of the brute-force joint on *all* the latents above (the chain is Markov a posteriori)."""
    K, L, d = 4, 3, 2
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, 30, unplayed=(3,))
    stats = diffusion_stats(prior, *hist)
    brute = joint_posterior(prior, *hist)
    _, lat = latent_terms(prior, stats)
    psi = jnp.asarray(rng.normal(size=(L, d)), DTYPE)
    for level in range(1, L):
        idx_a = np.arange((level - 1) * d, level * d)
        idx_b = np.arange(level * d, L * d)  # every latent above ψ_ℓ
        mean, cov = _condition(brute, idx_a, idx_b, psi[level:].reshape(-1))
        rec_mean = lat.feed[level - 1] @ apply_link(prior, level + 1, psi[level])
        assert_close(rec_mean + lat.shift[level - 1], mean, f"mean of psi_{level} | above")
        assert_close(lat.cov[level - 1], cov, f"cov of psi_{level} | above")
    idx_a = np.arange(L * d, (L + K) * d)
    mean, cov = _condition(brute, idx_a, np.arange(L * d), psi.reshape(-1))
    cond = conditional_action_posterior(prior, stats, psi[0])
    assert_close(cond.mean.reshape(-1), mean, "mean of theta | psi")
    for a in range(K):
        sl = slice(a * d, (a + 1) * d)
        assert_close(cond.cov[a], cov[sl, sl], f"cov of theta_{a} | psi")
    assert_close(cov[0:d, d : 2 * d], np.zeros((d, d)), "actions independent given psi_1")


def test_shared_parameter_recursion_equals_brute_force(rng):
    K, L, d, n = 5, 2, 3, 25
    prior = random_diffusion_prior(rng, K, L, d)
    X, _, y = random_diffusion_history(rng, K, d, n)
    stats = diffusion_stats(prior, X, None, y, shared=True)
    brute = joint_posterior(prior, X, None, y, shared=True)
    rec = recursive_joint_posterior(prior, stats)
    assert rec.mean.shape == ((L + 1) * d,)
    assert_close(rec.mean, brute.mean, "shared joint mean")
    assert_close(rec.cov, brute.cov, "shared joint covariance")


@pytest.mark.parametrize("n", [0, 12])
def test_no_data_gives_the_prior(rng, n):
    """With no rounds (n = 0) the posterior is the prior; n = 12 is the control that the
    comparison can fail (data move the posterior away from the prior)."""
    K, L, d = 3, 3, 2
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, n)
    stats = diffusion_stats(prior, *hist) if n else empty_diffusion_stats(prior)
    p0 = joint_prior(prior)
    rec = recursive_joint_posterior(prior, stats)
    brute = joint_posterior(prior, *hist)
    if n == 0:
        assert_close(rec.mean, p0.mean, "prior mean")
        assert_close(rec.cov, p0.cov, "prior covariance")
        assert_close(brute.cov, p0.cov, "brute force with no data")
    else:
        assert np.max(np.abs(np.asarray(rec.cov - p0.cov))) > 1e-2


def _raw_params(prior, psi, theta, shared):
    """The non-centred model's raw variables for given (ψ, θ)."""
    L = prior.num_levels
    chol = jnp.linalg.cholesky(prior.sigma_psi)
    params = {}
    for level in range(L, 0, -1):
        loc = jnp.zeros_like(psi[0]) if level == L else apply_link(prior, level + 1, psi[level])
        params[f"psi_{level}_raw"] = solve_triangular(
            chol[level - 1], psi[level - 1] - loc, lower=True
        )
    loc = apply_link(prior, 1, psi[0])
    chol0 = jnp.linalg.cholesky(prior.sigma_theta)
    if shared:
        params["theta_raw"] = solve_triangular(chol0[0], theta - loc, lower=True)
    else:
        params["theta_raw"] = jax.vmap(lambda c, r: solve_triangular(c, r, lower=True))(
            chol0, theta - loc
        )
    return params


def _log_density_differences(rng, prior, hist, stats, brute, *, shared, param, wrong=None):
    """log p(w | data) − log p(w, data) at 15 random w (vectorised and jitted)."""
    L, d, K = prior.num_levels, prior.dim, prior.num_actions
    contexts, actions, rewards = hist
    chol = np.linalg.cholesky(np.asarray(brute.cov, np.float64))
    z = rng.normal(size=(15, brute.mean.shape[0]))
    ws = jnp.asarray(np.asarray(brute.mean) + 2.0 * z @ chol.T, DTYPE)
    post_prior = prior if wrong is None else wrong

    def one(w):
        psi = w[: L * d].reshape(L, d)
        theta = w[L * d :].reshape(d) if shared else w[L * d :].reshape(K, d)
        if param == "centered":
            params = {f"psi_{level}": psi[level - 1] for level in range(1, L + 1)}
            params["theta"] = theta
        else:
            params = _raw_params(prior, psi, theta, shared)
        joint, _ = log_density(
            diffusion_model,
            (prior, contexts, actions, rewards),
            {"parameterization": param, "shared": shared},
            params,
        )
        return log_posterior_density(post_prior, stats, psi, theta) - joint

    return np.asarray(jax.jit(jax.vmap(one))(ws), np.float64)


@pytest.mark.parametrize("parameterization", ["centered", "noncentered"])
@pytest.mark.parametrize("shared", [False, True])
def test_log_density_difference_is_constant(rng, shared, parameterization):
    """log p(w | data) − log p(w, data) is the same for every w."""
    K, L, d = 4, 3, 2
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, 30, unplayed=(2,))
    if shared:
        hist = (hist[0], None, hist[2])
    stats = diffusion_stats(prior, *hist, shared=shared)
    brute = joint_posterior(prior, *hist, shared=shared)
    diffs = _log_density_differences(
        rng, prior, hist, stats, brute, shared=shared, param=parameterization
    )
    spread = np.ptp(diffs)
    tol = 1e-8 * max(1.0, np.max(np.abs(diffs))) if X64 else 5e-2
    assert spread < tol, f"log-density difference varies by {spread:.3g}"


@pytest.mark.parametrize("wrong", ["sigma_theta", "links"])
def test_log_density_check_rejects_a_wrong_posterior(rng, wrong):
    """Negative control: a posterior computed with Σ_1 × 1.3, or with one link perturbed,
    does not give a constant difference."""
    K, L, d = 4, 2, 2
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, 30)
    stats = diffusion_stats(prior, *hist)
    brute = joint_posterior(prior, *hist)
    if wrong == "sigma_theta":
        bad = prior._replace(sigma_theta=1.3 * prior.sigma_theta)
    else:
        bad = prior._replace(links=prior.links.at[1].add(0.3))
    diffs = _log_density_differences(
        rng, prior, hist, stats, brute, shared=False, param="centered", wrong=bad
    )
    assert np.ptp(diffs) > 0.1
