r"""A two-sample test with a valid null: the energy statistic with a permutation null.

A claim known only through draws (:class:`ppl_bandits.core.claims.SampledClaim`, or a
user's own sampler) has no moments to test; the question is whether its draws and the
NUTS reference draws come from the same distribution. The energy test of Székely and
Rizzo (2004) answers it for any dimension: with :math:`x_1..x_n` and :math:`y_1..y_m`,

.. math::

    T = \frac{nm}{n+m}\Big(\frac{2}{nm}\sum_{i,j}\lVert x_i - y_j\rVert
        - \frac{1}{n^2}\sum_{i,i'}\lVert x_i - x_{i'}\rVert
        - \frac{1}{m^2}\sum_{j,j'}\lVert y_j - y_{j'}\rVert\Big) \ge 0,

zero in expectation only when the two laws are equal. Its null distribution is obtained
by permutation: under the null the pooled sample is exchangeable, so the rank of the
observed :math:`T` among :math:`B` statistics of random relabellings is uniform, and

.. math::

    p = \frac{1 + \#\{b : T_b \ge T\}}{1 + B}

satisfies :math:`P(p \le \alpha) \le \alpha` exactly, for every :math:`n, m` (Phipson
and Smyth 2010). Coordinates are first divided by their pooled standard deviation, so
that no coordinate dominates the Euclidean distance by its units.

Exchangeability needs independent draws. MCMC draws are autocorrelated, so the
reference is thinned first (:func:`thin_to_ess`) to about as many draws as its smallest
bulk effective sample size (ArviZ), evenly spaced in every chain; after that thinning,
consecutive kept draws are about one integrated autocorrelation time apart and nearly
independent.

References
----------
Székely and Rizzo (2004). Testing for equal distributions in high dimension. InterStat 5.
Phipson and Smyth (2010). Permutation p-values should never be zero. Stat. Appl. Genet.
Mol. Biol. 9(1).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.spatial.distance import cdist

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import (once a day).
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "MAX_POINTS",
    "energy_statistic",
    "energy_test",
    "min_bulk_ess",
    "thin_to_ess",
]

#: Default largest number of draws kept per sample (the test costs O(n² B)).
MAX_POINTS: int = 1000
#: Entries of the label matrix of one batch of permutations (memory: twice this, in floats).
_BATCH_ENTRIES = 2_000_000


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def _as_sample(name: str, x, p: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {np.shape(x)}; expected (n, p) or (n,)")
    if a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name} has shape {a.shape}; expected at least 2 draws of p >= 1")
    if p is not None and a.shape[1] != p:
        raise ValueError(f"{name} has {a.shape[1]} coordinates; expected p = {p} like x")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries (NaN or inf); expected finite draws")
    return a


def _standardised_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pooled = np.concatenate([x, y])
    sd = pooled.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)  # a constant coordinate contributes nothing either way
    z = (pooled - pooled.mean(axis=0)) / sd
    return cdist(z, z)


def _statistics(D: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Energy statistics of the label rows ``labels`` (B, N), ``n`` ones in each.

    With a the 0/1 indicator of the x sample, the sums of distances within x, between the
    samples and within y are a·Da, 1·Da − a·Da and the rest of the total (D symmetric).
    """
    N = D.shape[0]
    m = N - n
    total = D.sum()
    aD = labels @ D
    s_xx = np.einsum("bi,bi->b", labels, aD)
    s_xy = aD.sum(axis=1) - s_xx
    s_yy = total - 2.0 * s_xy - s_xx
    e = 2.0 * s_xy / (n * m) - s_xx / n**2 - s_yy / m**2
    return (n * m / N) * e


def energy_statistic(x, y) -> float:
    r"""The two-sample energy statistic :math:`T` of Székely and Rizzo (2004).

    Computed on the pooled-sd standardised coordinates, as in :func:`energy_test`.

    Parameters
    ----------
    x : array_like, shape (n, p) or (n,)
    y : array_like, shape (m, p) or (m,)

    Returns
    -------
    float
        :math:`T \ge 0`.
    """
    a = _as_sample("x", x)
    b = _as_sample("y", y, a.shape[1])
    D = _standardised_distances(a, b)
    labels = np.zeros((1, D.shape[0]))
    labels[0, : a.shape[0]] = 1.0
    return float(_statistics(D, labels, a.shape[0])[0])


def energy_test(x, y, *, num_permutations: int = 499, seed: int = 0) -> dict:
    r"""Energy two-sample test of equal distributions with a permutation null.

    Parameters
    ----------
    x : array_like, shape (n, p) or (n,)
        Independent draws of the first law (e.g. thinned NUTS draws, :func:`thin_to_ess`).
    y : array_like, shape (m, p) or (m,)
        Independent draws of the second law (e.g. a claimed posterior's draws).
    num_permutations : int
        Number B of random relabellings of the pooled sample, at least 1. The smallest
        attainable p-value is :math:`1/(B+1)`.
    seed : int
        Seed of ``numpy.random.default_rng`` for the permutations.

    Returns
    -------
    dict
        ``statistic`` (:math:`T`, see the module docstring), ``p_value``
        :math:`(1 + \#\{T_b \ge T\})/(1 + B)`, ``n_x``, ``n_y``, ``num_permutations``.
        Reject equality at level :math:`\alpha` when ``p_value <= alpha``; under equality
        (and independent draws) this happens with probability at most :math:`\alpha`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    >>> energy_test(x, y)["p_value"] > 0.05
    True
    >>> energy_test(x, y + 0.5)["p_value"]
    0.002
    """
    a = _as_sample("x", x)
    b = _as_sample("y", y, a.shape[1])
    B = _check_int("num_permutations", num_permutations, 1)
    seed = _check_int("seed", seed, 0)
    n, m = a.shape[0], b.shape[0]
    N = n + m
    D = _standardised_distances(a, b)

    observed = np.zeros((1, N))
    observed[0, :n] = 1.0
    t_obs = float(_statistics(D, observed, n)[0])

    rng = np.random.default_rng(seed)
    base = np.zeros(N)
    base[:n] = 1.0
    exceed = 0
    # Round-off tolerance: a relabelling equal to the observed one must count as >= T.
    tol = 1e-9 * max(abs(t_obs), 1e-12) + 1e-12
    batch = max(1, min(B, _BATCH_ENTRIES // N))
    for start in range(0, B, batch):
        k = min(batch, B - start)
        labels = rng.permuted(np.tile(base, (k, 1)), axis=1)
        t_perm = _statistics(D, labels, n)
        exceed += int(np.sum(t_perm >= t_obs - tol))
    return {
        "statistic": t_obs,
        "p_value": (1 + exceed) / (1 + B),
        "n_x": int(n),
        "n_y": int(m),
        "num_permutations": B,
    }


def _as_chains(draws) -> np.ndarray:
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"draws has shape {np.shape(draws)}; expected (chains, draws, p)")
    if x.shape[0] < 1 or x.shape[1] < 4 or x.shape[2] < 1:
        raise ValueError(
            f"draws has shape {x.shape}; expected at least 1 chain, 4 draws per chain "
            "(ArviZ's minimum for an ESS) and 1 coordinate"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("draws has non-finite entries (NaN or inf); expected finite draws")
    return x


def min_bulk_ess(draws) -> float:
    """Smallest ArviZ bulk ESS over the coordinates of ``draws`` (chains, draws, p).

    NaN (an ESS that cannot be computed, e.g. a constant coordinate) counts as 0.
    """
    x = _as_chains(draws)
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = np.asarray(az.ess(az.convert_to_dataset(x), method="bulk")["x"].values)
    ess = np.where(np.isfinite(ess), ess, 0.0)
    return float(ess.min())


def thin_to_ess(draws, *, max_points: int = MAX_POINTS, min_points: int = 2) -> np.ndarray:
    r"""Thin MCMC draws to about as many nearly independent draws as their ESS.

    With :math:`E` the smallest bulk ESS over coordinates (:func:`min_bulk_ess`) of
    :math:`M` chains of :math:`N` draws, keeps
    :math:`k = \lfloor \min(E, \text{max\_points}, MN) / M \rfloor` draws of every chain,
    evenly spaced (first and last included), and pools them chain after chain: about
    :math:`\min(E, \text{max\_points})` draws in all (at least ``min_points``, rounded up
    to a multiple of :math:`M`). A chain's kept draws are then about
    :math:`N/k \approx MN/E` iterations, one integrated autocorrelation time, apart.

    Parameters
    ----------
    draws : array_like, shape (chains, draws, p)
    max_points : int
        Largest number of draws returned, at least 2 (the energy test is quadratic).
    min_points : int
        Smallest number of draws returned, at least 2, when the ESS is smaller.

    Returns
    -------
    numpy.ndarray, shape (m, p)

    Examples
    --------
    >>> import numpy as np
    >>> draws = np.random.default_rng(0).normal(size=(4, 500, 2))
    >>> thin_to_ess(draws, max_points=1000).shape
    (1000, 2)
    """
    x = _as_chains(draws)
    max_points = _check_int("max_points", max_points, 2)
    min_points = _check_int("min_points", min_points, 2)
    c, n, p = x.shape
    target = min(min_bulk_ess(x), float(max_points), float(c * n))
    per_chain = math.floor(target / c)
    per_chain = max(per_chain, math.ceil(min(min_points, c * n) / c), 1)
    per_chain = min(per_chain, n)
    idx = np.unique(np.round(np.linspace(0, n - 1, per_chain)).astype(int))
    return x[:, idx, :].reshape(-1, p)
