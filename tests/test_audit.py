"""The posterior audit end to end: it passes the exact agent, rejects every negative
control, reads the agent's state correctly, and names bad arguments."""

import json

import jax
import numpy as np
import pytest

from conftest import EXACT_RTOL, random_history, random_prior
from ppl_bandits.cli import main
from ppl_bandits.core.likelihood import stats_from_history
from ppl_bandits.mixed_effect.catalog import make_agent
from ppl_bandits.mixed_effect.posterior import hierarchical_joint_posterior
from validation.audit import run_audit
from validation.families import NEGATIVE_CONTROLS, AuditSettings, claimed_posterior
from validation.reference import NUTSSettings

SMALL = [
    "--K",
    "4",
    "--L",
    "2",
    "--d",
    "2",
    "--rounds",
    "60",
    "--checkpoints",
    "20,60",
    "--warmup",
    "400",
    "--samples",
    "600",
]


@pytest.mark.exact
def test_claimed_posterior_reads_the_agent_state_exactly(rng):
    prior = random_prior(rng, 5, 2, 2)
    contexts, actions, rewards = random_history(rng, prior, 40, unplayed=(4,))
    agent = make_agent("meTS-Lin")
    state = agent.init(jax.random.key(0), prior)
    for x, a, y in zip(contexts, actions, rewards, strict=True):
        state = agent.update(jax.random.key(0), state, jax.numpy.broadcast_to(x, (5, 2)), a, y)
    claimed = claimed_posterior(state)
    exact = hierarchical_joint_posterior(
        prior, stats_from_history(prior, contexts, actions, rewards)
    )
    tol = EXACT_RTOL if EXACT_RTOL < 1e-6 else 5e-3
    scale = max(1.0, float(np.max(np.abs(exact.cov))))
    assert np.max(np.abs(claimed.cov - np.asarray(exact.cov))) / scale < tol
    assert np.max(np.abs(claimed.mean - np.asarray(exact.mean))) < tol * max(
        1.0, float(np.max(np.abs(exact.mean)))
    )


def test_audit_command_passes_mets_lin_and_rejects_every_negative_control(tmp_path, capsys):
    out = tmp_path / "audit"
    rc = main(
        [
            "audit",
            "--model",
            "mixed-effect-linear",
            "--agent",
            "mets-lin",
            *SMALL,
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    record = json.loads((out / "audit.json").read_text())
    for key in (
        "reference",
        "checks",
        "negative_controls",
        "wall_seconds",
        "command",
        "seed",
        "versions",
    ):
        assert key in record
    assert record["reference"]["accepted"] is True
    assert [c["checkpoint"] for c in record["checks"]] == [20, 60]
    assert all(c["verdict"] == "pass" for c in record["checks"])
    assert record["verdict"] == "pass"
    controls = record["negative_controls"]
    assert {c["name"] for c in controls} == set(NEGATIVE_CONTROLS)
    assert all(c["rejected"] for c in controls)
    assert (out / "report.html").exists()
    assert (out / "reference_t60" / "draws.nc").exists()
    assert "verdict PASS" in printed


def test_approximate_posteriors_are_reported_not_judged():
    outcome = run_audit(
        "mixed-effect-logistic",
        "meTS-GLM",
        problem=AuditSettings(num_actions=3, num_effects=1, dim=2, rounds=30),
        nuts=NUTSSettings(num_warmup=300, num_samples=400),
        checkpoints=[30],
        negative_controls=False,
        log=None,
    )
    (check,) = outcome.record["checks"]
    assert outcome.record["exact"] is False
    assert check["verdict"] == "report" and outcome.record["verdict"] == "report"
    for key in ("standardized_mean_error", "sd_ratio", "w2", "energy_distance"):
        assert key in check["statistics"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "mixed-effect-poisson"}, r"model is 'mixed-effect-poisson'; expected one"),
        ({"agent": "LinUCB"}, r"agent is 'LinUCB'; expected one of meTS-Lin"),
        ({"checkpoints": [10, 500]}, r"checkpoints are \[10, 500\]; expected rounds in \[0, 200\]"),
        ({"alpha": 1.5}, r"alpha is 1.5; expected a number in \(0, 1\)"),
        ({"parameterization": "sideways"}, r"parameterization is 'sideways'"),
        ({"num_actions": 0}, r"num_actions is 0; expected an integer >= 1"),
        ({"factored_variant": "x", "agent": "meTS-Lin-Fa"}, r"factored_variant is 'x'"),
    ],
)
def test_audit_arguments_are_checked(kwargs, message):
    kw = {"model": "mixed-effect-linear", "agent": "meTS-Lin"} | kwargs
    problem = AuditSettings(**{k: kw.pop(k) for k in list(kw) if k in AuditSettings._fields})
    with pytest.raises(ValueError, match=message):
        run_audit(kw.pop("model"), kw.pop("agent"), problem=problem, log=None, **kw)


def test_audit_command_reports_bad_arguments(capsys):
    assert main(["audit", "--agent", "meTS-Typo"]) == 2
    assert "agent is 'meTS-Typo'" in capsys.readouterr().err


@pytest.mark.slow
def test_false_alarm_rate_and_negative_control_power():
    """20 independent small audits of meTS-Lin (one checkpoint each, alpha = 0.05):
    false alarms must stay within the binomial bound of the nominal level, and each
    negative control must be rejected in at least 95 % of them."""
    from scipy.stats import binom

    reps, alpha = 20, 0.05
    alarms, rejected = 0, dict.fromkeys(NEGATIVE_CONTROLS, 0)
    for seed in range(reps):
        rec = run_audit(
            "mixed-effect-linear",
            "meTS-Lin",
            problem=AuditSettings(num_actions=4, num_effects=2, dim=2, rounds=60, seed=seed),
            nuts=NUTSSettings(num_warmup=500, num_samples=1000),
            checkpoints=[60],
            alpha=alpha,
            log=None,
        ).record
        alarms += rec["checks"][0]["verdict"] == "fail"
        for c in rec["negative_controls"]:
            rejected[c["name"]] += bool(c["rejected"])
    print(f"false alarms {alarms}/{reps} at alpha {alpha}; rejections {rejected}")
    assert alarms <= binom.isf(0.001, reps, alpha)
    assert all(v / reps >= 0.95 for v in rejected.values())
