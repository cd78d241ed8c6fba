"""Linear contextual bandit: environments, the NumPyro reference for LinTS-shared, the baselines
and a small regret sanity check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density
from scipy import stats

from models.linear_bandit import (
    isotropic_linear_bandit_prior,
    linear_bandit_model,
    linear_bandit_prior,
)
from ppl_bandits.experiments.hcsa import hcsa_experiment_agents
from ppl_bandits.linear_contextual.baselines import (
    drts,
    drts_selection_probs,
    hy_ran,
    oful_radius,
    shared_lin_ts,
    shared_lin_ts_posterior,
    shared_lin_ucb,
    sup_lin_ucb,
    uniform_random,
)
from ppl_bandits.linear_contextual.environment import hcsa_environment
from ppl_bandits.linear_contextual.hcsa import hcsa_ts

ALPHA = 1e-3


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------


def test_iid_environment_scaling_and_masking():
    env = hcsa_environment(d=6, N=5, mask_prob=0.5, mask_dims=2, scale_range=(0.2, 0.9))
    prior, params = env.draw(jax.random.key(0))
    assert prior.mu.shape == (6,) and params.theta.shape == (6,)
    xs = jax.vmap(lambda k: env.contexts(k, params))(jax.random.split(jax.random.key(1), 2000))
    xs = np.asarray(xs)
    norms = np.linalg.norm(xs, axis=-1)
    masked = np.all(xs[:, :, 4:] == 0, axis=(1, 2))
    full_norms = norms[~masked]
    assert full_norms.min() >= 0.2 - 1e-6 and full_norms.max() <= 0.9 + 1e-6
    # one masking draw per round, shared by all arms, with probability 1/2 (5 MCSE)
    assert abs(masked.mean() - 0.5) <= 5 * math.sqrt(0.25 / masked.size)
    assert np.all(xs[masked][:, :, :4] != 0)
    m = np.asarray(env.mean_rewards(params, jnp.asarray(xs[0])))
    np.testing.assert_allclose(m, xs[0] @ np.asarray(params.theta), rtol=1e-5, atol=1e-6)
    ys = jax.vmap(lambda k: env.reward(k, params, jnp.asarray(xs[0]), 1))(
        jax.random.split(jax.random.key(2), 4000)
    )
    assert abs(float(ys.mean()) - m[1]) <= 5 * 1.0 / math.sqrt(4000)
    assert abs(float(ys.std()) - 1.0) <= 0.05


def test_low_rank_environment_is_rank_deficient():
    env = hcsa_environment(d=8, N=10, kind="low_rank", rank=3, mask_prob=0.0)
    _, params = env.draw(jax.random.key(0))
    x = np.asarray(env.contexts(jax.random.key(1), params))
    assert np.linalg.matrix_rank(x) == 3


def test_drifting_environment_needs_t_and_drifts():
    env = hcsa_environment(
        d=4, N=50, kind="drift", mask_prob=0.0, drift_amplitude=3.0, drift_period=4.0
    )
    _, params = env.draw(jax.random.key(0))
    with pytest.raises(ValueError, match="t is None"):
        env.contexts(jax.random.key(1), params)
    up = np.asarray(env.contexts(jax.random.key(1), params, 1))  # sin = +1
    down = np.asarray(env.contexts(jax.random.key(1), params, 3))  # sin = −1
    s = np.asarray(params.drift_direction)
    assert (up @ s).mean() > 0.5 and (down @ s).mean() < -0.5
    # inside jit the round index can be traced
    jax.jit(lambda t: env.contexts(jax.random.key(2), params, t))(7)


def test_uniform_theta_prior_and_numpyro_draws():
    env = hcsa_environment(d=5, N=3, theta_prior="uniform")
    prior, params = env.draw(jax.random.key(3))
    assert np.all(np.abs(np.asarray(params.theta)) <= 1 / math.sqrt(5))
    np.testing.assert_allclose(np.diag(prior.sigma), 1 / 15, rtol=1e-6)
    env = hcsa_environment(d=3, N=3, theta_var=4.0)
    thetas = jax.vmap(lambda k: env.draw(k)[1].theta)(jax.random.split(jax.random.key(4), 4000))
    assert abs(float(thetas.var()) - 4.0) <= 0.3


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"N": 1}, "N"),
        ({"d": 0}, "d"),
        ({"kind": "adversarial"}, "kind"),
        ({"mask_prob": 1.5}, "mask_prob"),
        ({"mask_dims": 20}, "mask_dims"),
        ({"scale_range": (1.0, 0.5)}, "scale_range"),
        ({"theta_prior": "laplace"}, "theta_prior"),
        ({"noise_sd": 0.0}, "noise_sd"),
        ({"rank": 0}, "rank"),
    ],
)
def test_environment_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} is"):
        hcsa_environment(**kwargs)


def test_prior_rejects_bad_values():
    with pytest.raises(ValueError, match=r"sigma has shape \(2, 2\); expected \(3, 3\)"):
        linear_bandit_prior(jnp.zeros(3), jnp.eye(2))
    with pytest.raises(ValueError, match="sigma is not positive definite"):
        linear_bandit_prior(jnp.zeros(2), -jnp.eye(2))
    with pytest.raises(ValueError, match="noise_sd is"):
        linear_bandit_prior(jnp.zeros(2), jnp.eye(2), noise_sd=-1.0)
    with pytest.raises(ValueError, match=r"contexts has shape \(4, 2\); expected \(\*, 3\)"):
        linear_bandit_model(isotropic_linear_bandit_prior(3), jnp.ones((4, 2)), jnp.ones(4))


# ---------------------------------------------------------------------------------------
# LinTS-shared against the NumPyro model
# ---------------------------------------------------------------------------------------


def _shared_lin_ts_history(rng, d=4, n=25):
    A = rng.normal(size=(d, d))
    prior = linear_bandit_prior(
        jnp.asarray(rng.normal(size=d)), jnp.asarray(A @ A.T / d + 0.5 * np.eye(d)), 0.7
    )
    agent = shared_lin_ts()
    state = agent.init(jax.random.key(0), prior)
    played, rewards = [], []
    for t in range(n):
        x = jnp.asarray(rng.normal(size=(3, d)))
        a = int(agent.act(jax.random.key(t), state, x))
        y = jnp.asarray(rng.normal())
        state = agent.update(jax.random.key(1000 + t), state, x, a, y)
        played.append(np.asarray(x[a]))
        rewards.append(float(y))
    return prior, state, jnp.asarray(np.stack(played)), jnp.asarray(rewards)


@pytest.mark.exact
def test_shared_lin_ts_posterior_is_the_numpyro_posterior():
    """log N(θ; m, C) − log p(θ, data) is the same constant (−log p(data)) for every θ."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        prior, state, X, y = _shared_lin_ts_history(rng)
        assert state.precision.dtype == jnp.float64
        mean, cov = shared_lin_ts_posterior(state)
        post = jax.scipy.stats.multivariate_normal.logpdf
        diffs = []
        for i in range(30):
            theta = mean + jnp.asarray(rng.normal(size=4)) * (1 + i / 10)
            joint, _ = log_density(linear_bandit_model, (prior, X, y), {}, {"theta": theta})
            diffs.append(float(post(theta, mean, cov) - joint))
        assert np.ptp(diffs) < 1e-8, np.ptp(diffs)


@pytest.mark.exact
def test_shared_lin_ts_posterior_matches_batch_conjugate_formula():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        prior, state, X, y = _shared_lin_ts_history(rng)
        S0 = np.asarray(prior.sigma)
        s2 = float(prior.noise_sd) ** 2
        Xn, yn = np.asarray(X), np.asarray(y)
        cov = np.linalg.inv(np.linalg.inv(S0) + Xn.T @ Xn / s2)
        mean = cov @ (np.linalg.solve(S0, np.asarray(prior.mu)) + Xn.T @ yn / s2)
        m, C = shared_lin_ts_posterior(state)
        np.testing.assert_allclose(m, mean, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(C, cov, rtol=1e-8, atol=1e-12)


def test_shared_lin_ts_ridge_mode_and_sample_covariance():
    prior = isotropic_linear_bandit_prior(2, noise_sd=2.0)
    agent = shared_lin_ts(v=0.5, lam=3.0)
    s = agent.init(jax.random.key(0), prior)
    np.testing.assert_allclose(s.precision, 3.0 / 4.0 * np.eye(2), rtol=1e-6)
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    s = agent.update(jax.random.key(1), s, x, 0, jnp.float32(2.0))
    # act plays argmax of one sample from N(G⁻¹B, v² G⁻¹): P(arm 0) = Φ(Δm / sd(Δ))
    m, C = shared_lin_ts_posterior(s)
    n = 20_000
    acts = np.asarray(
        jax.vmap(lambda k: agent.act(k, s, x))(jax.random.split(jax.random.key(2), n))
    )
    diff_sd = 0.5 * math.sqrt(float(C[0, 0] + C[1, 1] - 2 * C[0, 1]))
    p0 = stats.norm.cdf(float(m[0] - m[1]) / diff_sd)
    assert abs((acts == 0).mean() - p0) <= 5 * math.sqrt(p0 * (1 - p0) / n)


# ---------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------


def test_oful_radius_and_shared_lin_ucb_choice():
    V = jnp.array([[4.0, 0.0], [0.0, 1.0]])
    beta = float(oful_radius(V, 1.0, 0.5, 0.1, 2.0))
    assert beta == pytest.approx(0.5 * math.sqrt(math.log(4.0) + 2 * math.log(10.0)) + 2.0)
    agent = shared_lin_ucb(alpha=1.0)
    s = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    s = agent.update(jax.random.key(1), s, jnp.eye(2), 0, jnp.float32(1.0))
    s = agent.update(jax.random.key(1), s, jnp.eye(2), 0, jnp.float32(1.0))
    # arm 1 is unexplored: its width dominates
    assert int(agent.act(jax.random.key(2), s, jnp.eye(2))) == 1


def test_drts_selection_probabilities_match_monte_carlo():
    means = jnp.array([0.0, 0.3, -0.2, 0.1, 0.5])
    sds = jnp.array([1.0, 0.5, 2.0, 0.0, 0.8])  # one deterministic score
    pi = np.asarray(drts_selection_probs(means, sds, 64))
    n = 200_000
    s = means + sds * jax.random.normal(jax.random.key(0), (n, 5))
    freq = np.bincount(np.asarray(jnp.argmax(s, axis=1)), minlength=5) / n
    se = np.sqrt(freq * (1 - freq) / n)
    assert abs(pi.sum() - 1) < 1e-5
    assert np.all(np.abs(pi - freq) <= 5 * se + 2e-3)


def test_drts_resampling_propensity_matches_its_action_frequencies():
    """update's propensity π̃_a is the law of act's resampling loop."""
    agent = drts(v=1.0, gamma=0.2, delta=0.5)
    prior = isotropic_linear_bandit_prior(2)
    s = agent.init(jax.random.key(0), prior)
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6], [-0.5, 0.2]])
    s = agent.update(jax.random.key(1), s, x, 0, jnp.float32(1.0))
    n = 20_000
    acts = np.asarray(
        jax.vmap(lambda k: agent.act(k, s, x))(jax.random.split(jax.random.key(2), n))
    )
    freq = np.bincount(acts, minlength=4) / n
    # reconstruct π and the propensity exactly as update does
    V = s.gram_all + 1.0 * math.sqrt(1.0) * jnp.eye(2)
    beta = jnp.linalg.solve(V, s.moment)
    sds = jnp.sqrt(jnp.einsum("nd,de,ne->n", x, jnp.linalg.inv(V), x))
    pi = np.asarray(drts_selection_probs(x @ beta, sds, 64))
    from ppl_bandits.linear_contextual.hcsa import max_trials

    M = int(max_trials(2, 0.2, 0.5))
    S = pi > 0.2
    miss = 1 - pi[S].sum()
    prop = np.where(S, pi / pi[S].sum() * (1 - miss**M), pi * miss ** (M - 1))
    assert abs(prop.sum() - 1) < 1e-5
    se = np.sqrt(prop * (1 - prop) / n)
    assert np.all(np.abs(freq - prop) <= 5 * se + 2e-3)


def test_hy_ran_uses_all_arms_with_probability_p():
    agent = hy_ran(p=0.3)
    s = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    x = jnp.eye(2)
    full = jax.vmap(lambda k: agent.update(k, s, x, 0, jnp.float32(1.0)).num_full)(
        jax.random.split(jax.random.key(1), 10_000)
    )
    assert abs(float(full.mean()) - 0.3) <= 5 * math.sqrt(0.21 / 10_000)


def test_sup_lin_ucb_updates_at_most_one_stage():
    agent = sup_lin_ucb(horizon=50)
    s = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(3))
    rng = np.random.default_rng(0)
    for t in range(30):
        x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
        a = agent.act(jax.random.key(t), s, x)
        new = agent.update(jax.random.key(t), s, x, a, jnp.float32(0.1))
        changed = np.any(np.asarray(new.grams != s.grams), axis=(1, 2))
        assert changed.sum() <= 1
        s = new
    assert int(s.round) == 30
    assert np.any(np.asarray(s.grams) != np.eye(3))  # some stage was updated
    # the Sherman–Morrison inverses are the inverses of the stage Gram matrices
    np.testing.assert_allclose(
        np.asarray(s.inv_grams) @ np.asarray(s.grams),
        np.broadcast_to(np.eye(3), s.grams.shape),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (shared_lin_ts, {"v": 0.0}, "v"),
        (shared_lin_ts, {"lam": -1.0}, "lam"),
        (shared_lin_ucb, {"alpha": -1.0}, "alpha"),
        (shared_lin_ucb, {"delta": 1.0}, "delta"),
        (drts, {"gamma": 1.5}, "gamma"),
        (drts, {"num_quadrature": 1}, "num_quadrature"),
        (hy_ran, {"p": 0.0}, "p"),
        (sup_lin_ucb, {"horizon": 0}, "horizon"),
    ],
)
def test_baselines_reject_bad_values(factory, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} is"):
        factory(**kwargs)


@pytest.mark.parametrize("agent", [*hcsa_experiment_agents(horizon=20), uniform_random()])
def test_every_agent_rejects_bad_contexts(agent):
    s = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(3))
    with pytest.raises(ValueError, match=r"^contexts has shape \(1, 3\)"):
        agent.act(jax.random.key(1), s, jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"^contexts has shape \(4, 2\); expected \(N, 3\)"):
        agent.act(jax.random.key(1), s, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"^action is 9"):
        agent.update(jax.random.key(1), s, jnp.ones((4, 3)), 9, jnp.float32(0.0))


def test_drts_gamma_must_be_below_one_over_n():
    agent = drts(gamma=0.4)
    s = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(2))
    with pytest.raises(ValueError, match=r"^gamma is 0.4; expected a number in \(0, 1/N\)"):
        agent.act(jax.random.key(1), s, jnp.ones((3, 2)))


# ---------------------------------------------------------------------------------------
# Regret sanity check
# ---------------------------------------------------------------------------------------


def _regret(env, agent, *, rounds, runs, seed):
    """Total expected regret per run with common random numbers across agents."""

    def one(key):
        k_draw, k_init, k_loop = jax.random.split(key, 3)
        prior, params = env.draw(k_draw)
        state = agent.init(k_init, prior)

        def step(state, t):
            kc, ka, kr, ku = jax.random.split(jax.random.fold_in(k_loop, t), 4)
            x = env.contexts(kc, params)
            a = agent.act(ka, state, x)
            m = env.mean_rewards(params, x)
            state = agent.update(ku, state, x, a, env.reward(kr, params, x, a))
            return state, jnp.max(m) - m[a]

        _, reg = jax.lax.scan(step, state, jnp.arange(rounds))
        return reg.sum()

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), runs)))


def test_regret_sanity_hcsa_and_shared_lints_beat_uniform_play():
    env = hcsa_environment(d=5, N=10, mask_prob=0.3, noise_sd=0.3, scale_range=(0.5, 1.0))
    kw = {"rounds": 150, "runs": 12, "seed": 0}
    uniform = _regret(env, uniform_random(), **kw)
    for agent in (hcsa_ts(v=0.3, gamma=0.5), shared_lin_ts(v=0.3, lam=1.0)):
        reg = _regret(env, agent, **kw)
        diff = uniform - reg  # paired: the same problems and context streams
        se = diff.std(ddof=1) / math.sqrt(diff.size)
        assert diff.mean() > 5 * se, (agent.name, diff.mean(), se)
        assert reg.mean() < 0.5 * uniform.mean(), (agent.name, reg.mean(), uniform.mean())


def test_every_baseline_traces_under_jit_vmap_and_scan():
    """No Python control flow on traced values: the whole simulation traces (no compile)."""
    env = hcsa_environment(d=3, N=4, mask_prob=0.5)
    for agent in [*hcsa_experiment_agents(horizon=10), uniform_random()]:

        def one(key, agent=agent):
            k_draw, k_init, k_loop = jax.random.split(key, 3)
            prior, params = env.draw(k_draw)
            state = agent.init(k_init, prior)

            def step(state, t):
                kc, ka, kr, ku = jax.random.split(jax.random.fold_in(k_loop, t), 4)
                x = env.contexts(kc, params)
                a = agent.act(ka, state, x)
                state = agent.update(ku, state, x, a, env.reward(kr, params, x, a))
                return state, a

            return jax.lax.scan(step, state, jnp.arange(5))

        keys = jax.random.split(jax.random.key(0), 2)
        _, actions = jax.eval_shape(jax.jit(jax.vmap(one)), keys)
        assert actions.shape == (2, 5)
        assert jnp.issubdtype(actions.dtype, jnp.integer)
