"""Simulation-based calibration: exact posteriors pass, every registered negative control is
rejected, the batched PITs are the audit's Gaussians, sharding changes nothing, and bad
arguments are named."""

import json

import jax
import numpy as np
import pytest
from scipy import stats

from conftest import CALIBRATION_RECORD_KEYS, EXACT_RTOL, X64
from ppl_bandits.cli import main
from validation import calibration
from validation.calibration import (
    ALPHA,
    NEGATIVE_CONTROLS,
    POSTERIORS,
    calibrate_nuts,
    calibration_table,
    ecdf_uniformity_test,
    power_curve,
    replication_pits,
    run_calibration,
    simulate_replications,
    study_setup,
    write_calibration,
)
from validation.calibration_report import write_calibration_table
from validation.ecdf import ecdf_band
from validation.families import claimed_posterior, negative_control

#: The module's default study size (K=10, L=2, d=2, 200 replications of 100 rounds).
DEFAULT = {}


@pytest.fixture(scope="module")
def mets_lin():
    return run_calibration("meTS-Lin", **DEFAULT)


@pytest.fixture(scope="module")
def lin_ts():
    return run_calibration("LinTS", **DEFAULT)


@pytest.fixture(scope="module")
def dts_linear():
    """dTS with linear links (exact) at the default size, L = 2 diffusion levels."""
    return run_calibration("dTS", **DEFAULT)


@pytest.mark.parametrize("which", ["mets_lin", "lin_ts", "dts_linear"])
def test_exact_posteriors_are_calibrated(which, request):
    res = request.getfixturevalue(which)
    assert res["uniformity"]["verdict"] == "pass", res["uniformity"]
    assert res["pit"].shape[0] == res["replications"] == 200
    for level, cov in res["coverage"].items():
        # Coordinates of a replication are dependent: judge with the replication-level se.
        assert abs(cov["rate"] - int(level) / 100) <= 4 * cov["se_replications"], (level, cov)
        assert abs(cov["region_rate"] - int(level) / 100) <= 4 * max(cov["region_se"], 0.01)


@pytest.mark.parametrize("which", ["mets_lin", "lin_ts", "dts_linear"])
def test_controls_run_on_the_same_replications_are_rejected(which, request):
    res = request.getfixturevalue(which)
    names = [c["name"] for c in res["negative_controls"]]
    assert names == [c for c in NEGATIVE_CONTROLS if c.split(":")[0] == res["agent"]]
    assert all(c["rejected"] for c in res["negative_controls"]), res["negative_controls"]


@pytest.mark.parametrize("control", [c for c in NEGATIVE_CONTROLS if not c.startswith("dTS")])
def test_each_negative_control_is_rejected(control):
    res = run_calibration(control, **DEFAULT)
    assert res["control"] == control.split(":")[1]
    assert res["uniformity"]["verdict"] == "fail", res["uniformity"]
    assert res["uniformity"]["p_value"] < ALPHA


def test_sharded_and_single_device_runs_agree_exactly():
    assert len(jax.devices()) == 4  # root conftest.py: four host devices
    kw = {"replications": 10, "rounds": 20, "seed": 3}  # 10 is padded to 12 on 4 devices
    one = run_calibration("meTS-Lin", devices=jax.devices()[:1], **kw)
    four = run_calibration("meTS-Lin", **kw)
    assert len(four["devices"]) == 4 and len(one["devices"]) == 1
    np.testing.assert_array_equal(one["pit"], four["pit"])
    np.testing.assert_array_equal(one["chi2_pit"], four["chi2_pit"])


def test_a_replication_is_the_runners_run_of_the_agent():
    """The fused study program plays the agent's own policy with the runner's keys."""
    from ppl_bandits.core.runner import simulate

    args = ("meTS-Lin", "mixed-effect-linear", 3, 1, 1, 6)
    state, params = simulate_replications(*args, 4, 5, jax.devices()[:1], chunk=2)  # 2 chunks of 2
    env, agent = study_setup(*args)
    ref = simulate(jax.random.key(5), env, agent, num_rounds=6, num_runs=4)
    np.testing.assert_array_equal(state.count, ref.state.count)
    np.testing.assert_array_equal(params.theta, ref.params.theta)
    np.testing.assert_allclose(state.eff_prec, ref.state.eff_prec, rtol=1e-6)
    np.testing.assert_allclose(state.eff_nat, ref.state.eff_nat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("agent", "kind", "controls"),
    [
        ("meTS-Lin", None, [None, "covariance-x1.3", "mean-shift-0.5sd", "coupling-dropped"]),
        ("meTS-Lin-Fa", "mean-field", [None, "published-factored-mean"]),
    ],
)
def test_batched_pits_are_the_audit_gaussians(agent, kind, controls):
    K, L, d = 4, 2, 2
    state, params = simulate_replications(
        agent, "mixed-effect-linear", K, L, d, 20, 3, 0, jax.devices()
    )
    for control in controls:
        u, chi2, labels, _ = replication_pits(agent, state, params, control, rounds=20)
        assert len(labels) == L * d + K * d
        for r in range(3):
            one = jax.tree.map(lambda a, r=r: a[r], state)
            g = claimed_posterior(one, kind)
            if control is not None:
                g = negative_control(control, g, one, num_effects=L, dim=d)
            x = np.concatenate([params.psi[r], np.ravel(params.theta[r])]).astype(np.float64)
            e = x - g.mean
            np.testing.assert_allclose(
                u[r], stats.norm.cdf(e / np.sqrt(np.diag(g.cov))), rtol=1e-9, atol=1e-12
            )
            q = e @ np.linalg.solve(g.cov, e)
            np.testing.assert_allclose(chi2[r, 0], stats.chi2.cdf(q, x.size), rtol=1e-7)


def test_uniformity_test_holds_its_level_and_matches_the_arviz_band():
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    rng = np.random.default_rng(1)
    studies, alpha = 400, 0.05
    rejected = [
        ecdf_uniformity_test(rng.uniform(size=100), alpha)["verdict"] == "fail"
        for _ in range(studies)
    ]
    mcse = np.sqrt(alpha * (1 - alpha) / studies)
    assert abs(np.mean(rejected) - alpha) <= 4 * mcse
    # The simultaneous band agrees with ArviZ's optimized band to one count at its edge.
    n = 200
    z, lower, upper = ecdf_band(n, alpha)
    lo, hi = ecdf_confidence_band(n, z, z, prob=1 - alpha, method="optimized")
    assert np.abs(lower - lo).max() * n <= 1 + 1e-9
    assert np.abs(upper - hi).max() * n <= 1 + 1e-9


def test_power_curve_reports_power_and_size():
    # 4 studies x 50 = the fixtures' 200 replications: the compiled runner is reused.
    res = power_curve("meTS-Lin:mean-shift-0.5sd", replications=(25, 50), studies=4)
    assert res["replications"] == [25, 50] and len(res["power"]) == 2
    assert res["power"][-1] == 1.0
    assert all(0 <= s <= 1 for s in res["size"])


def test_write_calibration(mets_lin, tmp_path):
    path = write_calibration(mets_lin, tmp_path)
    record = json.loads(path.read_text())
    assert set(CALIBRATION_RECORD_KEYS) <= set(record)
    assert set(record["uniformity"]) >= {"statistic", "p_value", "verdict"}
    assert set(record["coverage"]) == {"50", "80", "95"}
    assert set(record["coverage"]["95"]) >= {"rate", "se"}
    assert all(set(c) >= {"name", "rejected"} for c in record["negative_controls"])
    assert (tmp_path / "calibration.png").stat().st_size > 0
    pit = np.loadtxt(tmp_path / "pit.csv", delimiter=",", skiprows=1)
    assert pit.shape == (200, mets_lin["pit"].shape[1] + 1)


def test_dts_controls_are_the_registered_ones(dts_linear):
    # The dTS controls run on the fixture's replications (the exact posterior passes there).
    names = [c["name"] for c in dts_linear["negative_controls"]]
    assert names == ["dTS:covariance-x1.3", "dTS:mean-shift-0.5sd", "dTS:dts-approximation"]
    approx = dts_linear["negative_controls"][2]["uniformity"]
    assert approx["verdict"] == "fail" and approx["p_value"] < ALPHA


@pytest.mark.exact
def test_dts_pits_are_the_joint_gaussian_of_the_recursions():
    """The read-out from the agent's state is the exact joint posterior, controls included."""
    from ppl_bandits.core.likelihood import SufficientStats
    from ppl_bandits.diffusion.posterior import recursive_joint_posterior

    # float32: the dts_linear fixture's compiled program (K=10, 100 rounds, 200 runs);
    # float64 (no fixture there): a tiny one. Three replications are checked.
    K, L, d, R = (4, 2, 2, 3) if X64 else (10, 2, 2, 3)
    n, runs = (20, 4) if X64 else (100, 200)
    state, params = simulate_replications(
        "dTS", "diffusion-linear", K, L, d, n, runs, 0, jax.devices()
    )
    state, params = jax.tree.map(lambda a: a[:R], (state, params))
    assert state.count.sum(axis=1).tolist() == [n] * R
    for control in [None, "covariance-x1.3", "mean-shift-0.5sd"]:
        u, chi2, labels, _ = replication_pits("dTS", state, params, control, rounds=n)
        assert labels[0] == "psi[1, 0]" and len(labels) == (L + K) * d
        for r in range(R):
            one = jax.tree.map(lambda a, r=r: a[r], state)
            g = recursive_joint_posterior(one.prior, SufficientStats(one.G, one.B, one.count))
            mean, cov = np.asarray(g.mean, np.float64), np.asarray(g.cov, np.float64)
            sd = np.sqrt(np.diag(cov))
            x = np.concatenate([np.ravel(params.psi[r]), np.ravel(params.theta[r])])
            scale = 1.3 if control == "covariance-x1.3" else 1.0
            if control == "mean-shift-0.5sd":
                mean = mean + 0.5 * sd
            e = x - mean
            np.testing.assert_allclose(
                u[r], stats.norm.cdf(e / np.sqrt(scale) / sd), rtol=EXACT_RTOL, atol=EXACT_RTOL
            )
            q = e @ np.linalg.solve(cov, e) / scale
            np.testing.assert_allclose(
                chi2[r, 0], stats.chi2.cdf(q, x.size), rtol=EXACT_RTOL, atol=EXACT_RTOL
            )


@pytest.mark.slow
def test_dts_neural_ranks_and_its_control():
    # Tiny size: the dTS approximation with neural links, PITs from ranks among draws.
    res = run_calibration(
        "dTS-neural", replications=200, rounds=20, num_actions=3, num_effects=2, dim=2
    )
    assert res["pit"].shape == (200, (2 + 3) * 2) and res["model"] == "diffusion-neural"
    assert 0 < res["pit"].min() and res["pit"].max() < 1
    assert set(res["uniformity_blocks"]) == {"psi", "theta", "chi2"}
    (control,) = res["negative_controls"]
    assert control["name"] == "dTS-neural:mean-shift-0.5sd" and control["rejected"], control


def test_calibration_table_of_all_posteriors(mets_lin, dts_linear, tmp_path, monkeypatch, capsys):
    # The fixtures' settings: the compiled programs are reused, so only the files cost.
    monkeypatch.setattr(calibration, "POSTERIORS", ("meTS-Lin", "dTS"))
    out = tmp_path / "table"
    assert main(["calibrate", "--all", "--out", str(out)]) == 0
    record = json.loads((out / "table.json").read_text())
    rows = record["rows"]
    assert [r["posterior"] for r in rows] == ["meTS-Lin", "dTS"]
    assert [r["verdict"] for r in rows] == ["pass", "pass"]
    assert rows[1]["controls_rejected"] == "3/3"
    assert rows[0]["p_value"] == mets_lin["uniformity"]["p_value"]  # same study
    assert {"command", "seed", "versions", "settings"} <= set(record)
    md = (out / "table.md").read_text()
    assert md.count("\n") == 4 and "| dTS | diffusion-linear | 200 | 100 |" in md
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["posterior", "model", "replications", "rounds", "p_value", "verdict"]
    assert (out / "dTS" / "calibration.json").exists()
    assert "| meTS-Lin |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="rows"):
        write_calibration_table([], tmp_path)
    with pytest.raises(ValueError, match="posteriors"):
        calibration_table([])


@pytest.mark.slow
def test_calibrate_all_at_a_tiny_size(tmp_path):
    out = tmp_path / "all"
    argv = ["calibrate", "--all", "--replications", "60", "--rounds", "10", "--K", "3"]
    main([*argv, "--L", "1", "--d", "1", "--out", str(out)])
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["posterior"] for r in rows] == list(POSTERIORS)
    assert all(r["verdict"] in ("pass", "fail") for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"posterior": "meTS-Nope"}, "posterior"),
        ({"posterior": "dTS-nope"}, "posterior"),
        ({"posterior": "dTS-neural:dts-approximation"}, "posterior"),
        ({"posterior": "dTS:published-factored-mean"}, "posterior"),
        ({"posterior": "dTS", "model": "mixed-effect-linear"}, "model"),
        ({"posterior": "dTS", "replications": 0}, "replications"),
        ({"posterior": "meTS-Lin", "chunk": 0}, "chunk"),
        ({"posterior": "LinUCB"}, "posterior"),
        ({"posterior": "meTS-Lin:covariance-x2"}, "posterior"),
        ({"posterior": "LinTS:published-factored-mean"}, "posterior"),
        ({"posterior": "meTS-Lin", "replications": 0}, "replications"),
        ({"posterior": "meTS-Lin", "replications": 2.5}, "replications"),
        ({"posterior": "meTS-Lin", "rounds": 0}, "rounds"),
        ({"posterior": "meTS-Lin", "model": "nope"}, "model"),
        ({"posterior": "meTS-Lin", "devices": []}, "devices"),
        ({"posterior": "meTS-Lin", "alpha": 1.5}, "alpha"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        run_calibration(**kwargs)


def test_bad_pits_are_refused():
    with pytest.raises(ValueError, match="pits"):
        ecdf_uniformity_test(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="control"):
        power_curve("meTS-Lin")


@pytest.mark.slow
def test_nuts_reference_is_calibrated():
    res = calibrate_nuts(replications=40)
    assert res["ranks"].shape == (40, 2 + 3 * 2)
    assert res["ranks"].min() >= 0 and res["ranks"].max() <= res["num_ranks"] - 1
    assert res["uniformity"]["verdict"] == "pass", res["uniformity"]
