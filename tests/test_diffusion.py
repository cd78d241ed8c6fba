"""dTS: DDPM pre-training, the agents' samplers (MCSE-scaled, with negative controls), the
dTS approximation against the exact recursion, the agents under the runner, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusion_exact import random_diffusion_history, random_diffusion_prior

from conftest import EXACT_RTOL, X64
from models.diffusion import (
    NeuralLink,
    diffusion_prior,
    init_mlp,
    sample_diffusion_parameters,
)
from ppl_bandits.core.runner import simulate
from ppl_bandits.diffusion.agents import DIFFUSION_AGENT_NAMES, dts, hier_ts_1, make_diffusion_agent
from ppl_bandits.diffusion.ddpm import (
    DDPMSettings,
    ddpm_prior,
    load_ddpm,
    sample_ddpm,
    save_ddpm,
    train_ddpm,
    training_set,
)
from ppl_bandits.diffusion.environment import diffusion_environment
from ppl_bandits.diffusion.posterior import (
    descend,
    diffusion_stats,
    empty_diffusion_stats,
    joint_prior,
    latent_terms,
    recursive_joint_posterior,
    sample_posterior,
)

#: z-score bound of each MCSE-scaled comparison: two-sided 1e-3 per coordinate, Bonferroni
#: over at most ~20 coordinates per test keeps the family-wise error near 2 %.
Z_MAX = 3.3


def _moment_z(samples, mean, cov, n_ref=None):
    """z-scores of sample mean and covariance entries against (mean, cov).

    MCSE of the mean: sqrt(diag(cov)/N); of each covariance entry: sd of the centred
    products / sqrt(N). ``n_ref`` adds the sampling error of a reference estimated from
    n_ref draws of the same size ratio (two-sample comparison).
    """
    x = np.asarray(samples, np.float64)
    N = x.shape[0]
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    inflate = 1.0 + (N / n_ref if n_ref else 0.0)
    z_mean = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / N * inflate)
    r = x - x.mean(0)
    prods = r[:, :, None] * r[:, None, :]
    z_cov = (prods.mean(0) - cov) / (prods.std(0) / np.sqrt(N) * np.sqrt(inflate))
    return np.abs(z_mean).max(), np.abs(z_cov).max()


# --------------------------------------------------------------------------- pre-training

GAUSS_MEAN = np.array([1.0, -0.5])
GAUSS_COV = np.array([[0.5, 0.2], [0.2, 0.3]])
SMALL = DDPMSettings(dim=2, num_steps=10, hidden=32)


@pytest.fixture(scope="module")
def trained():
    data = training_set("gaussian", 1024, jax.random.key(0), dim=2, mean=GAUSS_MEAN, cov=GAUSS_COV)
    params, losses = train_ddpm(jax.random.key(1), data, SMALL, epochs=4000)
    return data, params, losses


def test_pretraining_recovers_a_known_gaussian(trained):
    """Samples of the trained DDPM match the mean and covariance of N(m, C) within
    Z_MAX MCSEs (model sample error plus the training sample's own error); an untrained
    network of the same shape is the negative control and must be rejected."""
    data, params, losses = trained
    assert float(losses[-200:].mean()) < float(losses[:50].mean())
    n_train = data.shape[0]
    x = sample_ddpm(jax.random.key(2), params, SMALL, 4000)
    zm, zc = _moment_z(x, GAUSS_MEAN, GAUSS_COV, n_ref=n_train)
    assert zm < Z_MAX and zc < Z_MAX, (zm, zc)
    untrained = init_mlp(jax.random.key(1), 2, SMALL.hidden)
    x_bad = sample_ddpm(jax.random.key(2), untrained, SMALL, 4000)
    zm_bad, zc_bad = _moment_z(x_bad, GAUSS_MEAN, GAUSS_COV, n_ref=n_train)
    assert max(zm_bad, zc_bad) > Z_MAX


def test_ddpm_prior_is_the_sampler_model(trained):
    """The DiffusionPrior of a trained DDPM, sampled through the NumPyro model, has the same
    moments as the reverse-process sampler (two-sample MCSE check)."""
    _, params, _ = trained
    prior = ddpm_prior(params, SMALL, num_actions=1)
    keys = jax.random.split(jax.random.key(3), 2000)
    theta = jax.vmap(lambda k: sample_diffusion_parameters(k, prior)[1][0])(keys)
    ref = np.asarray(sample_ddpm(jax.random.key(4), params, SMALL, 4000), np.float64)
    zm, zc = _moment_z(theta, ref.mean(0), np.cov(ref.T), n_ref=4000)
    assert zm < Z_MAX and zc < Z_MAX, (zm, zc)


def test_save_and_load_round_trip(trained, tmp_path):
    _, params, _ = trained
    save_ddpm(params, SMALL, tmp_path / "ddpm")
    loaded, settings = load_ddpm(tmp_path / "ddpm")
    assert settings == SMALL
    for a, b in zip(loaded, params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["gaussian", "swiss-roll", "mixture"])
def test_training_sets(name, tmp_path):
    x = training_set(name, 50, jax.random.key(0), dim=3)
    assert x.shape == (50, 3) and bool(jnp.all(jnp.isfinite(x)))
    np.save(tmp_path / "s.npy", np.asarray(x))
    np.savetxt(tmp_path / "s.csv", np.asarray(x), delimiter=",")
    np.testing.assert_allclose(training_set(str(tmp_path / "s.npy"), 0, None), x)
    np.testing.assert_allclose(training_set(tmp_path / "s.csv", 0, None), x, rtol=1e-6)


# --------------------------------------------------------------------------- samplers


def _many(sampler, key, n):
    return jax.jit(jax.vmap(sampler))(jax.random.split(key, n))


@pytest.mark.parametrize("n", [0, 30])
def test_dts_sampler_draws_the_exact_posterior(rng, n):
    """The agent's sampler (after n Gaussian-reward updates; n = 0 is the prior) draws
    (ψ_L, θ_0) with the exact posterior moments of diffusion_posterior, within Z_MAX MCSE;
    the same draws with θ scaled by 1.3 are rejected (negative control)."""
    from ppl_bandits.diffusion.posterior import diffusion_posterior

    K, L, d = 3, 3, 2
    prior = random_diffusion_prior(rng, K, L, d)
    X, A, Y = random_diffusion_history(rng, K, d, n, unplayed=(2,))
    agent = dts()
    state = agent.init(jax.random.key(0), prior)
    update = jax.jit(agent.update)
    for x, a, y in zip(X, A, Y, strict=True):
        state = update(jax.random.key(1), state, jnp.broadcast_to(x, (K, d)), a, y)

    def draw(key):
        psi, theta = descend(
            key, state.prior, state.latent, state.cond_feed, state.shift, state.cond_sqrt
        )
        return jnp.concatenate([psi[L - 1], theta[0]])

    x = np.asarray(_many(draw, jax.random.key(1), 4000), np.float64)
    stats = diffusion_stats(prior, X, A, Y) if n else empty_diffusion_stats(prior)
    post = jax.jit(diffusion_posterior)(prior, stats)
    # ψ_L and θ_0 jointly: their cross-covariance from the joint posterior.
    joint = jax.jit(recursive_joint_posterior)(prior, stats)
    idx = np.r_[(L - 1) * d : L * d, L * d : (L + 1) * d]
    mean, cov = np.asarray(joint.mean)[idx], np.asarray(joint.cov)[np.ix_(idx, idx)]
    np.testing.assert_allclose(mean[d:], post.actions.mean[0], rtol=1e-3, atol=1e-4)
    zm, zc = _moment_z(x, mean, cov)
    assert zm < Z_MAX and zc < Z_MAX, (zm, zc)
    x_bad = x.copy()
    x_bad[:, d:] *= 1.3
    assert max(_moment_z(x_bad, mean, cov)) > Z_MAX
    if n == 0:
        p0 = joint_prior(prior)
        np.testing.assert_allclose(cov, np.asarray(p0.cov)[np.ix_(idx, idx)], atol=1e-4)


def test_neural_dts_with_no_data_samples_the_prior():
    """Neural links: the dTS sampler with no data and the NumPyro model's prior draws have
    the same moments of θ_1 (two-sample MCSE check)."""
    K, L, d = 2, 2, 2
    eye = jnp.broadcast_to(jnp.eye(d), (L, d, d))
    nl = NeuralLink(init_mlp(jax.random.key(5), d, 8), jnp.zeros(L), -jnp.ones(L))
    prior = diffusion_prior(eye, eye[0], num_actions=K, neural=nl)
    stats = empty_diffusion_stats(prior)
    x = _many(lambda k: sample_posterior(k, prior, stats)[1][0], jax.random.key(1), 4000)
    ref = np.asarray(
        _many(lambda k: sample_diffusion_parameters(k, prior)[1][0], jax.random.key(2), 4000),
        np.float64,
    )
    zm, zc = _moment_z(x, ref.mean(0), np.cov(ref.T), n_ref=4000)
    assert zm < Z_MAX and zc < Z_MAX, (zm, zc)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


def test_dts_approximation_versus_exact_recursion_with_linear_links(rng):
    """What is true (the dTS approximation, docs/maths/dts.md): the approximation drops W_ℓ from the
    upward recursion, so with linear links it equals the exact posterior when every
    W_ℓ = I (any covariances, any data), and it does not in general (W_ℓ ≠ I): there it
    treats data about W_1ψ_1 as data about ψ_1. With no data both give the prior."""
    K, L, d = 4, 3, 2
    prior = random_diffusion_prior(rng, K, L, d)
    hist = random_diffusion_history(rng, K, d, 40, unplayed=(1,))
    identity = prior._replace(
        links=jnp.broadcast_to(jnp.eye(d, dtype=prior.links.dtype), (L, d, d))
    )
    stats = diffusion_stats(identity, *hist)
    _, exact = latent_terms(identity, stats, "exact")
    _, approx = latent_terms(identity, stats, "dts")
    for a, b in zip(approx, exact, strict=True):
        assert _rel(a, b) <= EXACT_RTOL
    # General W: the latent covariances differ well beyond round-off.
    _, exact = latent_terms(prior, stats, "exact")
    _, approx = latent_terms(prior, stats, "dts")
    assert _rel(approx.cov, exact.cov) > 1e-2
    # No data: both are the prior conditionals.
    empty = empty_diffusion_stats(prior)
    _, exact = latent_terms(prior, empty, "exact")
    _, approx = latent_terms(prior, empty, "dts")
    for a, b in zip(approx, exact, strict=True):
        assert _rel(a, b) <= EXACT_RTOL


@pytest.mark.parametrize("shared", [False, True])
def test_incremental_agent_state_equals_closed_form(rng, shared):
    K, L, d = 5, 2, 3
    prior = random_diffusion_prior(rng, K, L, d)
    X, A, Y = random_diffusion_history(rng, K, d, 30, unplayed=(4,))
    agent = dts(shared=shared)
    state = agent.init(jax.random.key(0), prior)
    update = jax.jit(agent.update)
    for x, a, y in zip(X, A, Y, strict=True):
        ctx = jnp.broadcast_to(x, (K, d))
        state = update(jax.random.key(1), state, ctx, a, y)
    stats = diffusion_stats(prior, X, A, Y, shared=shared)
    _, lat = latent_terms(prior, stats)
    # Float32 accumulates 30 in-place updates; the float64 pass is at round-off.
    tol = EXACT_RTOL if X64 else 5e-3
    for a, b in zip(state.latent, lat, strict=True):
        assert _rel(a, b) < tol


# --------------------------------------------------------------------------- runner

#: One environment object per setting, so the runner's compiled draws are reused.
ENVS = {
    "linear": diffusion_environment(5, 2, 2, link="linear"),
    "neural": diffusion_environment(5, 2, 2, link="neural"),
    "neural-logistic": diffusion_environment(5, 2, 2, link="neural", reward="logistic"),
    "linear-shared": diffusion_environment(5, 2, 2, link="linear", shared=True),
    "neural-logistic-shared": diffusion_environment(
        5, 2, 2, link="neural", reward="logistic", shared=True
    ),
}
RUNS = [
    ("dTS", "linear"),
    ("dTS", "neural"),
    ("dTS-GLM", "neural-logistic"),
    ("dTS-shared", "linear-shared"),
    ("dTS-GLM-shared", "neural-logistic-shared"),
    ("HierTS-1", "linear"),
    ("HierTS-2", "linear"),
]


@pytest.mark.parametrize(("name", "env_name"), RUNS)
def test_every_agent_runs_under_the_runner(name, env_name):
    """jit + vmap through the runner; dTS-GLM with linear links shares every code path
    with the neural case except the (exact) Laplace expansion prior, which
    test_incremental_agent_state_equals_closed_form does not cover: it is run below."""
    env = ENVS[env_name]
    agent = make_diffusion_agent(name, horizon=12)
    key = jax.random.key(0)
    res = simulate(key, env, agent, num_rounds=12, num_runs=2, chunk_size=12)
    assert res.regret.shape == (2, 12)
    assert bool(jnp.all(jnp.isfinite(res.regret))) and bool(jnp.all(res.regret >= -1e-5))
    assert int(res.state.count.sum()) == 24


def test_dts_glm_with_linear_links_updates_one_action(rng):
    """dTS-GLM on a linear prior: after one update only the played action's terms moved."""
    K, L, d = 4, 2, 2
    prior = random_diffusion_prior(rng, K, L, d)
    agent = dts("logistic", horizon=3)
    state = agent.init(jax.random.key(0), prior)
    x = jnp.ones((K, d), prior.links.dtype)
    new = jax.jit(agent.update)(jax.random.key(1), state, x, 2, 1.0)
    changed = np.any(np.asarray(new.G != state.G), axis=(1, 2))
    assert changed.tolist() == [False, False, True, False]
    assert int(new.newton_failures) == 0


def test_all_agent_names_build():
    for name in DIFFUSION_AGENT_NAMES:
        assert make_diffusion_agent(name, horizon=5).name == name


# --------------------------------------------------------------------------- bad input


def _eye(L, d):
    return jnp.broadcast_to(jnp.eye(d), (L, d, d))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: diffusion_prior(
                _eye(2, 2), jnp.eye(2), num_actions=3, links=jnp.ones((2, 2, 3))
            ),
            r"links has shape \(2, 2, 3\); expected \(2, 2, 2\)",
        ),
        (
            lambda: diffusion_prior(
                _eye(2, 2), jnp.eye(2), num_actions=3, links=jnp.ones((3, 2, 2))
            ),
            r"links has shape \(3, 2, 2\); expected \(2, 2, 2\)",
        ),
        (
            lambda: diffusion_prior(jnp.zeros((0, 2, 2)), jnp.eye(2), num_actions=3, links=None),
            r"give exactly one of links",
        ),
        (
            lambda: diffusion_prior(
                jnp.zeros((0, 2, 2)), jnp.eye(2), num_actions=3, links=jnp.zeros((0, 2, 2))
            ),
            r"sigma_psi has shape \(0, 2, 2\); expected L >= 1",
        ),
        (
            lambda: diffusion_prior(-_eye(2, 2), jnp.eye(2), num_actions=3, links=_eye(2, 2)),
            r"sigma_psi is not positive definite",
        ),
        (
            lambda: diffusion_prior(_eye(2, 2), jnp.eye(2), links=_eye(2, 2)),
            r"num_actions is None",
        ),
        (
            lambda: diffusion_prior(_eye(2, 2), jnp.eye(3), num_actions=2, links=_eye(2, 2)),
            r"sigma_theta has shape \(3, 3\); expected \(2, 2\)",
        ),
        (lambda: training_set("moons", 10, jax.random.key(0)), r"training set is 'moons'"),
        (lambda: load_ddpm("/nonexistent/ddpm-dir"), r"/nonexistent/ddpm-dir.*ddpm_params.npz"),
        (
            lambda: train_ddpm(jax.random.key(0), jnp.ones((5, 3)), SMALL, epochs=1),
            r"data has shape \(5, 3\); expected \(n, 2\)",
        ),
        (lambda: noise_schedule_bad(), r"schedule is 'quadratic'"),
        (lambda: diffusion_environment(4, 0, 2), r"num_levels is 0"),
        (lambda: diffusion_environment(4, 2, 2, link="rbf"), r"link is 'rbf'"),
        (lambda: dts("poisson"), r"likelihood is 'poisson'"),
        (lambda: dts("logistic"), r"horizon is None"),
        (lambda: make_diffusion_agent("dTS-Typo"), r"agent is 'dTS-Typo'"),
    ],
)
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def noise_schedule_bad():
    from ppl_bandits.diffusion.ddpm import noise_schedule

    return noise_schedule(DDPMSettings(dim=2, schedule="quadratic"))


def test_exact_method_and_hierts_refuse_neural_links():
    eye = _eye(2, 2)
    nl = NeuralLink(init_mlp(jax.random.key(0), 2, 4), jnp.zeros(2), -jnp.ones(2))
    prior = diffusion_prior(eye, eye[0], num_actions=3, neural=nl)
    with pytest.raises(ValueError, match="method is 'exact' but the prior has neural links"):
        latent_terms(prior, empty_diffusion_stats(prior), "exact")
    with pytest.raises(ValueError, match="HierTS-1 applies to linear links only"):
        hier_ts_1().init(jax.random.key(0), prior)


def test_missing_settings_file_is_named(trained, tmp_path):
    _, params, _ = trained
    save_ddpm(params, SMALL, tmp_path)
    (tmp_path / "ddpm_settings.json").unlink()
    with pytest.raises(ValueError, match=r"ddpm_settings\.json"):
        load_ddpm(tmp_path)


# --------------------------------------------------------------------------- model and GLM


def test_model_prior_predictive_and_empty_history():
    """rewards=None samples y (the prior predictive); a history of zero rounds has no
    likelihood site (a plate of size 0 is skipped) and is accepted."""
    from numpyro import handlers

    from models.diffusion import diffusion_model

    prior = diffusion_prior(_eye(2, 2), jnp.eye(2), num_actions=3, links=_eye(2, 2))
    X, A = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    tr = handlers.trace(handlers.seed(diffusion_model, 0)).get_trace(prior, X, A)
    assert tr["y"]["value"].shape == (4,) and not tr["y"]["is_observed"]
    tr = handlers.trace(handlers.seed(diffusion_model, 0)).get_trace(
        prior, jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32), jnp.zeros((0,))
    )
    assert "y" not in tr and tr["theta"]["value"].shape == (3, 2)


def test_dts_glm_state_equals_batch_laplace_terms(rng):
    """The agent's warm-started per-round Laplace refits end at the batch terms of
    laplace_stats (same expansion prior, same data), up to the Newton tolerance."""
    from ppl_bandits.diffusion.posterior import laplace_stats

    K, L, d, n = 4, 2, 2, 25
    prior = random_diffusion_prior(rng, K, L, d)
    X, A, _ = random_diffusion_history(rng, K, d, n, unplayed=(3,))
    Y = jnp.asarray(rng.integers(0, 2, size=n), X.dtype)
    agent = dts("logistic", horizon=n)
    state = agent.init(jax.random.key(0), prior)
    update = jax.jit(agent.update)
    for x, a, y in zip(X, A, Y, strict=True):
        state = update(jax.random.key(1), state, jnp.broadcast_to(x, (K, d)), a, y)
    batch = laplace_stats(prior, X, A, Y)
    assert int(state.newton_failures) == 0
    tol = 1e-6 if X64 else 1e-3
    assert _rel(state.G, batch.G) < tol and _rel(state.B, batch.B) < tol
    np.testing.assert_array_equal(state.count, batch.count)


@pytest.mark.parametrize("n", [0, 30])
def test_dts_act_scores_have_the_exact_posterior_law(rng, n):
    """The agent's act scores every action by x_aᵀθ_a drawn from K normals given ψ_1
    (diffusion.sample_scores) instead of a full θ draw: with per-action contexts the score
    vector must have the exact posterior mean and covariance (cross-covariances through the
    shared ψ_1 included), within Z_MAX MCSE; n = 0 is the prior. Scores whose noise ignores
    the data (a 1.3 times wider spread) are rejected (negative control)."""
    from ppl_bandits.diffusion.agents import sample_scores

    K, L, d = 3, 2, 2
    prior = random_diffusion_prior(rng, K, L, d)
    X, A, Y = random_diffusion_history(rng, K, d, n, unplayed=(2,))
    agent = dts()
    state = agent.init(jax.random.key(0), prior)
    update = jax.jit(agent.update)
    for x, a, y in zip(X, A, Y, strict=True):
        state = update(jax.random.key(1), state, jnp.broadcast_to(x, (K, d)), a, y)
    ctx = jnp.asarray(rng.uniform(-1, 1, size=(K, d)), prior.links.dtype)
    s = np.asarray(_many(lambda k: sample_scores(k, state, ctx), jax.random.key(3), 4000))
    stats = diffusion_stats(prior, X, A, Y) if n else empty_diffusion_stats(prior)
    joint = jax.jit(recursive_joint_posterior)(prior, stats)
    H = np.zeros((K, (L + K) * d))
    for a in range(K):
        H[a, (L + a) * d : (L + a + 1) * d] = np.asarray(ctx[a])
    mean = H @ np.asarray(joint.mean, np.float64)
    cov = H @ np.asarray(joint.cov, np.float64) @ H.T
    zm, zc = _moment_z(s, mean, cov)
    assert zm < Z_MAX and zc < Z_MAX, (zm, zc)
    wide = mean + 1.3 * (s - mean)
    assert max(_moment_z(wide, mean, cov)) > Z_MAX
