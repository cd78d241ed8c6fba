"""Auditing a recorded history: the file formats, the replay and ``ppl-bandits audit --history``."""

import json

import jax
import numpy as np
import pytest

from conftest import EXACT_RTOL
from ppl_bandits.cli import main
from ppl_bandits.core.runner import replay, simulate
from ppl_bandits.data.history import load_history, write_history
from ppl_bandits.mixed_effect.agents import mets_posterior
from ppl_bandits.mixed_effect.catalog import make_agent
from ppl_bandits.mixed_effect.environment import mixed_effect_environment

K, L, D, N = 4, 2, 2, 60


@pytest.fixture(scope="module")
def run():
    env = mixed_effect_environment(K, L, D)
    agent = make_agent("meTS-Lin")
    res = simulate(jax.random.key(0), env, agent, num_rounds=N, num_runs=1, checkpoints=(20, N))
    history = (
        np.asarray(res.contexts[0]),
        np.asarray(res.actions[0]),
        np.asarray(res.rewards[0]),
    )
    return env, agent, res, history


@pytest.mark.exact
def test_replayed_state_claims_the_simulated_posterior(run):
    """The state rebuilt from the recorded rounds claims what the simulated state claims."""
    _, agent, res, history = run
    prior = jax.tree.map(lambda a: a[0], res.prior)
    states = replay(jax.random.key(0), agent, prior, history, K, (0, 20, N))
    for t in (20, N):
        want = mets_posterior(jax.tree.map(lambda a, t=t: a[0], res.checkpoint_states[t]))
        got = mets_posterior(states[t])
        np.testing.assert_allclose(got.mean, want.mean, rtol=EXACT_RTOL, atol=EXACT_RTOL)
        np.testing.assert_allclose(got.cov, want.cov, rtol=EXACT_RTOL, atol=EXACT_RTOL)
    # negative control: a history with one reward changed claims another posterior
    wrong = (history[0], history[1], history[2].copy())
    wrong[2][0] += 1.0
    moved = mets_posterior(replay(jax.random.key(0), agent, prior, wrong, K, (N,))[N])
    assert not np.allclose(moved.mean, mets_posterior(states[N]).mean, rtol=1e-3)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_history_files_round_trip(tmp_path, run, suffix):
    history = run[3]
    path = write_history(tmp_path / f"h{suffix}", *history)
    x, a, y = load_history(path)
    np.testing.assert_allclose(x, history[0], rtol=1e-7)
    np.testing.assert_array_equal(a, history[1])
    np.testing.assert_allclose(y, history[2], rtol=1e-7)


def test_bad_history_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"history '.*nope\.csv' does not exist"):
        load_history(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("x0,x1,reward\n0.1,0.2,1.0\n")
    with pytest.raises(ValueError, match=r"expected 'action', 'reward'"):
        load_history(bad)
    bad.write_text("x0,action,reward\n0.1,1.5,1.0\n")
    with pytest.raises(ValueError, match=r"has action 1.5 in round 0; expected integers >= 0"):
        load_history(bad)
    bad.write_text("x0,action,reward\n0.1,1,nan\n")
    with pytest.raises(ValueError, match=r"non-finite reward in round 0"):
        load_history(bad)
    other = tmp_path / "h.txt"
    other.write_text("")
    with pytest.raises(ValueError, match=r"has suffix '.txt'"):
        load_history(other)


def test_audit_command_on_a_recorded_history(tmp_path, run, capsys):
    path = write_history(tmp_path / "history.csv", *run[3])
    out = tmp_path / "audit"
    argv = ["audit", "--K", str(K), "--L", str(L), "--d", str(D), "--checkpoints", "20,60"]
    argv += ["--warmup", "400", "--samples", "600", "--history", str(path), "--out", str(out)]
    rc = main(argv)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    record = json.loads((out / "audit.json").read_text())
    assert record["verdict"] == "pass"
    assert record["history"] == {"source": "recorded", "rounds": N, "file": str(path)}
    assert all(c["rejected"] for c in record["negative_controls"] if c["rejected"] is not None)


def test_audit_command_refuses_a_history_that_does_not_fit(tmp_path, run, capsys):
    x, a, y = run[3]
    path = write_history(tmp_path / "history.csv", x, a + K, y)  # actions out of range
    rc = main(
        ["audit", "--K", str(K), "--d", str(D), "--history", str(path), "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert f"expected actions in [0, {K - 1}]" in err and "--K" in err
    path = write_history(tmp_path / "wide.csv", np.hstack([x, x]), a, y)
    rc = main(
        ["audit", "--K", str(K), "--d", str(D), "--history", str(path), "--out", str(tmp_path)]
    )
    assert rc == 2
    assert "expected (n, 2) for d=2" in capsys.readouterr().err
