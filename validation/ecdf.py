r"""The simultaneous ECDF band test of uniformity (Säilynoja, Bürkner and Vehtari 2022).

The statistic of a column of n PITs is the smallest two-sided binomial tail probability of
its ECDF over an evaluation grid; its p-value is read from the null distribution of that
statistic, simulated once per sample size with a fixed seed (:data:`NULL_SEED`). Columns
are tested apart and combined with Bonferroni (:func:`ecdf_uniformity_test`); the band
itself, for plots, is :func:`ecdf_band`. The binomial tail probabilities are one table per
sample size, looked up for the data and for every null sample.

>>> import numpy as np
>>> z, lower, upper = ecdf_band(50, 0.05)
>>> bool(np.all(lower <= z) and np.all(z <= upper))
True
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA",
    "ECDF_POINTS_MAX",
    "NULL_SEED",
    "NULL_SIMULATIONS",
    "check_alpha",
    "ecdf_band",
    "ecdf_uniformity_test",
]

#: Default family-wise level of the uniformity test.
ALPHA = 0.01
#: At most this many evaluation points of the ECDF (Säilynoja et al. 2022 use a grid).
ECDF_POINTS_MAX = 100
#: Simulated samples of the null distribution of the band statistic (fixed seed); more
#: when there are so many columns that the Bonferroni floor c / (B + 1) nears alpha.
NULL_SIMULATIONS = 20_000
NULL_SEED = 20220


def check_alpha(alpha) -> float:
    """``alpha`` as a float, or ``ValueError`` naming it unless it is a number in (0, 1)."""
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ValueError(f"alpha is {alpha!r}; expected a number in (0, 1)")
    return float(alpha)


def _grid(n: int) -> np.ndarray:
    m = min(n, ECDF_POINTS_MAX)
    return np.arange(1, m) / m


@functools.lru_cache(maxsize=16)
def _tail_table(n: int) -> np.ndarray:
    r"""T[i, k]: two-sided binomial tail probability of k of n PITs below the grid point z_i.

    :math:`\min\{1, 2\min(B(k; n, z_i), 1 - B(k - 1; n, z_i))\}`, for every k in 0..n:
    one table per sample size, looked up for the data and for every null sample.
    """
    z = _grid(n)
    k = np.arange(n + 1)[None, :]
    lower = stats.binom.cdf(k, n, z[:, None])
    upper = stats.binom.sf(k - 1, n, z[:, None])
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


def _min_tail(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Smallest two-sided binomial tail probability of ECDF counts at the grid points z."""
    table = _tail_table(n)
    return table[np.arange(z.size), counts].min(axis=-1)


def _num_null(columns: int = 1, alpha: float = ALPHA) -> int:
    """Null samples so that the smallest Bonferroni p-value is at most alpha / 20."""
    need = math.ceil(20 * columns / alpha / 10_000) * 10_000
    return max(NULL_SIMULATIONS, need)


@functools.lru_cache(maxsize=64)
def _null_statistics(n: int, num: int = NULL_SIMULATIONS) -> np.ndarray:
    """Sorted null draws of the band statistic for n uniform PITs (fixed seed)."""
    z = _grid(n)
    if z.size == 0:
        return np.ones(num)
    m = z.size + 1
    rng = np.random.default_rng(NULL_SEED)
    counts = rng.multinomial(n, np.full(m, 1.0 / m), size=num)
    cum = np.cumsum(counts, axis=1)[:, :-1]
    return np.sort(_min_tail(cum, n, z))


def ecdf_band(n: int, alpha: float = ALPHA):
    """Simultaneous (1 − alpha) ECDF band of n uniform PITs at the grid points.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        The grid points z (at most :data:`ECDF_POINTS_MAX` − 1 of them) and the band's
        lower and upper ECDF values there.
    """
    z = _grid(n)
    null = _null_statistics(n)
    gamma = null[max(0, math.floor(alpha * (null.size + 1)) - 1)]
    lower = stats.binom.ppf(gamma / 2, n, z) / n
    upper = stats.binom.isf(gamma / 2, n, z) / n
    return z, lower, upper


def ecdf_uniformity_test(pits, alpha: float = ALPHA) -> dict:
    r"""Simultaneous ECDF band test of uniformity, one column at a time, Bonferroni combined.

    For a column of n PITs with ECDF :math:`\hat F`, evaluated on the grid
    :math:`z_i = i/m` (m = min(n, 100)), the statistic is

    .. math:: s = \min_i 2\min\{B(n\hat F(z_i); n, z_i),\ 1 - B(n\hat F(z_i) - 1; n, z_i)\}

    with B the binomial CDF (Säilynoja, Bürkner, Vehtari 2022): the ECDF leaves the
    simultaneous band of level 1 − α exactly when s falls below the α-quantile of its null
    distribution. The p-value of a column is :math:`(1 + \#\{s_b \le s\}) / (B + 1)` over
    B null samples drawn once with a fixed seed (B = ``NULL_SIMULATIONS``, or more when
    c / (B + 1) would exceed α / 20); over c columns the
    family-wise p-value is :math:`\min(1, c\,\min_j p_j)` (Bonferroni).

    Parameters
    ----------
    pits : array (n,) or (n, c)
        PITs, uniform on (0, 1) under the null; columns are tested separately.
    alpha : float
        Family-wise level of the verdict.

    Returns
    -------
    dict
        ``statistic`` (smallest s over columns), ``p_value`` (Bonferroni), ``verdict``
        ("pass" or "fail" at ``alpha``), ``alpha``, ``method``, ``column_p_values``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ecdf_uniformity_test(rng.uniform(size=(300, 3)))["verdict"]
    'pass'
    >>> ecdf_uniformity_test(rng.uniform(size=300) ** 1.5)["verdict"]
    'fail'
    """
    alpha = check_alpha(alpha)
    u = np.asarray(pits, np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2 or u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"pits has shape {np.shape(pits)}; expected (n,) or (n, c) with n >= 1")
    if not np.all((u >= 0) & (u <= 1)):
        raise ValueError("pits has values outside [0, 1]; expected probability integral transforms")
    n, c = u.shape
    z = _grid(n)
    null = _null_statistics(n, _num_null(c, alpha))
    if z.size:
        counts = np.stack([np.searchsorted(np.sort(col), z, side="right") for col in u.T])
        s = _min_tail(counts, n, z)
    else:
        s = np.ones(c)
    p_cols = (1.0 + np.searchsorted(null, s, side="right")) / (null.size + 1.0)
    p_value = float(min(1.0, c * p_cols.min()))
    return {
        "statistic": float(s.min()),
        "p_value": p_value,
        "verdict": "pass" if p_value >= alpha else "fail",
        "alpha": alpha,
        "method": (
            "simultaneous ECDF band (Säilynoja, Bürkner, Vehtari 2022), null simulated with "
            f"{null.size} samples (seed {NULL_SEED}); Bonferroni over {c} columns"
        ),
        "column_p_values": p_cols,
    }
