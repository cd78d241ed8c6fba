"""Runner, environments and the command line."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CALIBRATION_RECORD_KEYS
from models.mixed_effect import fig2_prior, sample_mixed_effect_parameters
from ppl_bandits import cli
from ppl_bandits.cli import main
from ppl_bandits.core.runner import draw_problems, simulate
from ppl_bandits.mixed_effect.catalog import make_agent
from ppl_bandits.mixed_effect.environment import mixed_effect_environment


def test_chunking_does_not_change_results():
    env = mixed_effect_environment(8, 2, 2)
    agent = make_agent("meTS-Lin")
    a = simulate(jax.random.key(1), env, agent, num_rounds=30, num_runs=3, chunk_size=30)
    b = simulate(jax.random.key(1), env, agent, num_rounds=30, num_runs=3, chunk_size=7)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_allclose(a.regret, b.regret, rtol=1e-6)


def test_agents_share_problems_and_contexts():
    env = mixed_effect_environment(8, 2, 2)
    key = jax.random.key(4)
    a = simulate(key, env, make_agent("LinTS"), num_rounds=20, num_runs=2)
    b = simulate(key, env, make_agent("meTS-Lin"), num_rounds=20, num_runs=2)
    np.testing.assert_array_equal(a.params.theta, b.params.theta)
    np.testing.assert_array_equal(a.prior.mixing, b.prior.mixing)
    # Shared contexts: the played context is the round's context whichever action is played.
    np.testing.assert_array_equal(a.contexts, b.contexts)
    c = simulate(jax.random.key(5), env, make_agent("LinTS"), num_rounds=20, num_runs=2)
    assert not np.allclose(a.params.theta, c.params.theta)


def test_history_is_consistent_with_the_problem():
    env = mixed_effect_environment(5, 2, 3)
    res = simulate(jax.random.key(0), env, make_agent("LinTS"), num_rounds=50, num_runs=2)
    theta = np.asarray(res.params.theta)
    acts = np.asarray(res.actions)
    means = np.einsum("rnd,rnd->rn", res.contexts, theta[np.arange(2)[:, None], acts])
    resid = np.asarray(res.rewards) - means
    assert abs(resid.mean()) < 4 / np.sqrt(resid.size)  # N(0, 1) noise
    assert np.all(np.asarray(res.regret) >= -1e-6)


def test_environment_parameters_follow_the_model_prior():
    """θ from the environment has the model's marginal moments (MCSE-scaled)."""
    prior = fig2_prior(jax.random.key(0), 3, 2, 2)
    keys = jax.random.split(jax.random.key(1), 20000)
    _, theta = jax.vmap(lambda k: sample_mixed_effect_parameters(k, prior))(keys)
    theta = np.asarray(theta, np.float64)
    b = np.asarray(prior.mixing[:, :, 0, 0], np.float64)
    var = 1.0 + 3.0 * np.sum(b**2, axis=1)  # Σ_0 + M Σ_Ψ Mᵀ = (1 + 3|b_i|²) I
    z = theta.mean(0) / np.sqrt(var[:, None] / len(keys))
    assert np.max(np.abs(z)) < 4.0
    # Variance check with its MCSE (Gaussian: var of s² is 2σ⁴/n).
    s2 = theta.var(0)
    z_var = (s2 - var[:, None]) / (var[:, None] * np.sqrt(2 / len(keys)))
    assert np.max(np.abs(z_var)) < 4.0
    # Cross-action covariance from the shared effects: Cov(θ_i, θ_j) = 3 b_iᵀb_j I.
    cov01 = np.mean(theta[:, 0, 0] * theta[:, 1, 0])
    expect = 3.0 * b[0] @ b[1]
    assert abs(cov01 - expect) < 4.0 * np.sqrt(var[0] * var[1] / len(keys))


def test_pool_contexts_come_from_the_pool():
    env = mixed_effect_environment(6, 1, 2, context="pool", pool_size=4)
    _, params = env.draw(jax.random.key(0))
    ctx = np.asarray(env.contexts(jax.random.key(1), params))
    pool = np.asarray(params.pool)
    assert all(any(np.allclose(c, p) for p in pool) for c in ctx)


def test_simulate_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(
        [
            "simulate",
            "mets-linear",
            "--runs",
            "2",
            "--rounds",
            "12",
            "--K",
            "5",
            "--agents",
            "mets-lin,LINTS",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    lines = (out / "regret.csv").read_text().splitlines()
    assert lines[0] == "agent,round,mean,se" and len(lines) == 1 + 2 * 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "mets-linear"
    assert set(summary["agents"]) == {"meTS-Lin", "LinTS"}
    for row in summary["agents"].values():
        assert {"final_regret_mean", "final_regret_se"} <= set(row)
    for key in ("wall_seconds", "command", "seed", "versions"):
        assert key in summary
    assert summary["command"].startswith("ppl-bandits simulate mets-linear")
    assert (out / "regret.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


def test_problems_must_match_the_number_of_runs():
    env = mixed_effect_environment(4, 1, 2)
    problems = draw_problems(jax.random.key(0), env, 3)
    with pytest.raises(ValueError, match="problems holds 3 runs; expected num_runs=2"):
        simulate(
            jax.random.key(0), env, make_agent("LinTS"), num_rounds=5, num_runs=2, problems=problems
        )


def test_dtype_follows_x64():
    env = mixed_effect_environment(4, 1, 2)
    res = simulate(jax.random.key(0), env, make_agent("LinTS"), num_rounds=3)
    assert res.regret.dtype == jnp.result_type(float)


def test_calibrate_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "cal"
    rc = main(
        [
            "calibrate",
            "--posterior",
            "mets-lin",
            "--replications",
            "16",
            "--rounds",
            "8",
            "--K",
            "3",
            "--L",
            "1",
            "--d",
            "2",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    record = json.loads((out / "calibration.json").read_text())
    assert rc == (0 if record["uniformity"]["verdict"] == "pass" else 1)
    assert set(CALIBRATION_RECORD_KEYS) <= set(record)
    assert record["command"].startswith("ppl-bandits calibrate")
    assert set(record["coverage"]) == {"50", "80", "95"}
    assert (out / "calibration.png").stat().st_size > 1000
    assert "uniformity" in printed
    assert main(["calibrate", "--posterior", "nope"]) == 2


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """``--out`` under a regular file cannot be created: one line naming --out, exit 2, and
    the experiment is never started."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiment ran although --out cannot be written")

    monkeypatch.setattr(cli, "run_experiment", must_not_run)
    blocker = tmp_path / "file"
    blocker.write_text("")
    t0 = time.perf_counter()
    rc = main(
        ["simulate", "mets-linear", "--runs", "2", "--rounds", "3000", "--out", f"{blocker}/x"]
    )
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "--out" in err[0] and str(blocker) in err[0]
    assert elapsed < 5.0, f"the error came after {elapsed:.1f} s of work"


def test_summary_with_one_run_is_strict_json_and_keeps_per_run_regrets(tmp_path):
    out = tmp_path / "sim"
    rc = main(
        [
            "simulate",
            "mets-linear",
            "--runs",
            "1",
            "--rounds",
            "20",
            "--K",
            "5",
            "--agents",
            "LinTS",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    summary = _strict((out / "summary.json").read_text())
    row = summary["agents"]["LinTS"]
    assert row["final_regret_se"] is None
    assert len(row["final_regret_per_run"]) == 1
    assert row["final_regret_per_run"][0] == pytest.approx(row["final_regret_mean"], rel=1e-5)
    lines = (out / "regret_runs.csv").read_text().splitlines()
    assert lines[0] == "agent,run,round,cumulative_regret"
    assert lines[-1].startswith("LinTS,0,20,")
