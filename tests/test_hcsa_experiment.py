"""The ``hcsa`` experiment (W. Kim 2025, Sec. 6): CLI run, options, drifting contexts, the
point estimates of the six agents and the maximum prediction error."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.linear_bandit import isotropic_linear_bandit_prior
from ppl_bandits.cli import main
from ppl_bandits.core.runner import draw_problems, simulate
from ppl_bandits.experiments.catalog import build_experiment
from ppl_bandits.experiments.hcsa import checkpoint_rounds, hcsa_experiment_agents
from ppl_bandits.linear_contextual.baselines import uniform_random
from ppl_bandits.linear_contextual.environment import hcsa_environment
from ppl_bandits.linear_contextual.hcsa import sampling_moments
from ppl_bandits.linear_contextual.metrics import (
    PREDICTION_ERROR_SALT,
    point_estimate,
    prediction_error_curve,
)
from tests.conftest import EXACT_RTOL, X64

AGENTS = ("HCSA+TS", "LinTS-shared", "LinUCB-shared", "DRTS", "HyRan", "SupLinUCB")


# ---------------------------------------------------------------------------------------
# The experiment through the command line
# ---------------------------------------------------------------------------------------


def test_cli_runs_hcsa_and_writes_regret_and_prediction_error(tmp_path, capsys):
    out = tmp_path / "hcsa"
    argv = ["simulate", "hcsa", "--d", "3", "--N", "3", "--rounds", "8", "--runs", "2"]
    argv += ["--mask-prob", "0.5", "--agents", "hyran", "--quiet", "--out", str(out)]
    argv += ["--set", "num_checkpoints=4", "--set", "error_draws=2", "--set", "kind=drift"]
    assert main(argv) == 0
    for f in ("regret.csv", "regret.png", "metrics.csv", "metric_max_prediction_error.png"):
        assert (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    s = summary["settings"]
    assert (s["dim"], s["num_arms"], s["num_rounds"], s["num_runs"]) == (3, 3, 8, 2)
    assert s["kind"] == "drift" and s["mask_dims"] == 1 and s["checkpoints"] == [2, 4, 6, 8]
    assert summary["agents"].keys() == {"HyRan"}  # names match case-insensitively
    assert summary["command"].startswith("ppl-bandits simulate hcsa")
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["agent"], int(r["round"])) for r in rows] == [("HyRan", t) for t in (2, 4, 6, 8)]
    assert all(r["metric"] == "max_prediction_error" and float(r["mean"]) >= 0 for r in rows)
    with open(out / "regret.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert "final cumulative regret" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--K", "3"], "does not take num_actions"),
        (["--set", "bogus=1"], "does not take bogus"),
        (["--set", "kind=sideways"], "kind is 'sideways'"),
        (["--agents", "LinTS-shared,Oracle"], "agent is 'Oracle'"),
        (["--set", "error_draws=0"], "error_draws is 0"),
        (["--mask-prob", "1.5"], "mask_prob is 1.5"),
    ],
)
def test_cli_refuses_bad_options(tmp_path, capsys, extra, message):
    argv = ["simulate", "hcsa", "--rounds", "4", "--runs", "1", "--quiet"]
    assert main([*argv, *extra, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_registered_variants_and_defaults():
    _, agents, s = build_experiment("hcsa")
    assert [a.name for a in agents] == list(AGENTS)
    assert (s["dim"], s["num_arms"], s["num_runs"], s["kind"]) == (20, 20, 20, "iid")
    assert s["num_rounds"] == 20_000 and len(s["checkpoints"]) == 40
    assert build_experiment("hcsa-drift", num_rounds=10)[2]["kind"] == "drift"
    _, _, s = build_experiment("hcsa-low-rank", num_rounds=10, dim=8)
    assert s["kind"] == "low_rank" and s["rank"] == 2


def test_agent_names_are_case_insensitive_and_per_action_names_are_refused():
    names = [a.name for a in hcsa_experiment_agents(horizon=10, names=["lints-SHARED", "hcsa+ts"])]
    assert names == ["LinTS-shared", "HCSA+TS"]
    # LinTS and LinUCB are the per-action baselines of the mixed-effect family, not these.
    for name in ("LinTS", "LinUCB"):
        with pytest.raises(ValueError, match=rf"^agent is '{name}'; expected one of HCSA\+TS, "):
            hcsa_experiment_agents(horizon=10, names=[name])
    with pytest.raises(ValueError, match=r"LinTS-shared, LinUCB-shared, DRTS, HyRan, SupLinUCB$"):
        hcsa_experiment_agents(horizon=10, names=["LinTS"])


def test_checkpoint_rounds_divide_the_horizon():
    for T, n in [(20_000, 40), (1001, 40), (30, 40), (97, 10)]:
        cps = checkpoint_rounds(T, n)
        step = cps[0]
        assert cps[-1] == T and len(cps) <= n and T % step == 0
        assert cps == tuple(range(step, T + 1, step))
    assert checkpoint_rounds(97, 10) == (97,)  # a prime horizon: only the end


# ---------------------------------------------------------------------------------------
# Drifting contexts through the runner (round index passed to env.contexts)
# ---------------------------------------------------------------------------------------


def test_every_agent_traces_in_the_drifting_environment():
    """The round index reaches env.contexts inside the scan; no concrete t is needed."""
    env = hcsa_environment(d=3, N=4, kind="drift", drift_period=4.0)
    for agent in hcsa_experiment_agents(horizon=10):

        def one(key, agent=agent):
            prior, params = env.draw(jax.random.fold_in(key, 0))
            state = agent.init(jax.random.fold_in(key, 1), prior)

            def step(state, t):
                kc, ka, kr, ku = jax.random.split(jax.random.fold_in(key, t), 4)
                x = env.contexts(kc, params, t)
                a = agent.act(ka, state, x)
                state = agent.update(ku, state, x, a, env.reward(kr, params, x, a))
                return state, a

            return jax.lax.scan(step, state, jnp.arange(5))

        _, actions = jax.eval_shape(jax.jit(jax.vmap(one)), jax.random.split(jax.random.key(0), 2))
        assert actions.shape == (2, 5), agent.name


@pytest.mark.slow
def test_every_agent_runs_through_simulate_in_the_drifting_environment():
    env = hcsa_environment(d=3, N=4, kind="drift", drift_period=4.0)
    key = jax.random.key(0)
    problems = draw_problems(key, env, 2)
    for agent in hcsa_experiment_agents(horizon=6):
        res = simulate(key, env, agent, num_rounds=6, num_runs=2, problems=problems)
        assert np.all(np.isfinite(np.asarray(res.regret))), agent.name
        assert np.all(np.asarray(res.regret) >= -1e-6), agent.name
        assert np.all((np.asarray(res.actions) >= 0) & (np.asarray(res.actions) < 4))


# ---------------------------------------------------------------------------------------
# Point estimates and the prediction error
# ---------------------------------------------------------------------------------------


def _spd(rng, d, scale=1.0):
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.3 * np.eye(d))


@pytest.mark.exact
def test_point_estimate_is_each_agents_estimator(rng):
    d, t = 4, 7
    dtype = jnp.float64 if X64 else jnp.float32
    prior = isotropic_linear_bandit_prior(d, dtype=dtype)
    agents = {a.name: a for a in hcsa_experiment_agents(horizon=50)}
    G, m = _spd(rng, d), rng.normal(size=d)
    eye = np.eye(d)

    def state_of(name, **fields):
        s = agents[name].init(jax.random.key(0), prior)
        cast = {k: jnp.asarray(v, s._asdict()[k].dtype) for k, v in fields.items()}
        return s._replace(**cast)

    expected = {
        "HCSA+TS": (state_of("HCSA+TS", gram=G, moment=m), np.linalg.solve(G, m)),
        "LinTS-shared": (state_of("LinTS-shared", precision=G, moment=m), np.linalg.solve(G, m)),
        "LinUCB-shared": (state_of("LinUCB-shared", gram=G, moment=m), np.linalg.solve(G, m)),
        "DRTS": (  # λ√t with λ = 1 after t rounds
            state_of("DRTS", gram_all=G, moment=m, round=t),
            np.linalg.solve(G + math.sqrt(t) * eye, m),
        ),
        "HyRan": (  # λ_{t+1} = 2d log(t + 2)
            state_of("HyRan", gram=G, moment=m, round=t),
            np.linalg.solve(G + 2 * d * math.log(t + 2) * eye, m),
        ),
    }
    S = agents["SupLinUCB"].init(jax.random.key(0), prior).grams.shape[0]
    grams = np.stack([eye + _spd(rng, d) for _ in range(S)])
    moments = rng.normal(size=(S, d))
    pooled = eye + np.sum(grams - eye, axis=0)
    expected["SupLinUCB"] = (
        state_of("SupLinUCB", grams=grams, moments=moments),
        np.linalg.solve(pooled, moments.sum(0)),
    )
    for name, (state, want) in expected.items():
        got = np.asarray(point_estimate(agents[name], state))
        np.testing.assert_allclose(got, want, rtol=EXACT_RTOL, atol=EXACT_RTOL, err_msg=name)
    # negative control: an unregularized solve is not HyRan's or DRTS's estimate
    for name in ("DRTS", "HyRan"):
        wrong = np.linalg.solve(G, m)
        got = point_estimate(agents[name], expected[name][0])
        assert not np.allclose(np.asarray(got), wrong, rtol=0.05)
    # HCSA: the centre of the Thompson sample; rank-deficient V gives the minimum-norm solution
    s = expected["HCSA+TS"][0]
    np.testing.assert_allclose(
        point_estimate(agents["HCSA+TS"], s),
        sampling_moments(s.gram, s.moment, v=1.0)[0],
        rtol=EXACT_RTOL,
    )
    u = rng.normal(size=d)
    s = state_of("HCSA+TS", gram=np.outer(u, u), moment=2.0 * u)
    np.testing.assert_allclose(
        point_estimate(agents["HCSA+TS"], s),
        np.linalg.pinv(np.outer(u, u)) @ (2.0 * u),
        rtol=1e-3,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match=r"^state is a UniformState"):
        uniform = uniform_random()
        point_estimate(uniform, uniform.init(jax.random.key(0), prior))


def test_prediction_error_equals_a_direct_computation():
    """In the drifting environment, so that the round index t of the metric's contexts matters."""
    env = hcsa_environment(
        d=3, N=20, kind="drift", mask_prob=0.5, mask_dims=1, drift_amplitude=3.0, drift_period=4.0
    )
    agent = hcsa_experiment_agents(horizon=6, names=["LinTS-shared"])[0]
    key = jax.random.key(3)
    problems = draw_problems(key, env, 2)
    res = simulate(key, env, agent, num_rounds=6, num_runs=2, problems=problems, checkpoints=(3, 6))
    # the played contexts follow the drifting mean: +s at t = 1, 5 and −s at t = 3
    proj = np.einsum("rtd,rd->rt", np.asarray(res.contexts), np.asarray(res.params.drift_direction))
    assert np.all(proj[:, [1, 5]] > 0) and np.all(proj[:, [3]] < 0)
    draws = 3
    rounds, values = prediction_error_curve(
        env, problems, res.checkpoint_states, agent=agent, draws=draws
    )
    assert rounds.tolist() == [3, 6] and values.shape == (2, 2)

    def direct(theta_hat_of):
        out = np.zeros((2, 2))
        for r in range(2):
            params = jax.tree_util.tree_map(lambda a, r=r: a[r], problems.params)
            base = jax.random.fold_in(problems.run_keys[r], PREDICTION_ERROR_SALT)
            for c, t in enumerate((3, 6)):
                theta_hat = theta_hat_of(t, r)
                errs = []
                for j in range(draws):
                    k = jax.random.fold_in(jax.random.fold_in(base, t), j)
                    x = np.asarray(env.contexts(k, params, t), np.float64)
                    errs.append(np.max(np.abs(x @ (theta_hat - np.asarray(params.theta)))))
                out[r, c] = np.mean(errs)
        return out

    def ridge(t, r):  # LinTS-shared's posterior mean G⁻¹B, solved in NumPy
        s = res.checkpoint_states[t]
        return np.linalg.solve(np.asarray(s.precision[r], np.float64), np.asarray(s.moment[r]))

    np.testing.assert_allclose(values, direct(ridge), rtol=1e-5, atol=1e-6)
    # negative control: the estimate of the other checkpoint gives other values
    swapped = direct(lambda t, r: ridge(9 - t, r))
    assert np.min(np.abs(values - swapped)) > 1e-4
