"""Agents: their incremental states equal the closed forms, their samplers draw from the
posterior they claim (checked with MCSE-scaled tolerances and a negative control), and
meTS-Lin beats the baselines on the paper's linear setting at reduced size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EXACT_RTOL, random_history, random_prior
from ppl_bandits.core.likelihood import stats_from_history
from ppl_bandits.core.runner import draw_problems, simulate
from ppl_bandits.mixed_effect.agents import sample_actions, sample_effects
from ppl_bandits.mixed_effect.catalog import AGENT_NAMES, make_agent, resolve_agent_name
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from ppl_bandits.mixed_effect.posterior import (
    conditional_action_posterior,
    effect_posterior,
    factored_effect_posterior,
    marginal_prior,
)


def _feed(agent, prior, contexts, actions, rewards):
    """Run the agent's update on a fixed history (contexts broadcast to every action)."""
    K = prior.mixing.shape[0]
    state = agent.init(jax.random.key(0), prior)
    update = jax.jit(agent.update)
    for x, a, y in zip(contexts, actions, rewards, strict=True):
        state = update(jax.random.key(1), state, jnp.broadcast_to(x, (K, x.shape[0])), a, y)
    return state


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


@pytest.mark.exact
@pytest.mark.parametrize("matrix", [False, True])
def test_mets_incremental_state_equals_closed_form(rng, matrix):
    prior = random_prior(rng, 6, 2, 2, matrix_mixing=matrix)
    hist = random_history(rng, prior, 40, unplayed=(5,))
    state = _feed(make_agent("meTS-Lin"), prior, *hist)
    stats = stats_from_history(prior, *hist)
    exact = effect_posterior(prior, stats)
    prec = np.linalg.inv(np.asarray(exact.cov, np.float64))
    # Float32 accumulates 40 in-place updates; the float64 pass is at round-off.
    tol = EXACT_RTOL if EXACT_RTOL < 1e-6 else 5e-3
    assert _rel(state.eff_prec, prec) < tol
    assert (
        _rel(np.linalg.solve(np.asarray(state.eff_prec, np.float64), state.eff_nat), exact.mean)
        < tol
    )
    psi = exact.mean + 0.3
    cond = conditional_action_posterior(prior, stats, psi)
    mean = jnp.einsum("kde,e->kd", state.gain, psi) + state.shift
    assert _rel(mean, cond.mean) < tol
    assert _rel(state.cond_sqrt @ jnp.swapaxes(state.cond_sqrt, -1, -2), cond.cov) < tol


@pytest.mark.exact
def test_lints_state_is_the_conjugate_posterior(rng):
    prior = random_prior(rng, 4, 2, 3)
    contexts, actions, rewards = random_history(rng, prior, 30, unplayed=(2,))
    state = _feed(make_agent("LinTS"), prior, contexts, actions, rewards)
    m0, C0 = (np.asarray(a, np.float64) for a in marginal_prior(prior))
    X, A, Y = (np.asarray(a, np.float64) for a in (contexts, actions, rewards))
    s2 = float(prior.noise_sd) ** 2
    tol = EXACT_RTOL if EXACT_RTOL < 1e-6 else 5e-3
    for i in range(4):
        Xi, Yi = X[A == i], Y[A == i]
        prec = np.linalg.inv(C0[i]) + Xi.T @ Xi / s2
        cov = np.linalg.inv(prec)
        mean = cov @ (np.linalg.solve(C0[i], m0[i]) + Xi.T @ Yi / s2)
        assert _rel(state.mean[i], mean) < tol
        assert _rel(state.sqrt[i] @ state.sqrt[i].T, cov) < tol


def _mc_check(draws, mean, cov):
    """Squared Mahalanobis distances of iid draws under N(mean, cov): mean p, var 2p."""
    draws = np.asarray(draws, np.float64)
    diff = draws - np.asarray(mean, np.float64)
    sol = np.linalg.solve(np.asarray(cov, np.float64), diff.T).T
    d2 = np.sum(diff * sol, axis=1)
    p = draws.shape[1]
    z_maha = (d2.mean() - p) / np.sqrt(2 * p / len(d2))
    sd = np.sqrt(np.diag(np.asarray(cov, np.float64)))
    z_mean = (draws.mean(0) - np.asarray(mean)) / (sd / np.sqrt(len(d2)))
    return z_maha, np.max(np.abs(z_mean))


# Bonferroni-style critical value: family-wise error 1e-3 over at most ~20 z-tests.
Z_CRIT = 4.4


def test_mets_sampler_draws_the_exact_posterior_and_rejects_a_wrong_one(rng):
    prior = random_prior(rng, 5, 2, 2)
    hist = random_history(rng, prior, 60)
    state = _feed(make_agent("meTS-Lin"), prior, *hist)
    stats = stats_from_history(prior, *hist)
    n = 20000
    keys = jax.random.split(jax.random.key(7), n)
    psi = jax.vmap(lambda k: sample_effects(k, state, None, 2, 2))(keys)
    exact = effect_posterior(prior, stats)
    z_maha, z_mean = _mc_check(psi, exact.mean, exact.cov)
    assert abs(z_maha) < Z_CRIT and z_mean < Z_CRIT
    # Negative control: the same draws judged against a covariance 1.3 times too large.
    z_bad, _ = _mc_check(psi, exact.mean, 1.3 * exact.cov)
    assert abs(z_bad) > Z_CRIT
    # θ | Ψ for a fixed Ψ.
    psi0 = exact.mean
    theta = jax.vmap(lambda k: sample_actions(k, state, psi0))(keys[:5000])
    cond = conditional_action_posterior(prior, stats, psi0)
    for i in range(5):
        z_maha, z_mean = _mc_check(theta[:, i], cond.mean[i], cond.cov[i])
        assert abs(z_maha) < Z_CRIT and z_mean < Z_CRIT


@pytest.mark.parametrize("variant", ["mean-field", "published"])
def test_factored_sampler_draws_its_factors(rng, variant):
    prior = random_prior(rng, 6, 3, 2)
    hist = random_history(rng, prior, 80)
    state = _feed(make_agent("meTS-Lin-Fa", factored_variant=variant), prior, *hist)
    fac = factored_effect_posterior(prior, stats_from_history(prior, *hist), variant)
    keys = jax.random.split(jax.random.key(3), 20000)
    psi = jax.vmap(lambda k: sample_effects(k, state, variant, 3, 2))(keys).reshape(-1, 3, 2)
    for l in range(3):
        z_maha, z_mean = _mc_check(psi[:, l], fac.mean[l], fac.cov[l])
        assert abs(z_maha) < Z_CRIT and z_mean < Z_CRIT
    # The factors are independent: cross-covariances vanish (up to MC error).
    c = np.corrcoef(np.asarray(psi).reshape(-1, 6).T)[0:2, 2:6]
    assert np.max(np.abs(c)) < Z_CRIT / np.sqrt(20000)


def test_no_data_means_prior_samples(rng):
    """With no data meTS samples θ from the model's prior."""
    prior = random_prior(rng, 3, 2, 2)
    state = make_agent("meTS-Lin").init(jax.random.key(0), prior)

    def draw(k):
        k1, k2 = jax.random.split(k)
        return sample_actions(k2, state, sample_effects(k1, state, None, 2, 2))

    theta = jax.vmap(draw)(jax.random.split(jax.random.key(5), 20000))
    m0, C0 = marginal_prior(prior)
    for i in range(3):
        z_maha, z_mean = _mc_check(theta[:, i], m0[i], C0[i])
        assert abs(z_maha) < Z_CRIT and z_mean < Z_CRIT


def test_mets_beats_lints_and_linucb_on_the_fig2_linear_setting():
    """Paper Fig. 2 (linear) at reduced size: K=50, L=3, d=2, 1000 rounds, 30 runs.

    All agents see the same problems and noise (common random numbers), so the paired
    difference of final regrets has a small standard error; meTS-Lin must win by more
    than 3 standard errors of that difference against each baseline.
    """
    env = mixed_effect_environment(50, 3, 2)
    key = jax.random.key(2023)
    problems = draw_problems(key, env, 30)
    final = {}
    for name in ("meTS-Lin", "LinTS", "LinUCB"):
        res = simulate(key, env, make_agent(name), num_rounds=1000, num_runs=30, problems=problems)
        final[name] = np.asarray(res.regret, np.float64).sum(axis=1)
    for base in ("LinTS", "LinUCB"):
        diff = final[base] - final["meTS-Lin"]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"{base} - meTS-Lin: {diff.mean():.1f} ± {se:.1f}")
        assert diff.mean() > 3 * se


def test_agent_names_are_case_insensitive():
    assert [resolve_agent_name(n.upper()) for n in AGENT_NAMES] == list(AGENT_NAMES)
    with pytest.raises(ValueError, match="agent is 'meTS-Bogus'; expected one of"):
        resolve_agent_name("meTS-Bogus")


@pytest.mark.parametrize("name", ["meTS-GLM", "meTS-GLM-Fa", "GLM-TS", "UCB-GLM"])
def test_logistic_agents_need_a_horizon(name):
    with pytest.raises(ValueError, match="horizon"):
        make_agent(name)


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_every_agent_runs_under_jit_and_vmap(name):
    reward = "logistic" if "GLM" in name else "linear"
    env = mixed_effect_environment(6, 2, 2, reward=reward)
    res = simulate(
        jax.random.key(0),
        env,
        make_agent(name, horizon=25),
        num_rounds=25,
        num_runs=2,
        chunk_size=10,
    )
    r = np.asarray(res.regret)
    assert r.shape == (2, 25) and np.all(np.isfinite(r)) and np.all(r >= -1e-6)
    assert int(np.asarray(res.state.count).sum()) == 50


@pytest.mark.exact
@pytest.mark.parametrize("name", ["meTS-GLM", "GLM-TS"])
def test_logistic_agents_run_in_either_precision(name):
    """Regression: under JAX_ENABLE_X64 actions arrive as int64 and must still be stored
    in the int32 history buffer without a dtype-mismatch warning (warnings are errors)."""
    env = mixed_effect_environment(4, 1, 2, reward="logistic")
    res = simulate(jax.random.key(0), env, make_agent(name, horizon=6), num_rounds=6)
    assert np.asarray(res.state.history.a)[0].tolist()[:6] == np.asarray(res.actions)[0].tolist()
