"""The acceptance gate accepts a good NUTS run and refuses bad ones (negative controls).

Synthetic InferenceData checks each gate in isolation (fast); three real NUTS runs check
the gate end to end: a correlated Gaussian (accepted), Neal's funnel in the centred
parameterisation (refused) and in the non-centred one (fewer gates fail).
"""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from validation.diagnostics import (
    EBFMI_MIN,
    ESS_BULK_MIN,
    ESS_TAIL_MIN,
    GATE_NAMES,
    MAX_DIVERGENCES,
    MIN_CHAINS,
    RHAT_MAX,
    GateReport,
    check_gates,
)
from validation.reference import NUTSSettings, run_nuts

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23's once-a-day refactor notice
    import arviz as az

COV3 = np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]])


def gaussian3():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(3), jnp.asarray(COV3)))


def funnel_centred(dim=9):
    """Neal's funnel: v ~ N(0, 3²), x_i | v ~ N(0, exp(v))."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim]).to_event(1))


def funnel_noncentred(dim=9):
    """The same joint distribution with x = exp(v/2) x_raw, x_raw ~ N(0, 1)."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    x_raw = numpyro.sample("x_raw", dist.Normal(0.0, 1.0).expand([dim]).to_event(1))
    numpyro.deterministic("x", jnp.exp(v / 2) * x_raw)


def synthetic(rng, chains=4, draws=1000):
    """Independent draws: what an ideal sampler would give."""
    return az.from_dict(
        posterior={
            "theta": rng.normal(size=(chains, draws, 2, 2)),
            "v": rng.normal(size=(chains, draws)),
        },
        sample_stats={
            "diverging": np.zeros((chains, draws), bool),
            "energy": rng.normal(size=(chains, draws)),
        },
    )


def failed_names(report):
    return {g.name for g in report.failed}


# --------------------------------------------------------------------------- constants


def test_thresholds_are_the_published_ones():
    assert (MIN_CHAINS, RHAT_MAX, ESS_BULK_MIN, ESS_TAIL_MIN) == (4, 1.01, 400, 400)
    assert (MAX_DIVERGENCES, EBFMI_MIN) == (0, 0.3)
    assert GATE_NAMES == ("chains", "r_hat", "ess_bulk", "ess_tail", "divergences", "e_bfmi")


# --------------------------------------------------------------------------- synthetic


def test_independent_draws_are_accepted(rng):
    report = check_gates(synthetic(rng))
    assert report.accepted, str(report)
    assert [g.name for g in report.gates] == list(GATE_NAMES)
    assert report.advice == []
    assert report.var_names == ["theta", "v"]
    assert (report.num_chains, report.num_draws) == (4, 1000)


def test_rhat_names_the_disagreeing_coordinate(rng):
    idata = synthetic(rng)
    theta = idata.posterior["theta"].values.copy()
    theta[2, :, 1, 0] += 1.0  # one chain of one coordinate sits elsewhere
    idata.posterior["theta"] = (("chain", "draw", "theta_dim_0", "theta_dim_1"), theta)
    report = check_gates(idata)
    rhat = report.gate("r_hat")
    assert not rhat.passed and rhat.value > RHAT_MAX
    assert rhat.coordinate == "theta[1, 0]"
    assert any("more draws" in a and "R-hat" in a for a in report.advice)
    # Checking only the untouched variable accepts.
    assert check_gates(idata, var_names=["v"]).accepted


def test_divergences_and_low_ebfmi_are_refused(rng):
    idata = synthetic(rng)
    diverging = np.zeros((4, 1000), bool)
    diverging[1, [10, 20, 30]] = True
    idata.sample_stats["diverging"] = (("chain", "draw"), diverging)
    # A random-walk energy: momentum resampling barely moves it, so E-BFMI is near 0.
    energy = np.cumsum(rng.normal(size=(4, 1000)), axis=1)
    idata.sample_stats["energy"] = (("chain", "draw"), energy)
    report = check_gates(idata)
    assert failed_names(report) == {"divergences", "e_bfmi"}
    div = report.gate("divergences")
    assert div.value == 3 and div.coordinate == "chain 1: 3"
    assert report.gate("e_bfmi").value < EBFMI_MIN
    text = " ".join(report.advice)
    assert "target_accept" in text and "non-centred" in text


def test_missing_sample_stats_fail_their_gates(rng):
    good = synthetic(rng)
    idata = az.from_dict(posterior={"v": good.posterior["v"].values})
    report = check_gates(idata)
    assert failed_names(report) == {"divergences", "e_bfmi"}
    assert np.isnan(report.gate("divergences").value)
    assert "missing" in report.gate("e_bfmi").coordinate


def test_fewer_than_four_chains_are_refused(rng):
    report = check_gates(synthetic(rng, chains=3, draws=2000))
    assert failed_names(report) == {"chains"}
    assert report.gate("chains").value == 3
    assert any("more chains" in a for a in report.advice)


def test_report_serialises_and_prints(rng):
    idata = synthetic(rng, chains=2, draws=30)
    report = check_gates(idata)
    d = report.to_dict()
    assert GateReport.from_dict(json.loads(json.dumps(d))) == report
    text = str(report)
    assert "REFUSED" in text and all(name in text for name in GATE_NAMES)
    assert "ACCEPTED" in str(check_gates(synthetic(rng)))


def test_bad_arguments_are_named(rng):
    with pytest.raises(ValueError, match=r"var_names contains.*'nope'"):
        check_gates(synthetic(rng), var_names=["nope"])
    with pytest.raises(ValueError, match="without a posterior group"):
        check_gates(object())


# --------------------------------------------------------------------------- NUTS runs


@pytest.fixture(scope="module")
def gaussian_run():
    # A dense mass matrix absorbs the correlation; the run is comfortably accepted.
    return run_nuts(
        gaussian3,
        nuts=NUTSSettings(
            num_warmup=500, num_samples=500, dense_mass=True, chain_method="vectorized"
        ),
        seed=1,
    )  # fmt: skip


def test_good_nuts_run_is_accepted(gaussian_run):
    report = check_gates(gaussian_run)
    assert report.accepted, str(report)
    assert report.num_chains == 4 and report.num_draws == 500
    assert report.gate("ess_bulk").value >= ESS_BULK_MIN
    assert report.gate("ess_tail").value >= ESS_TAIL_MIN


def test_too_few_draws_are_refused(gaussian_run):
    # The first 30 draws of each chain are what a run with num_samples=30 would keep.
    report = check_gates(gaussian_run.isel(draw=slice(0, 30)))
    assert not report.accepted
    assert {"ess_bulk", "ess_tail"} <= failed_names(report)
    ess_advice = [a for a in report.advice if "ESS" in a]
    assert ess_advice and all("more draws" in a for a in ess_advice)


def test_dropping_chains_of_a_good_run_is_refused(gaussian_run):
    report = check_gates(gaussian_run.isel(chain=[0, 1, 2]))
    assert failed_names(report) == {"chains"}


def test_centred_funnel_is_refused_and_noncentred_does_better():
    kw = dict(nuts=NUTSSettings(num_warmup=500, num_samples=500, chain_method="vectorized"), seed=0)
    centred = check_gates(run_nuts(funnel_centred, **kw), var_names=["v", "x"])
    noncentred = check_gates(run_nuts(funnel_noncentred, **kw), var_names=["v", "x"])
    assert not centred.accepted
    assert {"r_hat", "e_bfmi"} <= failed_names(centred), str(centred)
    assert any("non-centred" in a for a in centred.advice)
    assert len(noncentred.failed) < len(centred.failed), str(noncentred)
    assert noncentred.gate("divergences").passed and noncentred.gate("e_bfmi").passed
