"""Closed form versus MCMC: the exact test passes the right Gaussian and rejects wrong ones.

Negative controls (validation spec): covariance × 1.3, mean shifted by 0.5 sd, and a
dropped correlation (the claimed covariance is the diagonal of a strongly correlated
truth). Rejection rates are measured over 20 repetitions with independent draws shaped
like MCMC output, and once on a real NUTS run of a conjugate model.
"""

import json
import math
import warnings
from statistics import NormalDist

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import binom

from validation.compare import (
    discrepancy,
    energy_distance,
    exact_comparison,
    gaussian_w2,
    stack_draws,
    stack_labels,
)
from validation.diagnostics import check_gates
from validation.reference import run_nuts

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23's once-a-day refactor notice
    import arviz as az

REPS = 20
SHAPE = (4, 1000)  # chains, draws: the size of a reference run
SD = np.array([1.0, 2.0, 0.5])
CORR = np.array([[1.0, 0.9, 0.8], [0.9, 1.0, 0.85], [0.8, 0.85, 1.0]])
COV = CORR * np.outer(SD, SD)
MEAN = np.array([1.0, -1.0, 0.5])
P = len(MEAN)

#: The deliberately wrong claims, each applied to draws from N(MEAN, COV).
CONTROLS = {
    "cov x 1.3": (MEAN, 1.3 * COV),
    "mean + 0.5 sd": (MEAN + 0.5 * SD, COV),
    "correlation dropped": (MEAN, np.diag(np.diag(COV))),
}


def iid_draws(rng, mean=MEAN, cov=COV, shape=SHAPE):
    return rng.multivariate_normal(mean, cov, size=shape)


def max_null_rejections(alpha, reps=REPS, risk=1e-3):
    """Largest rejection count of a level-alpha test that has probability >= 1 - risk."""
    return int(binom.isf(risk, reps, alpha))


# --------------------------------------------------------------------------- rejection rates


@pytest.fixture(scope="module")
def rejection_rates():
    rng = np.random.default_rng(2024)
    counts = {"correct, alpha=0.01": 0, "correct, alpha=0.1": 0}
    counts.update({name: 0 for name in CONTROLS})
    counts.update({f"{name}, no cross-covariance tests": 0 for name in CONTROLS})
    for _ in range(REPS):
        x = iid_draws(rng)
        counts["correct, alpha=0.01"] += not exact_comparison(x, MEAN, COV, alpha=0.01).passed
        counts["correct, alpha=0.1"] += not exact_comparison(x, MEAN, COV, alpha=0.1).passed
        for name, (mean, cov) in CONTROLS.items():
            counts[name] += not exact_comparison(x, mean, cov).passed
            counts[f"{name}, no cross-covariance tests"] += not exact_comparison(
                x, mean, cov, cross_covariances=False
            ).passed
    rates = {name: c / REPS for name, c in counts.items()}
    print("\nexact_comparison rejection rates over", REPS, "repetitions:", rates)
    return counts


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_correct_posterior_rejected_no_more_than_alpha_allows(rejection_rates, alpha):
    count = rejection_rates[f"correct, alpha={alpha}"]
    assert count <= max_null_rejections(alpha), (count, REPS)


@pytest.mark.parametrize("control", list(CONTROLS))
def test_negative_controls_rejected(rejection_rates, control):
    assert rejection_rates[control] / REPS >= 0.95, rejection_rates


def test_mahalanobis_mean_alone_is_blind_to_dropped_correlation(rejection_rates):
    """Why the cross-covariance tests are on by default: with the diagonal of Σ as the claim,
    E[D²] = tr(diag(Σ)⁻¹ Σ) = p and the marginals are right, so the 2p + 1 tests of the
    spec reject no more often than for the correct posterior."""
    assert np.trace(COV / np.diag(COV)[:, None]) == pytest.approx(P, rel=1e-14)
    count = rejection_rates["correlation dropped, no cross-covariance tests"]
    assert count <= max_null_rejections(0.01)
    assert rejection_rates["cov x 1.3, no cross-covariance tests"] / REPS >= 0.95
    assert rejection_rates["mean + 0.5 sd, no cross-covariance tests"] / REPS >= 0.95


# --------------------------------------------------------------------------- statistics


def test_statistics_match_their_definitions(rng):
    x = iid_draws(rng)
    res = exact_comparison(x, MEAN, COV, alpha=0.05, labels=["a", "b", "c"])
    m = 2 * P + 1 + P * (P - 1) // 2
    assert res.num_tests == m
    assert res.critical_value == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / (2 * m)), 1e-14)
    flat = x.reshape(-1, P)
    for i in range(P):
        mcse = az.mcse(x[..., i], method="mean")
        assert res.z_mean[i] == pytest.approx((MEAN[i] - flat[:, i].mean()) / mcse, rel=1e-12)
        mcse_sd = az.mcse(x[..., i], method="sd")
        ratio = flat[:, i].std() / SD[i]
        assert res.z_sd[i] == pytest.approx((ratio - 1) / (mcse_sd / SD[i]), rel=1e-12)
    d2 = np.einsum("cni,ij,cnj->cn", x - MEAN, np.linalg.inv(COV), x - MEAN)  # test-side only
    assert res.mahalanobis_mean == pytest.approx(d2.mean(), rel=1e-10)
    z = (d2.mean() - P) / az.mcse(d2, method="mean")
    assert res.z_mahalanobis == pytest.approx(z, rel=1e-9)
    assert res.cross_pairs == ((0, 1), (0, 2), (1, 2))
    np.testing.assert_allclose(res.cross_closed_form, [0.9, 0.8, 0.85], rtol=1e-14)
    # The fixed seed's draws are consistent with the claim, and the numbers say so.
    assert res.passed and res.failed == () and res.p_value > 0.05
    json.dumps(res.to_dict())
    assert "PASS" in str(res)
    wrong = exact_comparison(x, MEAN, np.diag(np.diag(COV)), labels=["a", "b", "c"])
    assert set(wrong.failed) == {"cov:a|b", "cov:a|c", "cov:b|c"}
    assert "FAIL" in str(wrong) and wrong.p_value < 0.01


def test_without_cross_covariances_the_family_is_2p_plus_1(rng):
    res = exact_comparison(iid_draws(rng), MEAN, COV, cross_covariances=False)
    assert res.num_tests == 2 * P + 1 and res.z_cross.shape == (0,)


def test_float64_whatever_the_input_dtype(rng):
    """float32 inputs (JAX's default) are upcast once; every statistic is float64."""
    x32, mean32, cov32 = (jnp.asarray(a, dtype=jnp.float32) for a in (iid_draws(rng), MEAN, COV))
    res32 = exact_comparison(x32, mean32, cov32)
    res64 = exact_comparison(*(np.asarray(a, np.float64) for a in (x32, mean32, cov32)))
    for field in ("z_mean", "z_sd", "sd_ratio", "mean_mcmc", "z_cross"):
        assert getattr(res32, field).dtype == np.float64
        np.testing.assert_array_equal(getattr(res32, field), getattr(res64, field))
    assert isinstance(res32.z_mahalanobis, float)
    d = discrepancy(x32, MEAN, COV)
    assert d == discrepancy(np.asarray(x32, np.float64), MEAN, COV)
    idata = az.from_dict(posterior={"w": np.asarray(x32)})
    assert stack_draws(idata, "w").dtype == np.float64


def test_errors_name_the_argument(rng):
    x = iid_draws(rng)
    with pytest.raises(ValueError, match=r"draws has shape \(4000, 3\)"):
        exact_comparison(x.reshape(-1, P), MEAN, COV)
    with pytest.raises(ValueError, match=r"mean has shape \(2,\)"):
        exact_comparison(x, MEAN[:2], COV)
    with pytest.raises(ValueError, match="cov is not positive definite"):
        exact_comparison(x, MEAN, COV - 2.0 * np.eye(P))
    with pytest.raises(ValueError, match=r"alpha is 1\.5"):
        exact_comparison(x, MEAN, COV, alpha=1.5)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        exact_comparison(x, MEAN, COV, labels=["a", "b"])
    with pytest.raises(ValueError, match="max_points is 1"):
        discrepancy(x, MEAN, COV, max_points=1)


def test_stack_draws_order():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5))
    b = rng.normal(size=(2, 5, 2, 3))
    idata = az.from_dict(posterior={"a": a, "b": b})
    stacked = stack_draws(idata, ["b", "a"])
    np.testing.assert_array_equal(stacked[..., :6], b.reshape(2, 5, 6))
    np.testing.assert_array_equal(stacked[..., 5], b[..., 1, 2])  # row-major
    np.testing.assert_array_equal(stacked[..., 6], a)
    labels = stack_labels(idata, ["b", "a"])
    assert labels[5] == "b[1, 2]" and labels[6] == "a" and len(labels) == 7
    with pytest.raises(ValueError, match="var_names is"):
        stack_draws(idata, ["c"])


# --------------------------------------------------------------------------- a real NUTS run


def linear_regression(X, y=None, prior_sd=1.0, noise_sd=0.5):
    """w ~ N(0, prior_sd² I), y | w ~ N(X w, noise_sd² I): conjugate, Gaussian posterior."""
    w = numpyro.sample("w", dist.Normal(0.0, prior_sd).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(X @ w, noise_sd), obs=y)


def regression_posterior(X, y, prior_sd=1.0, noise_sd=0.5):
    """Λ = I/τ² + XᵀX/σ², Σ = Λ⁻¹ (Cholesky solve), μ = Σ Xᵀy/σ²."""
    precision = np.eye(X.shape[1]) / prior_sd**2 + X.T @ X / noise_sd**2
    factor = cho_factor(precision)
    cov = cho_solve(factor, np.eye(X.shape[1]))
    return cho_solve(factor, X.T @ y / noise_sd**2), cov


@pytest.fixture(scope="module")
def nuts_regression():
    rng = np.random.default_rng(7)
    n = 8
    base = rng.normal(size=(n, 1))
    X = np.hstack([base + 0.3 * rng.normal(size=(n, 1)) for _ in range(P)])  # collinear
    y = X @ np.array([0.5, -0.3, 0.2]) + 0.5 * rng.normal(size=n)
    idata = run_nuts(linear_regression, jnp.asarray(X), jnp.asarray(y), seed=11)
    mean, cov = regression_posterior(X, y)
    return idata, mean, cov


def test_nuts_reference_matches_the_closed_form(nuts_regression):
    idata, mean, cov = nuts_regression
    gate = check_gates(idata)
    assert gate.accepted, str(gate)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.max(np.abs(corr - np.eye(P))) > 0.5  # the coupling matters
    draws = stack_draws(idata, ["w"])
    res = exact_comparison(draws, mean, cov, labels=stack_labels(idata, ["w"]))
    assert res.passed, str(res)
    sd = np.sqrt(np.diag(cov))
    controls = {
        "cov x 1.3": (mean, 1.3 * cov),
        "mean + 0.5 sd": (mean + 0.5 * sd, cov),
        "correlation dropped": (mean, np.diag(np.diag(cov))),
    }
    for name, (m, c) in controls.items():
        wrong = exact_comparison(draws, m, c)
        assert not wrong.passed, (name, str(wrong))


# --------------------------------------------------------------------------- discrepancy


def test_gaussian_w2_closed_forms(rng):
    mean = rng.normal(size=P)
    assert gaussian_w2(mean, COV, mean, COV) ** 2 <= 1e-12 * np.trace(COV)
    shift = np.array([0.3, -0.4, 1.2])
    assert gaussian_w2(mean, COV, mean + shift, COV) == pytest.approx(1.3, rel=1e-7)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = math.sqrt(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + 1.0)
    got = gaussian_w2(np.zeros(P), np.diag(a), np.array([1.0, 0, 0]), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    # Symmetric, and a wrong covariance is at a positive distance.
    assert gaussian_w2(mean, COV, mean, np.diag(np.diag(COV))) == pytest.approx(
        gaussian_w2(mean, np.diag(np.diag(COV)), mean, COV), rel=1e-10
    )
    assert gaussian_w2(mean, COV, mean, np.diag(np.diag(COV))) > 0.5


def test_discrepancy_w2_is_monte_carlo_noise_for_the_right_gaussian():
    """For N iid draws from N(0, I_p): E[W2²] ≈ p/N (mean) + p(p+1)/(4(N-1)) (covariance)."""
    rng = np.random.default_rng(11)
    n = SHAPE[0] * SHAPE[1]
    w2sq = np.array(
        [discrepancy(iid_draws(rng, np.zeros(P), np.eye(P)), np.zeros(P), np.eye(P))["w2"] ** 2
         for _ in range(REPS)]
    )  # fmt: skip
    expected = P / n + P * (P + 1) / (4 * (n - 1))
    mcse = w2sq.std(ddof=1) / math.sqrt(REPS)
    assert abs(w2sq.mean() - expected) <= 4 * mcse, (w2sq.mean(), expected, mcse)


def test_discrepancy_grows_with_a_mean_shift(rng):
    x = iid_draws(rng)
    right = discrepancy(x, MEAN, COV)
    assert right["max_abs_standardized_mean_error"] <= 4 * max(
        right["standardized_mean_error_mcse"]
    )
    n = SHAPE[0] * SHAPE[1]  # iid draws: the sd estimate has standard error sd/sqrt(2n)
    np.testing.assert_allclose(right["sd_ratio"], 1.0, atol=4 / math.sqrt(2 * n))
    w2 = []
    for k in (0.25, 0.5, 1.0):
        shift = k * SD * np.array([1.0, 0.0, 0.0])
        d = discrepancy(x, MEAN + shift, COV)
        # W2 is a metric: |W2(claim, fit) - W2(claim, truth)| <= W2(truth, fit), and
        # W2(claim, truth) = |shift| exactly, so the error is the Monte Carlo noise `right`.
        assert abs(d["w2"] - np.linalg.norm(shift)) <= right["w2"] + 1e-12
        sme = np.asarray(d["standardized_mean_error"])
        assert sme[0] == pytest.approx(
            k * SD[0] / d["sd_mcmc"][0] + right["standardized_mean_error"][0]
        )
        w2.append(d["w2"])
    assert w2[0] < w2[1] < w2[2]
    json.dumps(right)


def test_energy_distance_separates_a_shifted_gaussian():
    rng = np.random.default_rng(5)
    right, shifted = [], []
    for seed in range(REPS // 2):
        x = iid_draws(rng)
        right.append(discrepancy(x, MEAN, COV, seed=seed, max_points=500)["energy_distance"])
        d = discrepancy(x, MEAN + 0.5 * SD, COV, seed=seed, max_points=500)
        shifted.append(d["energy_distance"])
        assert d["energy_points"] == 500
    right, shifted = np.array(right), np.array(shifted)
    noise = right.std(ddof=1)
    assert abs(right.mean()) <= 4 * noise / math.sqrt(len(right))  # unbiased: mean zero
    assert shifted.min() > right.max() and shifted.mean() > right.mean() + 10 * noise


def test_energy_distance_of_a_sample_with_itself_shifted():
    x = np.random.default_rng(0).normal(size=(300, 2))
    assert energy_distance(x, x + 10.0) > energy_distance(x, x + 1.0) > 0
    with pytest.raises(ValueError, match="y has shape"):
        energy_distance(x, x[:, :1])
