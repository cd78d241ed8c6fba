r"""Closed-form Gaussian posterior versus MCMC ground truth.

Two questions, two functions:

- :func:`exact_comparison` — the closed form claims to be *the* posterior
  :math:`\mathcal{N}(\mu, \Sigma)`. Each moment the claim fixes is tested against the
  MCMC draws with a z-score whose denominator is the Monte Carlo standard error (MCSE,
  from ArviZ's ESS), and the family of tests gets a Bonferroni-corrected verdict at a
  stated family-wise error rate :math:`\alpha`.
- :func:`discrepancy` — the closed form is an approximation (Laplace GLM, meTS-Fa,
  nonlinear dTS); there is no verdict, only distances: standardized mean error, sd
  ratio, the Gaussian 2-Wasserstein distance and the energy distance.

Draws are an array ``(chains, draws, p)``; :func:`stack_draws` builds it from ArviZ
InferenceData. All statistics are computed in float64 NumPy whatever the dtype of the
draws and whatever JAX's x64 setting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from scipy.spatial.distance import cdist

from models.checks import as_positive_definite, check_finite, check_shape
from validation.diagnostics import coordinate_labels

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import (once a day).
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "ComparisonResult",
    "discrepancy",
    "energy_distance",
    "exact_comparison",
    "gaussian_w2",
    "stack_draws",
    "stack_labels",
]


# --------------------------------------------------------------------------- inputs


def _posterior(idata):
    posterior = getattr(idata, "posterior", idata)
    if not hasattr(posterior, "data_vars"):
        raise TypeError(
            f"idata is {type(idata).__name__}; expected arviz.InferenceData with a posterior "
            "group (or an xarray.Dataset with chain and draw dims)"
        )
    return posterior


def _names(posterior, var_names) -> list[str]:
    names = [var_names] if isinstance(var_names, str) else list(var_names)
    available = [str(v) for v in posterior.data_vars]
    missing = [v for v in names if v not in available]
    if not names or missing:
        raise ValueError(
            f"var_names is {var_names!r}; expected a non-empty list of posterior variables "
            f"among {available}"
        )
    return names


def stack_draws(idata, var_names: Sequence[str] | str) -> np.ndarray:
    r"""Posterior variables as one float64 array of shape ``(chains, draws, p)``.

    Each draw is flattened in a fixed order: the variables in the order of ``var_names``,
    each flattened row-major (C order) over its non-sample dimensions, so a variable
    ``theta`` of shape ``(K, d)`` contributes ``theta[0, 0], theta[0, 1], ...,
    theta[K-1, d-1]``. :func:`stack_labels` gives the matching labels.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.Dataset
        An InferenceData with a posterior group, or the posterior Dataset itself.
    var_names : sequence of str or str
        Variables to stack, in this order.

    Returns
    -------
    numpy.ndarray
        Shape ``(chains, draws, p)``, dtype float64.

    Examples
    --------
    >>> import numpy as np
    >>> import arviz as az
    >>> idata = az.from_dict(posterior={"a": np.zeros((2, 5)), "b": np.ones((2, 5, 2, 3))})
    >>> stack_draws(idata, ["b", "a"]).shape
    (2, 5, 7)
    >>> stack_labels(idata, ["b", "a"])[:2], stack_labels(idata, ["b", "a"])[-1]
    (['b[0, 0]', 'b[0, 1]'], 'a')
    """
    posterior = _posterior(idata)
    blocks = []
    for name in _names(posterior, var_names):
        da = posterior[name].transpose("chain", "draw", ...)
        values = np.asarray(da.values, dtype=np.float64)
        blocks.append(values.reshape(values.shape[0], values.shape[1], -1))
    return np.concatenate(blocks, axis=-1)


def stack_labels(idata, var_names: Sequence[str] | str) -> list[str]:
    """Labels of the columns of :func:`stack_draws`, e.g. ``["theta[0, 0]", ..., "psi[3]"]``."""
    posterior = _posterior(idata)
    labels: list[str] = []
    for name in _names(posterior, var_names):
        da = posterior[name].isel(chain=0, draw=0, drop=True)
        labels.extend(coordinate_labels(da))
    return labels


def _as_draws(draws) -> np.ndarray:
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"draws has shape {x.shape}; expected (chains, draws, p)")
    if x.shape[1] < 4 or x.shape[0] < 1 or x.shape[2] < 1:
        raise ValueError(
            f"draws has shape {x.shape}; expected at least 1 chain, 4 draws per chain "
            "(ArviZ's minimum for an ESS) and 1 coordinate"
        )
    check_finite("draws", x)
    return x


def _as_gaussian(mean, cov, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = np.asarray(mean, dtype=np.float64)
    S = np.asarray(cov, dtype=np.float64)
    check_shape("mean", mu, (p,))
    check_finite("mean", mu)
    check_shape("cov", S, (p, p))
    as_positive_definite("cov", S)
    S = 0.5 * (S + S.T)
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "cov has no Cholesky factor in float64; expected a well-conditioned symmetric "
            "positive-definite (p, p) matrix"
        ) from err
    return mu, S, L


def _labels(labels, p: int) -> list[str]:
    if labels is None:
        return [f"x[{i}]" for i in range(p)]
    labels = [str(v) for v in labels]
    if len(labels) != p:
        raise ValueError(f"labels has {len(labels)} entries; expected p = {p}")
    return labels


def _mcse(x: np.ndarray, method: str) -> np.ndarray:
    """ArviZ MCSE of each trailing coordinate of ``x`` (chains, draws, k), float64 (k,)."""
    ds = az.convert_to_dataset(np.asarray(x, dtype=np.float64))
    return np.asarray(az.mcse(ds, method=method)["x"].values, dtype=np.float64).reshape(-1)


def _jsonable(x) -> Any:
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()] if x.ndim else _jsonable(x.item())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# --------------------------------------------------------------------------- exact


@dataclass(frozen=True)
class ComparisonResult:
    """Result of :func:`exact_comparison`. Arrays have length ``p`` unless stated."""

    verdict: str
    """``"pass"`` when no test exceeds the critical value, else ``"fail"``."""
    alpha: float
    """Family-wise error rate of the verdict (probability of failing a correct claim)."""
    num_tests: int
    """Number of two-sided tests m: 2p + 1, plus p(p-1)/2 with ``cross_covariances``."""
    critical_value: float
    """Bonferroni critical value Φ⁻¹(1 − α/(2m)) for every :math:`|z|`."""
    p_value: float
    """Bonferroni-adjusted smallest two-sided p-value, min(1, m · min p); fail iff < α."""
    failed: tuple[str, ...]
    """Names of the failed tests: ``mean:<label>``, ``sd:<label>``, ``mahalanobis``,
    ``cov:<label i>|<label j>``."""
    labels: tuple[str, ...]
    """Coordinate labels."""
    num_chains: int
    num_draws: int
    mean_closed_form: np.ndarray
    mean_mcmc: np.ndarray
    mcse_mean: np.ndarray
    z_mean: np.ndarray
    """(μ_cf − mean_mcmc) / MCSE_mean."""
    sd_closed_form: np.ndarray
    sd_mcmc: np.ndarray
    sd_ratio: np.ndarray
    """sd_mcmc / sd_cf."""
    mcse_sd_ratio: np.ndarray
    """MCSE_sd / sd_cf, the MCSE of the ratio."""
    z_sd: np.ndarray
    """(ratio − 1) / (MCSE_sd / sd_cf)."""
    mahalanobis_mean: float
    """Mean over draws of D² = (x − μ)ᵀ Σ⁻¹ (x − μ); p under the claim."""
    mahalanobis_mcse: float
    z_mahalanobis: float
    """(mean D² − p) / MCSE(D²)."""
    cross_pairs: tuple[tuple[int, int], ...]
    """Index pairs (i < j) of the cross-covariance tests, q = p(p-1)/2 of them; empty
    without ``cross_covariances``."""
    cross_closed_form: np.ndarray
    """Claimed standardized cross-covariance ρ_ij = Σ_ij / (σ_i σ_j), shape (q,)."""
    cross_mcmc: np.ndarray
    """Mean over draws of u_i u_j with u = (x − μ) / σ (closed-form μ and σ), shape (q,);
    ρ_ij under the claim."""
    mcse_cross: np.ndarray
    """ArviZ MCSE of ``cross_mcmc``, shape (q,)."""
    z_cross: np.ndarray
    """(cross_mcmc − ρ_ij) / mcse_cross, shape (q,)."""

    @property
    def passed(self) -> bool:
        """Whether the verdict is ``"pass"``."""
        return self.verdict == "pass"

    @property
    def dim(self) -> int:
        """The dimension p."""
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every statistic (non-finite numbers become ``None``)."""
        out = {}
        for name in self.__dataclass_fields__:
            out[name] = _jsonable(getattr(self, name))
        out["passed"] = self.passed
        out["dim"] = self.dim
        return out

    def __str__(self) -> str:
        def worst(z) -> str:
            z = np.asarray(z)
            if z.size == 0:
                return "-"
            i = int(np.nanargmax(np.abs(z))) if np.any(np.isfinite(z)) else 0
            return f"{z[i]:+.3f}"

        lines = [
            f"closed form vs MCMC: {self.dim} coordinates, {self.num_chains} chains x "
            f"{self.num_draws} draws",
            f"  tests m = {self.num_tests}, family-wise alpha = {self.alpha:g}, "
            f"Bonferroni critical |z| = {self.critical_value:.3f}",
            f"  worst z: mean {worst(self.z_mean)}, sd {worst(self.z_sd)}, "
            f"mahalanobis {self.z_mahalanobis:+.3f} (mean D² {self.mahalanobis_mean:.4g} "
            f"vs {self.dim}), cross-covariance {worst(self.z_cross)}",
            f"  verdict: {self.verdict.upper()} (adjusted p = {self.p_value:.3g})",
        ]
        if self.failed:
            shown = ", ".join(self.failed[:10])
            more = f" and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
            lines.append(f"  failed: {shown}{more}")
        return "\n".join(lines)


def exact_comparison(
    draws,
    mean,
    cov,
    *,
    alpha: float = 0.01,
    cross_covariances: bool = True,
    labels: Sequence[str] | None = None,
) -> ComparisonResult:
    r"""Test whether MCMC draws come from the claimed Gaussian :math:`\mathcal{N}(\mu, \Sigma)`.

    With :math:`\hat m_i, \hat s_i` the MCMC mean and sd (over all chains and draws) of
    coordinate :math:`i` and :math:`\sigma_i = \Sigma_{ii}^{1/2}`:

    .. math::

        z^{\mathrm{mean}}_i = \frac{\mu_i - \hat m_i}{\mathrm{MCSE}(\hat m_i)}, \qquad
        z^{\mathrm{sd}}_i = \frac{\hat s_i / \sigma_i - 1}{\mathrm{MCSE}(\hat s_i) / \sigma_i},

    and jointly, with :math:`D^2 = (x - \mu)^\top \Sigma^{-1} (x - \mu)` per draw
    (:math:`\chi^2_p` under the claim, computed with a Cholesky solve),

    .. math::

        z^{\mathrm{maha}} = \frac{\overline{D^2} - p}{\mathrm{MCSE}(\overline{D^2})}.

    ``cross_covariances`` adds, for every pair :math:`i < j`, a test of the cross-covariance
    :math:`\Sigma_{ij}` through the standardized draws :math:`u = (x - \mu)/\sigma`
    (closed-form :math:`\mu, \sigma`), whose cross moment is
    :math:`E[u_i u_j] = \rho_{ij} = \Sigma_{ij}/(\sigma_i\sigma_j)` under the claim:

    .. math::

        z^{\mathrm{cov}}_{ij} = \frac{\overline{u_i u_j} - \rho_{ij}}
                                     {\mathrm{MCSE}(\overline{u_i u_j})}.

    These tests are what detects a claim whose couplings are wrong but whose marginals
    are right: replacing :math:`\Sigma` by its diagonal leaves every
    :math:`z^{\mathrm{mean}}` and :math:`z^{\mathrm{sd}}` unchanged, and also
    :math:`E[D^2] = \operatorname{tr}(\operatorname{diag}(\Sigma)^{-1}\Sigma) = p`, so the
    :math:`2p + 1` tests above cannot reject it.

    MCSEs are ArviZ's (``az.mcse`` with ``method="mean"`` and ``"sd"``, from the ESS of
    each statistic's chains). Each of the :math:`m = 2p + 1 \,(+\, p(p-1)/2)` tests is
    two-sided at level :math:`\alpha/m`, so the verdict ``"fail"`` is reached for a correct
    claim with probability at most :math:`\alpha` (Bonferroni, valid under any
    dependence between tests, given the normal approximation of the z-scores). A NaN
    z-score (zero MCSE) fails.

    Parameters
    ----------
    draws : array_like, shape (chains, draws, p)
        MCMC draws, e.g. from :func:`stack_draws`; at least 4 draws per chain.
    mean : array_like, shape (p,)
        Closed-form posterior mean μ.
    cov : array_like, shape (p, p)
        Closed-form posterior covariance Σ, symmetric positive definite.
    alpha : float
        Family-wise error rate, in (0, 1).
    cross_covariances : bool
        Include the p(p-1)/2 cross-covariance tests (default). Without them the family is
        the 2p + 1 tests of means, sds and the Mahalanobis mean, which are blind to a
        dropped coupling.
    labels : sequence of str, optional
        Coordinate names used in ``failed`` (default ``x[i]``).

    Returns
    -------
    ComparisonResult

    Examples
    --------
    Independent draws from the claimed Gaussian pass; a covariance inflated by 1.3 fails:

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> mean, cov = np.array([1.0, -2.0]), np.array([[1.0, 0.8], [0.8, 2.0]])
    >>> draws = rng.multivariate_normal(mean, cov, size=(4, 1000))
    >>> exact_comparison(draws, mean, cov).verdict
    'pass'
    >>> exact_comparison(draws, mean, 1.3 * cov).verdict
    'fail'
    """
    x = _as_draws(draws)
    c, n, p = x.shape
    mu, S, L = _as_gaussian(mean, cov, p)
    if isinstance(alpha, bool) or not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha is {alpha!r}; expected a family-wise error rate in (0, 1)")
    names = _labels(labels, p)

    flat = x.reshape(-1, p)
    sd_cf = np.sqrt(np.diag(S))

    # Per-coordinate means.
    mean_mcmc = flat.mean(axis=0)
    mcse_mean = _mcse(x, "mean")
    with np.errstate(divide="ignore", invalid="ignore"):
        z_mean = (mu - mean_mcmc) / mcse_mean

    # Per-coordinate sds: ArviZ's method="sd" is the MCSE of the ddof=0 estimator.
    sd_mcmc = flat.std(axis=0)
    mcse_sd = _mcse(x, "sd")
    sd_ratio = sd_mcmc / sd_cf
    mcse_ratio = mcse_sd / sd_cf
    with np.errstate(divide="ignore", invalid="ignore"):
        z_sd = (sd_ratio - 1.0) / mcse_ratio

    # Squared Mahalanobis distance of every draw: D² = |L⁻¹(x − μ)|², with Σ = L Lᵀ.
    white = solve_triangular(L, (flat - mu).T, lower=True)
    d2 = np.sum(white**2, axis=0).reshape(c, n)
    maha_mean = float(d2.mean())
    maha_mcse = float(_mcse(d2[..., None], "mean")[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        z_maha = float(np.float64(maha_mean - p) / np.float64(maha_mcse))

    # Cross-covariances via the standardized draws: E[u_i u_j] = ρ_ij under the claim.
    if cross_covariances and p > 1:
        iu, ju = np.triu_indices(p, k=1)
    else:
        iu = ju = np.zeros(0, dtype=int)
    rho_cf = S[iu, ju] / (sd_cf[iu] * sd_cf[ju])
    if iu.size:
        u = (x - mu) / sd_cf
        prod = u[..., iu] * u[..., ju]
        cross = prod.reshape(-1, iu.size).mean(axis=0)
        mcse_cross = _mcse(prod, "mean")
        with np.errstate(divide="ignore", invalid="ignore"):
            z_cross = (cross - rho_cf) / mcse_cross
    else:
        cross = mcse_cross = z_cross = np.zeros(0)

    m = 2 * p + 1 + int(iu.size)
    crit = NormalDist().inv_cdf(1.0 - alpha / (2.0 * m))

    tests = (
        [(f"mean:{names[i]}", z_mean[i]) for i in range(p)]
        + [(f"sd:{names[i]}", z_sd[i]) for i in range(p)]
        + [("mahalanobis", z_maha)]
        + [
            (f"cov:{names[i]}|{names[j]}", z)
            for i, j, z in zip(iu.tolist(), ju.tolist(), z_cross, strict=True)
        ]
    )
    failed = tuple(name for name, z in tests if not abs(float(z)) <= crit)
    p_values = [
        math.erfc(abs(float(z)) / math.sqrt(2.0)) if math.isfinite(float(z)) else 0.0
        for _, z in tests
    ]
    p_adjusted = min(1.0, m * min(p_values))

    return ComparisonResult(
        verdict="fail" if failed else "pass",
        alpha=float(alpha),
        num_tests=m,
        critical_value=float(crit),
        p_value=float(p_adjusted),
        failed=failed,
        labels=tuple(names),
        num_chains=c,
        num_draws=n,
        mean_closed_form=mu,
        mean_mcmc=mean_mcmc,
        mcse_mean=mcse_mean,
        z_mean=z_mean,
        sd_closed_form=sd_cf,
        sd_mcmc=sd_mcmc,
        sd_ratio=sd_ratio,
        mcse_sd_ratio=mcse_ratio,
        z_sd=z_sd,
        mahalanobis_mean=maha_mean,
        mahalanobis_mcse=maha_mcse,
        z_mahalanobis=z_maha,
        cross_pairs=tuple(zip(iu.tolist(), ju.tolist(), strict=True)),
        cross_closed_form=rho_cf,
        cross_mcmc=cross,
        mcse_cross=mcse_cross,
        z_cross=z_cross,
    )


# --------------------------------------------------------------------------- distances


def _sqrtm_psd(A: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix via ``eigh``.

    Eigenvalues below zero can only come from round-off and are set to zero.
    """
    w, V = np.linalg.eigh(0.5 * (A + A.T))
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def gaussian_w2(mean1, cov1, mean2, cov2) -> float:
    r"""2-Wasserstein distance between two Gaussians, in closed form.

    .. math::

        W_2^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
              - 2\big(\Sigma_2^{1/2} \Sigma_1 \Sigma_2^{1/2}\big)^{1/2}\Big)

    (Dowson and Landau 1982; Givens and Shortt 1984), with symmetric square roots from
    ``numpy.linalg.eigh`` in float64. Covariances may be singular (positive semi-definite).

    Examples
    --------
    >>> import numpy as np
    >>> gaussian_w2(np.zeros(2), np.eye(2), np.array([3.0, 4.0]), np.eye(2))
    5.0
    >>> round(gaussian_w2(np.zeros(1), np.eye(1) * 4.0, np.zeros(1), np.eye(1)), 12)
    1.0
    """
    m1 = np.asarray(mean1, dtype=np.float64)
    m2 = np.asarray(mean2, dtype=np.float64)
    S1 = np.asarray(cov1, dtype=np.float64)
    S2 = np.asarray(cov2, dtype=np.float64)
    p = m1.shape[0] if m1.ndim == 1 else -1
    check_shape("mean1", m1, (None,))
    check_shape("mean2", m2, (p,))
    check_shape("cov1", S1, (p, p))
    check_shape("cov2", S2, (p, p))
    for name, v in (("mean1", m1), ("mean2", m2), ("cov1", S1), ("cov2", S2)):
        check_finite(name, v)
    root2 = _sqrtm_psd(S2)
    cross = np.linalg.eigvalsh(0.5 * ((root2 @ S1 @ root2) + (root2 @ S1 @ root2).T))
    bures2 = np.trace(S1) + np.trace(S2) - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    w2sq = float(np.sum((m1 - m2) ** 2) + max(float(bures2), 0.0))
    return math.sqrt(w2sq)


def energy_distance(x, y) -> float:
    r"""Energy distance between two samples (unbiased U-statistic form).

    .. math::

        \mathcal{E}(X, Y) = \frac{2}{nm}\sum_{i,j}\lVert x_i - y_j\rVert
        - \frac{1}{n(n-1)}\sum_{i \ne i'}\lVert x_i - x_{i'}\rVert
        - \frac{1}{m(m-1)}\sum_{j \ne j'}\lVert y_j - y_{j'}\rVert

    (Székely and Rizzo 2013); its expectation is
    :math:`2E\lVert X-Y\rVert - E\lVert X-X'\rVert - E\lVert Y-Y'\rVert \ge 0`, zero if and
    only if the distributions are equal, so an estimate near zero may be slightly negative.

    Parameters
    ----------
    x : array_like, shape (n, p)
    y : array_like, shape (m, p)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> same = energy_distance(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)))
    >>> shifted = energy_distance(rng.normal(size=(500, 2)), rng.normal(1.0, size=(500, 2)))
    >>> bool(abs(same) < 0.05 < shifted)
    True
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    check_shape("x", a, (None, None))
    check_shape("y", b, (None, a.shape[1]))
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"x has {a.shape[0]} and y has {b.shape[0]} points; expected >= 2 each")
    n, m = a.shape[0], b.shape[0]
    xy = cdist(a, b).mean()
    xx = cdist(a, a).sum() / (n * (n - 1))
    yy = cdist(b, b).sum() / (m * (m - 1))
    return float(2.0 * xy - xx - yy)


def discrepancy(
    draws,
    mean,
    cov,
    *,
    seed: int = 0,
    max_points: int = 2000,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    r"""How far an approximate Gaussian posterior is from MCMC ground truth (no verdict).

    With :math:`\hat m, \hat s, \hat\Sigma` the mean, sd and covariance of the MCMC draws
    (all chains pooled) and :math:`\mathcal{N}(\mu, \Sigma)` the closed form,

    - standardized mean error :math:`(\mu_i - \hat m_i)/\hat s_i` per coordinate (in units
      of the reference posterior sd) and its largest absolute value, with its MCSE
      :math:`\mathrm{MCSE}(\hat m_i)/\hat s_i` as the noise floor;
    - sd ratio :math:`\hat s_i / \sigma_i`;
    - Gaussian 2-Wasserstein distance :math:`W_2(\mathcal{N}(\mu, \Sigma),
      \mathcal{N}(\hat m, \hat\Sigma))` (:func:`gaussian_w2`), i.e. between the closed form
      and the Gaussian fitted to the draws;
    - energy distance (:func:`energy_distance`) between the draws, thinned to at most
      ``max_points`` evenly spaced draws (chain after chain), and as many independent
      draws from :math:`\mathcal{N}(\mu, \Sigma)` made with ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    draws : array_like, shape (chains, draws, p)
    mean : array_like, shape (p,)
    cov : array_like, shape (p, p)
    seed : int
        Seed of the closed-form sample used by the energy distance.
    max_points : int
        Largest sample size of the energy distance (its cost is quadratic), at least 2.
    labels : sequence of str, optional
        Coordinate names (default ``x[i]``).

    Returns
    -------
    dict
        JSON-ready: ``dim, num_chains, num_draws, labels, mean_closed_form, mean_mcmc,
        sd_closed_form, sd_mcmc, standardized_mean_error, standardized_mean_error_mcse,
        max_abs_standardized_mean_error, sd_ratio, w2, w2_mean_part, energy_distance,
        energy_points, seed``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> draws = rng.normal(size=(4, 500, 2))
    >>> d = discrepancy(draws, np.array([0.5, 0.0]), np.eye(2))
    >>> round(d["standardized_mean_error"][0], 1), round(d["w2"], 1)
    (0.5, 0.5)
    """
    x = _as_draws(draws)
    c, n, p = x.shape
    mu, S, L = _as_gaussian(mean, cov, p)
    names = _labels(labels, p)
    seed_i = int(seed) if isinstance(seed, int | np.integer) and not isinstance(seed, bool) else -1
    if seed_i < 0:
        raise ValueError(f"seed is {seed!r}; expected a non-negative integer")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points is {max_points!r}; expected an integer >= 2")

    flat = x.reshape(-1, p)
    mean_mcmc = flat.mean(axis=0)
    sd_mcmc = flat.std(axis=0, ddof=1)
    cov_mcmc = np.atleast_2d(np.cov(flat, rowvar=False))
    sd_cf = np.sqrt(np.diag(S))
    with np.errstate(divide="ignore", invalid="ignore"):
        sme = (mu - mean_mcmc) / sd_mcmc
        sme_mcse = _mcse(x, "mean") / sd_mcmc

    total = flat.shape[0]
    if total > max_points:
        idx = np.round(np.linspace(0, total - 1, max_points)).astype(int)
        thinned = flat[idx]
    else:
        thinned = flat
    rng = np.random.default_rng(seed_i)
    exact = mu + rng.standard_normal(thinned.shape) @ L.T

    return _jsonable(
        {
            "dim": p,
            "num_chains": c,
            "num_draws": n,
            "labels": names,
            "mean_closed_form": mu,
            "mean_mcmc": mean_mcmc,
            "sd_closed_form": sd_cf,
            "sd_mcmc": sd_mcmc,
            "standardized_mean_error": sme,
            "standardized_mean_error_mcse": sme_mcse,
            "max_abs_standardized_mean_error": float(np.max(np.abs(sme))),
            "sd_ratio": sd_mcmc / sd_cf,
            "w2": gaussian_w2(mu, S, mean_mcmc, cov_mcmc),
            "w2_mean_part": float(np.linalg.norm(mu - mean_mcmc)),
            "energy_distance": energy_distance(thinned, exact),
            "energy_points": int(thinned.shape[0]),
            "seed": seed_i,
        }
    )
