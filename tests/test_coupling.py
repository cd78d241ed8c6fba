"""The HCSA coupling checks at a small size: every check passes, every negative control is
rejected, and the report is written with its provenance."""

import json

import numpy as np
import pytest

from validation.coupling import RHAT_MAX, run_coupling_checks
from validation.coupling_report import write_coupling_report

#: Small but still powered sizes; the ESS rule needs >= 400 draws per chain pair, and the
#: R̂ rule with 2 × 400 iid draws has a false-alarm rate below 1 % (checked offline).
SMALL = {
    "d": 6,
    "N": 6,
    "rounds": 15,
    "replications": 400,
    "gram_draws": 8,
    "cas_draws": 6000,
    "mc_draws": 6000,
    "seed": 0,
}

CHECKS = {
    "gram_identity",
    "augmentation_eigenvalues",
    "matching_probability",
    "trial_counts_geometric",
    "pseudo_reward_unbiasedness",
    "double_robustness",
    "coupling_inequality",
}


@pytest.fixture(scope="module")
def result():
    return run_coupling_checks(**SMALL)


def test_every_check_passes(result):
    verdicts = {c["name"]: c["verdict"] for c in result["checks"]}
    assert set(verdicts) == CHECKS
    assert all(v == "pass" for v in verdicts.values()), verdicts


def test_every_negative_control_is_rejected(result):
    controls = {(c["name"], c["check"]): c["rejected"] for c in result["negative_controls"]}
    # the brief's two controls on checks 3 and 4, plus one for checks 1 and 2
    for need in (
        ("wrong_phi", "pseudo_reward_unbiasedness"),
        ("biased_reference", "pseudo_reward_unbiasedness"),
        ("wrong_phi", "coupling_inequality"),
        ("biased_reference", "coupling_inequality"),
        ("unscaled_eigenvectors", "gram_identity"),
        ("wrong_phi", "trial_counts_geometric"),
    ):
        assert need in controls
    assert all(controls.values()), controls
    assert result["verdict"] == "pass"


def test_statistics_are_within_their_rules(result):
    checks = {c["name"]: c["statistics"] for c in result["checks"]}
    for scen in checks["gram_identity"]["scenarios"].values():
        assert scen["max_identity_error"] <= 1e-10
    for stats in checks["matching_probability"]["rounds"].values():
        assert stats["max_trials_observed"] <= stats["max_trials_bound"]
        assert stats["replay_agreement"] == 1.0
    coupling = checks["coupling_inequality"]
    assert coupling["replications_compared"] >= 0.9 * SMALL["replications"]
    for s in coupling["statistics"].values():
        assert s["rhat"] <= RHAT_MAX
    unb = checks["pseudo_reward_unbiasedness"]
    assert unb["max_abs_z"] <= unb["z_critical_bonferroni"]


def test_result_is_json_ready(result):
    text = json.dumps(result)
    assert json.loads(text)["seed"] == SMALL["seed"]


def test_report_files(result, tmp_path):
    path = write_coupling_report(
        result, tmp_path, command="ppl-bandits check-coupling --seed 0", versions={"jax": "x"}
    )
    record = json.loads(path.read_text())
    assert record["command"] == "ppl-bandits check-coupling --seed 0"
    assert record["versions"] == {"jax": "x"}
    assert record["seed"] == 0 and record["wall_seconds"] > 0
    assert "figure_data" not in record
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 4
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert all(f"src='{name}'" in page for name in pngs)
    # default versions are collected from the installed packages
    rec2 = json.loads(write_coupling_report(result, tmp_path / "b").read_text())
    assert rec2["versions"]["numpy"] == np.__version__


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"N": 1}, r"^N is 1"),
        ({"d": 1}, r"^d is 1"),
        ({"gamma": 1.2}, r"^gamma is 1.2"),
        ({"delta": 0.0}, r"^delta is 0.0"),
        ({"gamma": 0.5}, r"^wrong_gamma is 0.5, equal to gamma"),
        ({"replications": 1}, r"^replications is 1"),
        ({"reference_bias": 0.0}, r"^reference_bias is 0.0"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_coupling_checks(**kwargs)
