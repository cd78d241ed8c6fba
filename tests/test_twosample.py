"""The energy two-sample test (Székely and Rizzo 2004) and the ESS thinning of MCMC draws."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import binom

from validation.twosample import energy_statistic, energy_test, min_bulk_ess, thin_to_ess

LEVEL = 0.05
REPETITIONS = 200
DIM = 4
SIZE = 200
#: Two-sided probability of the binomial acceptance band of the false-alarm count.
BAND = 0.001
#: Permutations per test: p-values are multiples of 1/200, so P(p <= 0.05) = 0.05 exactly.
PERMUTATIONS = 199


def test_false_alarm_rate_is_the_level():
    """200 repetitions of an exact claim (two iid N(0, I_4) samples of 200 draws each),
    tested at level 0.05 with 199 permutations: the number of rejections lies in the
    central 99.9 % interval of Binomial(200, 0.05), [binom.ppf(0.0005), binom.isf(0.0005)]."""
    rng = np.random.default_rng(2024)
    rejections = 0
    for rep in range(REPETITIONS):
        x = rng.normal(size=(SIZE, DIM))
        y = rng.normal(size=(SIZE, DIM))
        p_value = energy_test(x, y, num_permutations=PERMUTATIONS, seed=rep)["p_value"]
        rejections += p_value <= LEVEL
    low = binom.ppf(BAND / 2, REPETITIONS, LEVEL)
    high = binom.isf(BAND / 2, REPETITIONS, LEVEL)
    assert low <= rejections <= high, (rejections, low, high)


def test_power_against_half_sd_shift():
    """A claim whose mean is off by 0.5 sd in every coordinate (the mean-shift-0.5sd
    control), 40 repetitions with 200 draws each in p = 4: rejected at level 0.05 in at
    least 90 % of them."""
    rng = np.random.default_rng(7)
    reps = 40
    rejected = sum(
        energy_test(rng.normal(size=(SIZE, DIM)), rng.normal(0.5, size=(SIZE, DIM)), seed=r)[
            "p_value"
        ]
        <= LEVEL
        for r in range(reps)
    )
    assert rejected / reps >= 0.9


def test_statistic_and_p_value_definitions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(20, 2))
    pooled = np.concatenate([x, y])
    z = (pooled - pooled.mean(0)) / pooled.std(0, ddof=1)
    a, b = z[:30], z[30:]
    n, m = 30, 20
    direct = (n * m / (n + m)) * (2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())
    assert energy_statistic(x, y) == pytest.approx(direct, rel=1e-12)
    out = energy_test(x, y, num_permutations=99, seed=1)
    assert set(out) == {"statistic", "p_value", "n_x", "n_y", "num_permutations"}
    assert out["statistic"] == pytest.approx(direct, rel=1e-12)
    assert (out["n_x"], out["n_y"], out["num_permutations"]) == (30, 20, 99)
    count = out["p_value"] * 100
    assert count == pytest.approx(round(count)) and 1 <= round(count) <= 100
    assert energy_test(x, y, num_permutations=99, seed=1) == out  # reproducible
    assert energy_test(x, x + 10.0, num_permutations=99)["p_value"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: energy_test(np.zeros((1, 2)), np.zeros((5, 2))), "x has shape"),
        (lambda: energy_test(np.zeros((5, 2)), np.zeros((5, 3))), "y has 3 coordinates"),
        (lambda: energy_test(np.full((5, 2), np.nan), np.zeros((5, 2))), "x has non-finite"),
        (lambda: energy_test(np.ones((5, 2)), np.ones((5, 2)), num_permutations=0), "num_perm"),
        (lambda: energy_test(np.ones((5, 2)), np.ones((5, 2)), seed=-1), "seed is -1"),
        (lambda: thin_to_ess(np.zeros((4, 100))), "draws has shape"),
        (lambda: thin_to_ess(np.zeros((4, 100, 1)), max_points=1), "max_points is 1"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _ar1(rng, chains, draws, dim, phi):
    x = np.empty((chains, draws, dim))
    x[:, 0] = rng.normal(size=(chains, dim))
    noise = rng.normal(size=(chains, draws, dim)) * np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def test_thinning_keeps_about_ess_nearly_independent_draws():
    rng = np.random.default_rng(5)
    chains, draws, phi = 4, 2000, 0.9
    x = _ar1(rng, chains, draws, 2, phi)
    ess = min_bulk_ess(x)
    # AR(1): ESS ≈ M N (1 − φ)/(1 + φ) ≈ 421.
    assert 300 < ess < 560
    kept = thin_to_ess(x)
    assert kept.shape[1] == 2
    assert ess - chains <= kept.shape[0] <= ess
    per_chain = kept.reshape(chains, -1, 2)
    lag1 = np.mean([np.corrcoef(c[:-1, 0], c[1:, 0])[0, 1] for c in per_chain])
    assert abs(lag1) < 0.3  # φ^(N/k) ≈ 0.9^19 ≈ 0.13, against 0.9 before thinning
    assert thin_to_ess(x, max_points=100).shape == (100, 2)


def test_thinning_caps_at_the_number_of_draws():
    x = np.random.default_rng(0).normal(size=(4, 50, 3))  # iid: ESS about 200
    kept = thin_to_ess(x, max_points=10_000)
    assert kept.shape[0] <= 200 and kept.shape[1] == 3
    np.testing.assert_array_equal(np.unique(kept, axis=0).shape[0], kept.shape[0])
