r"""The audit report: figures and one HTML page for an audit of a closed-form posterior.

An audit compares an agent's closed-form Gaussian posterior :math:`\mathcal{N}(\mu, \Sigma)`
with NUTS draws of the NumPyro model at a few *checkpoints* (numbers of rounds in the
recorded history). :func:`write_audit_report` turns the JSON-ready audit record and one
:class:`CheckpointPanel` per checkpoint into files:

============================  =================================================================
file                          content
============================  =================================================================
``rank_<checkpoint>.png``     rank plots of the reference chains (Vehtari et al. 2021)
``density_<checkpoint>.png``  NUTS histograms under the claimed marginal densities
``discrepancy.png``           statistics against the number of rounds (two or more checkpoints)
``report.html``               verdicts, reference gates, negative controls, figures, provenance
============================  =================================================================

A rank plot pools the draws of all chains, replaces each draw by its rank
:math:`r \in \{1, \dots, MN\}` (ties averaged) and shows, chain by chain, the histogram of
the ranks. When the chains sample the same distribution every histogram is uniform; a
chain that is stuck, shifted or too narrow shows a slope or a bump. The shaded band is the
pointwise 99 % interval of a bin count under uniformity,
:math:`\mathrm{Binomial}(N, 1/B)` for :math:`N` draws per chain and :math:`B` bins.

The page is self-contained: images are referenced by relative file name and every piece
of text that comes from the audit (names, labels, statistics, the command) is escaped
with :func:`html.escape`.

References
----------
Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021). Rank-normalization, folding, and
localization: an improved R̂ for assessing convergence of MCMC. Bayesian Analysis 16(2).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.stats import binom, norm, rankdata

from ppl_bandits.plotting import figure_factory as plt

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import (once a day).
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "MAX_DENSITY_COORDINATES",
    "MAX_RANK_COORDINATES",
    "RANK_BAND_LEVEL",
    "CheckpointPanel",
    "write_audit_report",
]

#: Largest number of coordinates in a rank plot (those with the largest rank-normalized
#: split-R̂ when there are more).
MAX_RANK_COORDINATES: int = 8
#: Largest number of coordinates in a density figure and in the worst-coordinates table
#: (those with the largest :math:`|z|` of the mean when there are more).
MAX_DENSITY_COORDINATES: int = 12
#: Pointwise coverage of the uniformity band drawn in the rank plots.
RANK_BAND_LEVEL: float = 0.99

_VERDICTS = ("pass", "fail", "report")
#: Statistics listed first in the verdict table (when a check has them).
_KEY_STATISTICS = (
    "reason",
    "p_value",
    "critical_value",
    "num_tests",
    "alpha",
    "z_mahalanobis",
    "failed",
    "max_abs_standardized_mean_error",
    "w2",
    "energy_distance",
)
#: How many statistics of a check the verdict table shows.
_MAX_STATISTICS = 8
_MIN_DRAWS = 4  # ArviZ's minimum number of draws per chain for R̂ and ESS
_MIN_FIGURE_WIDTH = 8.0  # inches: room for the figure title above a single panel


class CheckpointPanel(NamedTuple):
    """Everything the report shows about one checkpoint of an audit."""

    checkpoint: int
    """Number of rounds in the history at this checkpoint (a non-negative integer)."""
    labels: list[str]
    """p coordinate labels, e.g. ``"psi[0]"``, ``"theta[3, 1]"``
    (:func:`validation.compare.stack_labels`)."""
    draws: np.ndarray
    """(chains, draws, p) NUTS reference draws (:func:`validation.compare.stack_draws`)."""
    mean: np.ndarray
    """(p,) the agent's closed-form (claimed) posterior mean μ."""
    cov: np.ndarray
    """(p, p) the agent's closed-form posterior covariance Σ."""
    comparison: dict | None
    """``validation.compare.exact_comparison(...).to_dict()`` for an exact posterior, or None."""
    discrepancy: dict | None
    """``validation.compare.discrepancy(...)`` for an approximate posterior, or None."""
    gate: dict
    """``validation.diagnostics.GateReport.to_dict()`` of the reference draws."""


class _Panel(NamedTuple):
    """A validated :class:`CheckpointPanel` with float64 arrays."""

    checkpoint: int
    labels: list[str]
    draws: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    comparison: Mapping | None
    discrepancy: Mapping | None
    gate: Mapping


# --------------------------------------------------------------------------- inputs


def _check_panel(i: int, panel) -> _Panel:
    where = f"panels[{i}]"
    if not isinstance(panel, CheckpointPanel):
        raise ValueError(
            f"{where} is {type(panel).__name__}; expected a CheckpointPanel (or a dict of its "
            "fields)"
        )
    ck = panel.checkpoint
    if isinstance(ck, bool) or not isinstance(ck, int | np.integer) or ck < 0:
        raise ValueError(
            f"{where}.checkpoint is {ck!r}; expected a non-negative integer number of rounds"
        )
    draws = np.asarray(panel.draws, dtype=np.float64)
    if draws.ndim != 3:
        raise ValueError(f"{where}.draws has shape {draws.shape}; expected (chains, draws, p)")
    c, n, p = draws.shape
    if c < 1 or n < _MIN_DRAWS or p < 1:
        raise ValueError(
            f"{where}.draws has shape {draws.shape}; expected (chains, draws, p) with at least "
            f"1 chain, {_MIN_DRAWS} draws per chain and 1 coordinate"
        )
    if not np.all(np.isfinite(draws)):
        raise ValueError(f"{where}.draws has non-finite entries (NaN or inf); expected finite")
    if isinstance(panel.labels, str) or not isinstance(panel.labels, Sequence | np.ndarray):
        raise ValueError(f"{where}.labels is {type(panel.labels).__name__}; expected a list")
    labels = [str(v) for v in panel.labels]
    if len(labels) != p:
        raise ValueError(
            f"{where}.labels has {len(labels)} entries; expected p = {p} (draws.shape[-1])"
        )
    mean = np.asarray(panel.mean, dtype=np.float64)
    if mean.shape != (p,):
        raise ValueError(f"{where}.mean has shape {mean.shape}; expected ({p},) to match draws")
    cov = np.asarray(panel.cov, dtype=np.float64)
    if cov.shape != (p, p):
        raise ValueError(f"{where}.cov has shape {cov.shape}; expected ({p}, {p}) to match draws")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError(f"{where}.mean or {where}.cov has non-finite entries; expected finite")
    if np.any(np.diag(cov) <= 0):
        raise ValueError(
            f"{where}.cov has a non-positive diagonal entry (min {np.min(np.diag(cov)):.3g}); "
            "expected positive variances"
        )
    for name, value in (("comparison", panel.comparison), ("discrepancy", panel.discrepancy)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{where}.{name} is {type(value).__name__}; expected a dict or None")
    if panel.comparison is not None:
        z = panel.comparison.get("z_mean")
        if z is None or len(z) != p:
            raise ValueError(
                f"{where}.comparison has no z_mean of length p = {p}; expected "
                "exact_comparison(...).to_dict() of these draws"
            )
    if panel.discrepancy is not None:
        sme = panel.discrepancy.get("standardized_mean_error")
        if sme is not None and len(sme) != p:
            raise ValueError(
                f"{where}.discrepancy has standardized_mean_error of length {len(sme)}; "
                f"expected p = {p}"
            )
    if not isinstance(panel.gate, Mapping):
        raise ValueError(
            f"{where}.gate is {type(panel.gate).__name__}; expected GateReport.to_dict()"
        )
    return _Panel(
        int(ck), labels, draws, mean, cov, panel.comparison, panel.discrepancy, panel.gate
    )


def _as_panel(i: int, panel):
    """A mapping with the fields of :class:`CheckpointPanel` becomes one."""
    if isinstance(panel, Mapping) and not isinstance(panel, CheckpointPanel):
        fields = set(CheckpointPanel._fields)
        if set(panel) != fields:
            raise ValueError(
                f"panels[{i}] has keys {sorted(map(str, panel))}; expected the fields of "
                f"CheckpointPanel {sorted(fields)}"
            )
        return CheckpointPanel(**panel)
    return panel


def _check_audit(audit) -> None:
    if not isinstance(audit, Mapping):
        raise ValueError(f"audit is {type(audit).__name__}; expected a dict (the audit record)")
    for key in ("checks", "negative_controls"):
        entries = audit.get(key) or []
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise ValueError(f"audit[{key!r}] is {type(entries).__name__}; expected a list")
        for j, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"audit[{key!r}][{j}] is {entry!r}; expected a dict with a name")
    for j, check in enumerate(audit.get("checks") or []):
        if check.get("verdict") not in _VERDICTS:
            raise ValueError(
                f"audit['checks'][{j}]['verdict'] is {check.get('verdict')!r}; "
                f"expected one of {_VERDICTS}"
            )


# --------------------------------------------------------------------------- numbers


def _num(x) -> float:
    """A JSON number as float; ``None`` (a non-finite number in the record) becomes NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        x = float(x)
        if not math.isfinite(x):
            return str(x)
        return f"{x:.4g}"
    return str(x)


def _is_scalar(x) -> bool:
    return x is None or isinstance(x, str | bool | int | float | np.generic)


def _abs_or_inf(values) -> np.ndarray:
    """|values| with ``None`` or NaN (a failed, non-finite statistic) mapped to +inf."""
    a = np.array([_num(v) for v in values], dtype=np.float64)
    return np.where(np.isnan(a), np.inf, np.abs(a))


def _max_abs_z(comparison: Mapping) -> float:
    """Largest |z| over every test of an exact comparison (inf if any z is non-finite)."""
    zs = list(comparison.get("z_mean") or []) + list(comparison.get("z_sd") or [])
    zs += list(comparison.get("z_cross") or [])
    if "z_mahalanobis" in comparison:
        zs.append(comparison["z_mahalanobis"])
    return float(np.max(_abs_or_inf(zs))) if zs else math.nan


def _mean_scores(panel: _Panel) -> tuple[str, np.ndarray | None]:
    """Name and per-coordinate values of the score used to rank coordinates (or None)."""
    if panel.comparison is not None:
        return "z", np.array([_num(v) for v in panel.comparison["z_mean"]])
    if panel.discrepancy is not None and panel.discrepancy.get("standardized_mean_error"):
        sme = panel.discrepancy["standardized_mean_error"]
        return "SME", np.array([_num(v) for v in sme])
    return "", None


def _worst_first(score: np.ndarray | None, p: int, k: int) -> list[int]:
    """Indices of the ``k`` largest |score| (NaN counts as largest), else the first ``k``."""
    if score is None:
        return list(range(min(p, k)))
    key = np.where(np.isnan(score), np.inf, np.abs(score))
    return [int(i) for i in np.argsort(-key, kind="stable")[:k]]


def _rank_rhat(draws: np.ndarray) -> np.ndarray:
    """ArviZ rank-normalized split-R̂ of every coordinate of ``draws`` (chains, draws, p)."""
    with warnings.catch_warnings():
        # The shape was checked at the boundary; a short run may have more chains than draws.
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        ds = az.convert_to_dataset(draws)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = az.rhat(ds, method="rank")["x"].values
    return np.asarray(r, dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------- figures


def _mpl_text(s: str) -> str:
    """Text safe for matplotlib: a ``$`` would otherwise start mathtext."""
    return s.replace("$", r"\$")


def _save(fig, path: Path) -> None:
    with warnings.catch_warnings():
        # A label with a character the font lacks must not stop the report.
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.savefig(path, dpi=100)


def _grid(plt, k: int, ncols: int, width: float, height: float):
    ncols = max(1, min(ncols, k))
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(width * ncols, _MIN_FIGURE_WIDTH), height * nrows),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[k:]:
        ax.set_visible(False)
    return fig, flat[:k]


def _plot_rank(plt, panel: _Panel, path: Path) -> None:
    c, n, p = panel.draws.shape
    rhat = _rank_rhat(panel.draws)
    idx = sorted(_worst_first(rhat, p, MAX_RANK_COORDINATES)) if p > MAX_RANK_COORDINATES else []
    idx = idx or list(range(p))
    bins = int(np.clip(n // 25, 5, 20))
    expected = n / bins
    lo, hi = binom.ppf([(1 - RANK_BAND_LEVEL) / 2, (1 + RANK_BAND_LEVEL) / 2], n, 1.0 / bins)
    lo, hi = lo / expected, hi / expected
    gap = max(2.0, 1.2 * hi)
    fig, axes = _grid(plt, len(idx), 4, 3.2, 0.55 * c + 1.2)
    edges = np.linspace(0.5, c * n + 0.5, bins + 1)
    for ax, j in zip(axes, idx, strict=True):
        ranks = rankdata(panel.draws[..., j].reshape(-1), method="average").reshape(c, n)
        for chain in range(c):
            counts, _ = np.histogram(ranks[chain], bins=edges)
            base = chain * gap
            ax.axhspan(base + lo, base + hi, color="0.85", lw=0)
            ax.bar(
                edges[:-1],
                counts / expected,
                width=np.diff(edges),
                bottom=base,
                align="edge",
                color=f"C{chain % 10}",
                alpha=0.8,
            )
            ax.axhline(base + 1.0, color="k", ls="--", lw=0.7)
        ax.set_yticks([k * gap + 1.0 for k in range(c)], [str(k) for k in range(c)])
        ax.set_ylabel("chain")
        ax.set_xlabel("rank (all chains)")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(_mpl_text(f"{panel.labels[j]}  R-hat {_fmt(float(rhat[j]))}"), fontsize=9)
    fig.suptitle(
        f"Rank plots of the reference chains, {panel.checkpoint} rounds "
        f"(band: pointwise {RANK_BAND_LEVEL:.0%} under uniformity)",
        fontsize=10,
    )
    _save(fig, path)
    plt.close(fig)


def _plot_density(plt, panel: _Panel, idx: list[int], path: Path) -> None:
    name, score = _mean_scores(panel)
    fig, axes = _grid(plt, len(idx), 4, 3.0, 2.5)
    flat = panel.draws.reshape(-1, panel.draws.shape[-1])
    for ax, j in zip(axes, idx, strict=True):
        x = flat[:, j]
        mu, sd = panel.mean[j], math.sqrt(panel.cov[j, j])
        ax.hist(x, bins=40, density=True, color="C0", alpha=0.5, label="NUTS")
        lo = min(float(x.min()), mu - 4.0 * sd)
        hi = max(float(x.max()), mu + 4.0 * sd)
        grid = np.linspace(lo, hi, 400)
        ax.plot(grid, norm.pdf(grid, mu, sd), color="C3", lw=1.5, label="closed form")
        ax.axvline(mu, color="C3", lw=0.8, ls=":")
        title = panel.labels[j]
        if score is not None:
            title += f"  {name} = {_fmt(float(score[j]))}"
        ax.set_title(_mpl_text(title), fontsize=9)
        ax.set_yticks([])
    axes[0].legend(fontsize=7)
    what = {"z": "|z| of the mean", "SME": "|standardized mean error|"}.get(name)
    order = f", largest {what} first" if what else ""
    fig.suptitle(
        f"NUTS draws vs closed-form marginals N(mean_j, cov_jj), {panel.checkpoint} rounds{order}",
        fontsize=10,
    )
    _save(fig, path)
    plt.close(fig)


def _set_rounds_axis(ax, checkpoints: list[int]) -> None:
    lo, hi = min(checkpoints), max(checkpoints)
    if hi > 10 * max(lo, 1):
        if lo > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=-0.3)  # no negative numbers of rounds
    ax.set_xlabel("rounds")


def _plot_discrepancy(plt, panels: list[_Panel], path: Path) -> bool:
    """Statistics against the number of rounds; False (nothing written) under 2 points."""
    exact = [q for q in panels if q.comparison is not None]
    approx = [q for q in panels if q.discrepancy is not None]
    plots = []
    if len(approx) >= 2:
        ck = [q.checkpoint for q in approx]
        d = [q.discrepancy for q in approx]
        plots.append(("sme", ck, d))
        plots.append(("sd_ratio", ck, d))
        plots.append(("w2", ck, d))
        energy = [_num(x.get("energy_distance")) for x in d]
        if any(math.isfinite(e) for e in energy):
            plots.append(("energy", ck, d))
    if len(exact) >= 2:
        plots.append(("z", [q.checkpoint for q in exact], [q.comparison for q in exact]))
    if not plots:
        return False
    fig, axes = _grid(plt, len(plots), 3, 3.8, 3.0)
    for ax, (kind, ck, stats) in zip(axes, plots, strict=True):
        if kind == "sme":
            y = [_num(s.get("max_abs_standardized_mean_error")) for s in stats]
            floor = [
                float(np.max(_abs_or_inf(s.get("standardized_mean_error_mcse") or [math.nan])))
                for s in stats
            ]
            ax.plot(ck, y, "o-", color="C0", label="closed form")
            ax.plot(ck, floor, "--", color="0.5", label="MCSE (noise floor)")
            ax.set_title("max |standardized mean error|", fontsize=9)
            ax.set_ylabel("reference posterior sd")
            ax.legend(fontsize=7)
        elif kind == "sd_ratio":
            ratios = [np.array([_num(v) for v in s.get("sd_ratio") or [math.nan]]) for s in stats]
            rmin = [float(np.nanmin(r)) if np.any(np.isfinite(r)) else math.nan for r in ratios]
            rmax = [float(np.nanmax(r)) if np.any(np.isfinite(r)) else math.nan for r in ratios]
            ax.fill_between(ck, rmin, rmax, color="C1", alpha=0.3, label="min to max")
            ax.plot(ck, rmin, "o-", color="C1", ms=3)
            ax.plot(ck, rmax, "o-", color="C1", ms=3)
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
            ax.set_title("sd ratio (NUTS / closed form), range", fontsize=9)
            ax.legend(fontsize=7)
        elif kind == "w2":
            ax.plot(ck, [_num(s.get("w2")) for s in stats], "o-", color="C2", label="W2")
            mean_part = [_num(s.get("w2_mean_part")) for s in stats]
            if any(math.isfinite(v) for v in mean_part):
                ax.plot(ck, mean_part, "--", color="C2", alpha=0.6, label="mean part")
            ax.set_title("Gaussian 2-Wasserstein distance", fontsize=9)
            ax.legend(fontsize=7)
        elif kind == "energy":
            ax.plot(ck, [_num(s.get("energy_distance")) for s in stats], "o-", color="C4")
            ax.axhline(0.0, color="k", ls="--", lw=0.8)
            ax.set_title("energy distance", fontsize=9)
        else:
            z = [_max_abs_z(s) for s in stats]
            finite = [v for v in z if math.isfinite(v)]
            cap = 2.0 * max(finite) if finite else 10.0
            shown = [v if math.isfinite(v) else cap for v in z]
            crit = [_num(s.get("critical_value")) for s in stats]
            ax.plot(ck, shown, "o-", color="C0", label="max |z| over all tests")
            ax.plot(ck, crit, "s--", color="C3", label="Bonferroni critical value")
            if len(finite) < len(z):
                ax.plot(
                    [c for c, v in zip(ck, z, strict=True) if not math.isfinite(v)],
                    [cap] * (len(z) - len(finite)),
                    "x",
                    color="k",
                    label="non-finite z (fails)",
                )
            levels = [v for v in shown + crit if math.isfinite(v) and v > 0]
            if levels and max(levels) > 100.0 * min(levels):
                ax.set_yscale("log")
            ax.set_title("closed form vs NUTS: max |z|", fontsize=9)
            ax.legend(fontsize=7)
        _set_rounds_axis(ax, ck)
    fig.suptitle("Closed form vs NUTS reference against the number of rounds", fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#070;font-weight:bold}
.fail{color:#b00;font-weight:bold}.report{color:#036}img{max-width:100%}
footer{margin-top:2em;border-top:1px solid #ccc;font-size:.9em;color:#444}
code{background:#f4f4f4;padding:0 .2em}"""


def _e(x) -> str:
    return html.escape(_fmt(x) if not isinstance(x, str) else x)


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    """An HTML table; ``header`` is escaped here, cells must already be HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _scalars(d: Mapping | None, skip: Sequence[str] = (), limit: int | None = None) -> str:
    """The scalar entries of ``d`` as escaped ``key = value`` text, those named in
    :data:`_KEY_STATISTICS` first; a list of strings is joined, other entries are omitted."""
    if not isinstance(d, Mapping) or not d:
        return ""
    keys = [k for k in _KEY_STATISTICS if k in d] + [k for k in d if k not in _KEY_STATISTICS]
    parts = []
    for k in keys:
        v = d[k]
        if k in skip:
            continue
        if isinstance(v, list | tuple) and v and all(isinstance(x, str) for x in v):
            text = "; ".join(v[:5]) + (f" and {len(v) - 5} more" if len(v) > 5 else "")
        elif _is_scalar(v):
            text = _fmt(v)
        else:
            continue
        parts.append(f"{html.escape(str(k))} = {html.escape(text)}")
    shown = parts if limit is None else parts[:limit]
    more = (
        f"; ({len(parts) - len(shown)} more in the audit record)" if len(shown) < len(parts) else ""
    )
    return "; ".join(shown) + more


def _verdict_cell(verdict: str) -> str:
    cls = verdict if verdict in _VERDICTS else "report"
    return f"<span class='{cls}'>{html.escape(verdict)}</span>"


def _checks_html(audit: Mapping) -> str:
    checks = audit.get("checks") or []
    if not checks:
        return "<p>No checks in this audit.</p>"
    rows = [
        [
            _e(str(c["name"])),
            _e(c.get("checkpoint")),
            _verdict_cell(str(c["verdict"])),
            _scalars(c.get("statistics"), skip=("verdict", "passed"), limit=_MAX_STATISTICS),
        ]
        for c in checks
    ]
    return _table(["check", "checkpoint (rounds)", "verdict", "key statistics"], rows)


def _controls_html(audit: Mapping) -> str:
    controls = audit.get("negative_controls") or []
    if not controls:
        return "<p class='fail'>No negative controls: a check that cannot fail is a defect.</p>"
    rows = []
    for c in controls:
        rejected = c.get("rejected")
        if rejected is None:
            cell = "<span class='report'>n/a</span>"
        elif rejected:
            cell = "<span class='pass'>rejected</span>"
        else:
            cell = "<span class='fail'>NOT rejected</span>"
        rows.append(
            [
                _e(str(c["name"])),
                _e(c.get("checkpoint")),
                cell,
                _scalars(c, skip=("name", "checkpoint", "rejected")),
            ]
        )
    return _table(["negative control", "checkpoint (rounds)", "rejected", "details"], rows)


def _reference_gates(audit: Mapping) -> dict[int, Mapping]:
    """Per-checkpoint gate reports recorded in ``audit["reference"]``, by checkpoint.

    Understood layouts: ``{"checkpoints": [{"checkpoint": t, "diagnostics": gate}, ...]}``
    or ``{"diagnostics": {t: gate, ...}}``; anything else gives no entries.
    """
    reference = audit.get("reference")
    if not isinstance(reference, Mapping):
        return {}
    out: dict[int, Mapping] = {}
    entries = reference.get("checkpoints")
    if isinstance(entries, Sequence) and not isinstance(entries, str):
        for e in entries:
            if isinstance(e, Mapping) and isinstance(e.get("diagnostics"), Mapping):
                try:
                    out[int(e["checkpoint"])] = e["diagnostics"]
                except (KeyError, TypeError, ValueError):
                    continue
    diagnostics = reference.get("diagnostics")
    if isinstance(diagnostics, Mapping):
        for t, gate in diagnostics.items():
            if isinstance(gate, Mapping) and "gates" in gate:
                try:
                    out.setdefault(int(t), gate)
                except (TypeError, ValueError):
                    continue
    return out


def _gate_html(checkpoint: int, gate: Mapping) -> str:
    gates = gate.get("gates") or []
    accepted = gate.get("accepted")
    verdict = (
        "<span class='pass'>accepted</span>" if accepted else "<span class='fail'>refused</span>"
    )
    head = (
        f"<h3>{checkpoint} rounds: reference {verdict}</h3>"
        f"<p>{_e(gate.get('num_chains'))} chains x {_e(gate.get('num_draws'))} draws; "
        f"variables {_e(', '.join(str(v) for v in gate.get('var_names') or []))}</p>"
    )
    if not gates:
        return head + "<p>No gate results in this report.</p>"
    rows = []
    for g in gates:
        passed = bool(g.get("passed"))
        rows.append(
            [
                _e(str(g.get("name"))),
                _e(g.get("value")),
                _e(str(g.get("coordinate", "-"))),
                _e(f"{g.get('comparison', '')} {_fmt(g.get('threshold'))}".strip()),
                f"<span class='{'pass' if passed else 'fail'}'>{'yes' if passed else 'NO'}</span>",
                _e(str(g.get("source", ""))),
            ]
        )
    table = _table(["gate", "value", "at", "threshold", "passed", "source"], rows)
    advice = gate.get("advice") or []
    if advice:
        table += "<ul>" + "".join(f"<li>{_e(str(a))}</li>" for a in advice) + "</ul>"
    return head + table


def _comparison_html(panels: list[_Panel]) -> str:
    out = []
    exact = [q for q in panels if q.comparison is not None]
    if exact:
        rows = []
        for q in exact:
            s = q.comparison
            failed = [str(f) for f in s.get("failed") or []]
            more = f" and {len(failed) - 20} more" if len(failed) > 20 else ""
            shown = ", ".join(failed[:20]) + more
            rows.append(
                [
                    _e(q.checkpoint),
                    _verdict_cell(str(s.get("verdict", "report"))),
                    _e(_max_abs_z(s)),
                    _e(s.get("critical_value")),
                    _e(s.get("num_tests")),
                    _e(s.get("alpha")),
                    _e(s.get("p_value")),
                    _e(shown or "-"),
                ]
            )
        out.append("<h3>Exact comparison (Bonferroni over all tests)</h3>")
        out.append(
            _table(
                [
                    "rounds",
                    "verdict",
                    "max |z|",
                    "critical |z|",
                    "tests m",
                    "family-wise alpha",
                    "adjusted p",
                    "failed tests",
                ],
                rows,
            )
        )
    approx = [q for q in panels if q.discrepancy is not None]
    if approx:
        rows = []
        for q in approx:
            s = q.discrepancy
            ratio = np.array([_num(v) for v in s.get("sd_ratio") or []])
            finite = ratio[np.isfinite(ratio)]
            rng = f"{_fmt(finite.min())} to {_fmt(finite.max())}" if finite.size else "n/a"
            rows.append(
                [
                    _e(q.checkpoint),
                    _e(s.get("max_abs_standardized_mean_error")),
                    _e(rng),
                    _e(s.get("w2")),
                    _e(s.get("energy_distance")),
                ]
            )
        out.append("<h3>Discrepancy of the approximation (no verdict)</h3>")
        out.append(
            _table(
                ["rounds", "max |standardized mean error|", "sd ratio", "W2", "energy distance"],
                rows,
            )
        )
    return "".join(out)


def _coordinates_html(panel: _Panel, idx: list[int]) -> str:
    c = panel.comparison
    d = panel.discrepancy
    flat = panel.draws.reshape(-1, panel.draws.shape[-1])
    mean_mcmc = flat.mean(axis=0)
    sd_mcmc = flat.std(axis=0)
    header = ["coordinate", "closed-form mean", "NUTS mean", "closed-form sd", "NUTS sd"]
    if c is not None:
        header += ["z (mean)", "sd ratio", "z (sd)"]
    elif d is not None:
        header += ["standardized mean error", "sd ratio"]
    rows = []
    for j in idx:
        row = [
            _e(panel.labels[j]),
            _e(float(panel.mean[j])),
            _e(float(mean_mcmc[j])),
            _e(math.sqrt(panel.cov[j, j])),
            _e(float(sd_mcmc[j])),
        ]
        if c is not None:
            row += [_e(_pick(c, "z_mean", j)), _e(_pick(c, "sd_ratio", j)), _e(_pick(c, "z_sd", j))]
        elif d is not None:
            row += [_e(_pick(d, "standardized_mean_error", j)), _e(_pick(d, "sd_ratio", j))]
        rows.append(row)
    return _table(header, rows)


def _pick(d: Mapping, key: str, j: int):
    values = d.get(key)
    if values is None or j >= len(values):
        return None
    return values[j]


def _figure_html(name: str, caption: str) -> str:
    src = html.escape(name)
    return (
        f"<figure><img src='{src}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _provenance_html(audit: Mapping) -> str:
    versions = audit.get("versions") or {}
    if isinstance(versions, Mapping):
        vtext = ", ".join(f"{k} {_fmt(v)}" for k, v in versions.items())
    else:
        vtext = _fmt(versions)
    wall = audit.get("wall_seconds")
    wall_text = f"{_num(wall):.1f} s" if math.isfinite(_num(wall)) else "n/a"
    return (
        "<footer><h2>Provenance</h2>"
        f"<p>command: <code>{_e(str(audit.get('command', 'n/a')))}</code></p>"
        f"<p>seed: {_e(audit.get('seed'))}</p>"
        f"<p>versions: {html.escape(vtext) or 'n/a'}</p>"
        f"<p>wall time: {html.escape(wall_text)}</p></footer>"
    )


def _page(audit: Mapping, sections: list[str]) -> str:
    agent = str(audit.get("agent", "agent"))
    model = str(audit.get("model", "model"))
    title = f"Audit: {agent} on {model}"
    checks = audit.get("checks") or []
    counts = {v: sum(c["verdict"] == v for c in checks) for v in _VERDICTS}
    controls = audit.get("negative_controls") or []
    rejected = sum(bool(c.get("rejected")) for c in controls)
    applicable = sum(c.get("rejected") is not None for c in controls)
    not_applicable = len(controls) - applicable
    summary = (
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['report']} reported "
        f"(no verdict); {rejected} of {applicable} negative controls rejected"
        + (f" ({not_applicable} not applicable)." if not_applicable else ".")
    )
    overall = audit.get("verdict")
    if overall is not None:
        summary = f"Overall verdict: {overall}. " + summary
    reference = audit.get("reference") or {}
    ref_ok = reference.get("accepted") if isinstance(reference, Mapping) else None
    ref_text = {True: "accepted", False: "REFUSED", None: "n/a"}.get(
        bool(ref_ok) if ref_ok is not None else None
    )
    ref_extra = _scalars(reference, skip=("accepted",)) if isinstance(reference, Mapping) else ""
    settings = audit.get("settings") or {}
    settings_html = (
        _table(["setting", "value"], [[_e(str(k)), _e(v)] for k, v in settings.items()])
        if isinstance(settings, Mapping) and settings
        else ""
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(summary)}</p>\n"
        f"<p>NUTS reference: {html.escape(ref_text)}"
        f"{'; ' + ref_extra if ref_extra else ''}</p>\n"
        f"{settings_html}\n<h2>Verdicts</h2>\n{_checks_html(audit)}\n"
        f"<h2>Negative controls</h2>\n{_controls_html(audit)}\n"
        + "".join(sections)
        + _provenance_html(audit)
        + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- main


def write_audit_report(audit: dict, panels: list[CheckpointPanel], out_dir) -> Path:
    r"""Write the figures and the HTML page of an audit; return the path of ``report.html``.

    For each checkpoint, ``rank_<checkpoint>.png`` shows rank plots of the reference chains
    for up to :data:`MAX_RANK_COORDINATES` coordinates (those with the largest ArviZ
    rank-normalized split-R̂ when there are more), and ``density_<checkpoint>.png`` shows,
    for up to :data:`MAX_DENSITY_COORDINATES` coordinates, a histogram of the NUTS draws
    under the claimed marginal density :math:`\mathcal{N}(\mu_j, \Sigma_{jj})`, titled with
    the label and the z-score :math:`z_j = (\mu_j - \hat m_j)/\mathrm{MCSE}(\hat m_j)`.
    The coordinates shown are those with the largest :math:`|z_j|` from
    ``panel.comparison``, else the largest standardized mean errors from
    ``panel.discrepancy``, else the first ones.

    ``discrepancy.png`` is written when at least two checkpoints carry statistics: for
    approximate posteriors, the largest absolute standardized mean error (MCSE as noise
    floor), the range of sd ratios, the Gaussian :math:`W_2` and the energy distance; for
    exact posteriors, the largest :math:`|z|` over all tests against the Bonferroni
    critical value. The rounds axis is logarithmic when the checkpoints span more than a
    factor 10 (symmetric-log when a checkpoint is 0).

    ``report.html`` holds a title (agent on model), the verdict table, per-checkpoint
    statistics and worst coordinates, the reference gate tables (from the panels, and from
    ``audit["reference"]["checkpoints"]`` for a checkpoint without a panel, e.g. a refused
    reference), the negative-control table, the figures and a provenance footer. Files of
    an earlier report in ``out_dir`` that this one does not write are left alone and not
    referenced.

    Parameters
    ----------
    audit : dict
        JSON-ready audit record with keys ``model, agent, settings, reference`` (with
        ``accepted``), ``checks`` (each ``{name, checkpoint, verdict, statistics}`` with
        verdict ``"pass"``, ``"fail"`` or ``"report"``), ``negative_controls`` (each
        ``{name, checkpoint, rejected, ...}``; ``rejected`` None means not applicable),
        ``wall_seconds, command, seed, versions``. Missing keys are shown as ``n/a``.
    panels : list of CheckpointPanel
        One per checkpoint, with distinct checkpoints; may be empty. A dict with exactly
        the fields of :class:`CheckpointPanel` is accepted in place of one.
    out_dir : str or path-like
        Directory of the report; created if needed.

    Returns
    -------
    pathlib.Path
        ``out_dir / "report.html"``.

    Raises
    ------
    ValueError
        If ``audit`` is not a dict or has a malformed check or control, if two panels have
        the same checkpoint, or if a panel is malformed: ``draws`` not 3-D (or with fewer
        than 4 draws per chain, or non-finite), ``labels`` not of length p, ``mean`` not of
        shape (p,), ``cov`` not (p, p) with a positive diagonal, ``comparison`` or
        ``discrepancy`` not of this dimension, ``gate`` not a dict. The message names the
        argument.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import arviz as az
    >>> from validation.compare import exact_comparison
    >>> from validation.diagnostics import check_gates
    >>> rng = np.random.default_rng(0)
    >>> draws = rng.normal(size=(4, 200, 2))
    >>> idata = az.from_dict(
    ...     posterior={"psi": draws},
    ...     sample_stats={"diverging": np.zeros((4, 200), bool),
    ...                   "energy": rng.normal(size=(4, 200))},
    ... )
    >>> comparison = exact_comparison(draws, np.zeros(2), np.eye(2)).to_dict()
    >>> panel = CheckpointPanel(
    ...     checkpoint=50, labels=["psi[0]", "psi[1]"], draws=draws, mean=np.zeros(2),
    ...     cov=np.eye(2), comparison=comparison, discrepancy=None,
    ...     gate=check_gates(idata).to_dict(),
    ... )
    >>> audit = {"model": "normal", "agent": "exact", "checks": [
    ...     {"name": "closed form vs NUTS", "checkpoint": 50,
    ...      "verdict": comparison["verdict"], "statistics": {"p_value": 0.5}}]}
    >>> with tempfile.TemporaryDirectory() as out:
    ...     path = write_audit_report(audit, [panel], out)
    ...     print(path.name, sorted(p.name for p in path.parent.iterdir()))
    report.html ['density_50.png', 'rank_50.png', 'report.html']
    """
    _check_audit(audit)
    if isinstance(panels, CheckpointPanel) or not isinstance(panels, Sequence):
        raise ValueError(f"panels is {type(panels).__name__}; expected a list of CheckpointPanel")
    checked = [_check_panel(i, _as_panel(i, q)) for i, q in enumerate(panels)]
    seen: dict[int, int] = {}
    for i, q in enumerate(checked):
        if q.checkpoint in seen:
            raise ValueError(
                f"panels[{i}].checkpoint is {q.checkpoint}, the same as "
                f"panels[{seen[q.checkpoint]}].checkpoint; expected one panel per checkpoint"
            )
        seen[q.checkpoint] = i
    checked.sort(key=lambda q: q.checkpoint)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sections: list[str] = []
    if checked:
        sections.append("<h2>Closed form vs NUTS, per checkpoint</h2>")
        sections.append(_comparison_html(checked) or "<p>No comparison statistics.</p>")
        if len(checked) >= 2 and _plot_discrepancy(plt, checked, out / "discrepancy.png"):
            sections.append(
                _figure_html("discrepancy.png", "Statistics against the number of rounds")
            )
    # Gates of every checkpoint: from the panels, and from the audit record for checkpoints
    # without a panel (a refused reference has no draws to compare, but its gates matter).
    gates = _reference_gates(audit)
    gates.update({q.checkpoint: q.gate for q in checked})
    if gates:
        sections.append("<h2>Reference gates</h2>")
        sections.extend(_gate_html(t, gates[t]) for t in sorted(gates))
    for q in checked:
        p = q.draws.shape[-1]
        _, score = _mean_scores(q)
        idx = _worst_first(score, p, MAX_DENSITY_COORDINATES)
        rank_name, density_name = f"rank_{q.checkpoint}.png", f"density_{q.checkpoint}.png"
        _plot_rank(plt, q, out / rank_name)
        _plot_density(plt, q, idx, out / density_name)
        sections.append(f"<h2>{q.checkpoint} rounds</h2>")
        sections.append(
            f"<p>{q.draws.shape[0]} chains x {q.draws.shape[1]} draws, p = {p}; "
            f"{len(idx)} coordinate{'s' if len(idx) != 1 else ''} shown.</p>"
        )
        sections.append(_coordinates_html(q, idx))
        sections.append(
            _figure_html(density_name, f"NUTS draws vs closed form, {q.checkpoint} rounds")
        )
        sections.append(
            _figure_html(rank_name, f"Rank plots of the reference, {q.checkpoint} rounds")
        )

    path = out / "report.html"
    path.write_text(_page(audit, sections), encoding="utf-8")
    return path
