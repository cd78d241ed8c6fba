r"""Acceptance gate for an MCMC reference: ArviZ diagnostics against published thresholds.

A NUTS run is accepted as ground truth only if every gate below passes for every
coordinate of every checked variable (vector and matrix variables are flattened
row-major); otherwise it is refused and the report says what to try.

========================  =========================  ====================================
gate                      accepted when              source
========================  =========================  ====================================
``chains``                :math:`M \ge 4`            Vehtari et al. (2021)
``r_hat``                 :math:`\hat R \le 1.01`    Vehtari et al. (2021)
``ess_bulk``              :math:`\ge 400`            Vehtari et al. (2021)
``ess_tail``              :math:`\ge 400`            Vehtari et al. (2021)
``divergences``           :math:`= 0`                Betancourt (2017)
``e_bfmi``                :math:`\ge 0.3` per chain  Betancourt (2016)
========================  =========================  ====================================

:math:`\hat R` is the rank-normalized split-:math:`\hat R` (the maximum of the bulk and
folded versions), bulk ESS is the ESS of the rank-normalized draws and tail ESS the
smaller of the ESS of the 5 % and 95 % quantile indicators. E-BFMI of chain :math:`c` with
energies :math:`E_1, \dots, E_N` is

.. math::

    \mathrm{E\text{-}BFMI}_c = \frac{\sum_{n=2}^{N} (E_n - E_{n-1})^2}
                                   {\sum_{n=1}^{N} (E_n - \bar E)^2}.

Every diagnostic is computed by ArviZ (``az.rhat(method="rank")``, ``az.ess(method="bulk")``
and ``"tail"``, ``az.bfmi``) on float64 copies of the draws; divergences are read from
``sample_stats.diverging``. A gate that cannot be evaluated (a missing ``sample_stats``
variable, a NaN diagnostic) fails: a reference that cannot be checked is not used.

References
----------
Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021). Rank-normalization, folding, and
localization: an improved R̂ for assessing convergence of MCMC. Bayesian Analysis 16(2).
Betancourt (2016). Diagnosing suboptimal cotangent disintegrations in Hamiltonian Monte
Carlo. arXiv:1604.00695.
Betancourt (2017). A conceptual introduction to Hamiltonian Monte Carlo. arXiv:1701.02434.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import (once a day);
    # the project pins arviz<1, so the notice is not actionable here.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "EBFMI_MIN",
    "ESS_BULK_MIN",
    "ESS_TAIL_MIN",
    "GATE_NAMES",
    "MAX_DIVERGENCES",
    "MIN_CHAINS",
    "RHAT_MAX",
    "GateReport",
    "GateResult",
    "check_gates",
    "coordinate_labels",
]

#: At least four chains, as recommended by Vehtari et al. (2021); R̂ compares chains and
#: needs several to detect non-convergence.
MIN_CHAINS: int = 4
#: Rank-normalized split-R̂ at most 1.01 for every coordinate (Vehtari et al. 2021).
RHAT_MAX: float = 1.01
#: Bulk ESS at least 400, i.e. 100 per chain for 4 chains (Vehtari et al. 2021).
ESS_BULK_MIN: float = 400.0
#: Tail ESS (5 % and 95 % quantiles) at least 400 (Vehtari et al. 2021).
ESS_TAIL_MIN: float = 400.0
#: No divergent transitions after warmup: a divergence signals curvature the integrator
#: cannot follow, which biases the draws (Betancourt 2017).
MAX_DIVERGENCES: int = 0
#: E-BFMI at least 0.3 in every chain; lower values mean momentum resampling cannot
#: explore the energy distribution (Betancourt 2016).
EBFMI_MIN: float = 0.3

_VEHTARI = "Vehtari et al. 2021"
_SOURCES = {
    "chains": _VEHTARI,
    "r_hat": _VEHTARI,
    "ess_bulk": _VEHTARI,
    "ess_tail": _VEHTARI,
    "divergences": "Betancourt 2017",
    "e_bfmi": "Betancourt 2016",
}
#: Order in which the gates are reported.
GATE_NAMES = ("chains", "r_hat", "ess_bulk", "ess_tail", "divergences", "e_bfmi")


class GateResult(NamedTuple):
    """The outcome of one gate, evaluated at its worst coordinate or chain."""

    name: str
    """Gate name, one of ``chains, r_hat, ess_bulk, ess_tail, divergences, e_bfmi``."""
    value: float
    """Worst value over all coordinates (R̂: largest; ESS: smallest), the total number of
    divergences, the smallest E-BFMI over chains, or the number of chains; NaN when the
    diagnostic could not be computed."""
    coordinate: str
    """Where the worst value occurs: ``"theta[1, 0]"``, ``"chain 2"``, or ``"-"``; the
    reason when the gate could not be evaluated."""
    threshold: float
    """The published threshold the value is compared with."""
    comparison: str
    """``"<="`` or ``">="``: the gate passes when ``value comparison threshold``."""
    passed: bool
    """Whether the gate passed (a NaN value never passes)."""
    source: str
    """The paper the threshold comes from."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; a non-finite value is written as ``None``."""
        value = float(self.value)
        return {
            "name": self.name,
            "value": value if math.isfinite(value) else None,
            "coordinate": self.coordinate,
            "threshold": float(self.threshold),
            "comparison": self.comparison,
            "passed": bool(self.passed),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        """Inverse of :meth:`to_dict` (``None`` becomes NaN)."""
        value = d["value"]
        return cls(
            name=str(d["name"]),
            value=float("nan") if value is None else float(value),
            coordinate=str(d["coordinate"]),
            threshold=float(d["threshold"]),
            comparison=str(d["comparison"]),
            passed=bool(d["passed"]),
            source=str(d["source"]),
        )


@dataclass(frozen=True)
class GateReport:
    """Verdict of :func:`check_gates`: every gate with its worst value, and advice.

    ``str(report)`` is a readable table; :meth:`to_dict` is JSON-ready.
    """

    accepted: bool
    """True when every gate passed."""
    gates: list[GateResult]
    """One result per gate, in the order of ``GATE_NAMES``."""
    advice: list[str]
    """What to try, one line per failed gate (empty when accepted)."""
    var_names: list[str] = field(default_factory=list)
    """The posterior variables that were checked."""
    num_chains: int = 0
    """Number of chains in the posterior."""
    num_draws: int = 0
    """Number of draws per chain."""

    @property
    def failed(self) -> list[GateResult]:
        """The gates that failed."""
        return [g for g in self.gates if not g.passed]

    def gate(self, name: str) -> GateResult:
        """The result of the gate called ``name``."""
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(f"name is {name!r}; expected one of {[g.name for g in self.gates]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the verdict, thresholds, gate results and advice."""
        return {
            "accepted": bool(self.accepted),
            "var_names": list(self.var_names),
            "num_chains": int(self.num_chains),
            "num_draws": int(self.num_draws),
            "gates": [g.to_dict() for g in self.gates],
            "advice": list(self.advice),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            accepted=bool(d["accepted"]),
            gates=[GateResult.from_dict(g) for g in d["gates"]],
            advice=[str(a) for a in d["advice"]],
            var_names=[str(v) for v in d.get("var_names", [])],
            num_chains=int(d.get("num_chains", 0)),
            num_draws=int(d.get("num_draws", 0)),
        )

    def __str__(self) -> str:
        rows = [("gate", "worst value", "at", "threshold", "passed", "source")]
        for g in self.gates:
            rows.append(
                (
                    g.name,
                    _fmt(g.value),
                    g.coordinate,
                    f"{g.comparison} {_fmt(g.threshold)}",
                    "yes" if g.passed else "NO",
                    g.source,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        n_failed = len(self.failed)
        verdict = (
            "ACCEPTED (all gates passed)"
            if self.accepted
            else f"REFUSED ({n_failed} of {len(self.gates)} gates failed)"
        )
        head = (
            f"MCMC reference gate: {self.num_chains} chains x {self.num_draws} draws, "
            f"variables {', '.join(self.var_names)}"
        )
        out = [head, *lines, f"verdict: {verdict}"]
        if self.advice:
            out.append("advice:")
            out.extend(f"  - {a}" for a in self.advice)
        return "\n".join(out)


def _fmt(x: float) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else str(x)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.5g}"


def coordinate_labels(da) -> list[str]:
    """Labels of the flattened (row-major) coordinates of a DataArray without chain/draw."""
    name = str(da.name)
    if da.ndim == 0:
        return [name]
    coords = [da.coords[d].values if d in da.coords else np.arange(da.sizes[d]) for d in da.dims]
    labels = []
    for idx in np.ndindex(*da.shape):
        parts = ", ".join(str(c[i]) for c, i in zip(coords, idx, strict=True))
        labels.append(f"{name}[{parts}]")
    return labels


def _worst(ds, var_names: Sequence[str], largest: bool) -> tuple[float, str]:
    """The worst value over all coordinates of ``ds`` and its label (NaN counts as worst)."""
    worst_value, worst_label = None, "-"
    for name in var_names:
        da = ds[name]
        values = np.asarray(da.values, dtype=np.float64).ravel()
        labels = coordinate_labels(da)
        for v, label in zip(values, labels, strict=True):
            if math.isnan(v):
                return float("nan"), label
            if worst_value is None or (v > worst_value if largest else v < worst_value):
                worst_value, worst_label = float(v), label
    if worst_value is None:
        return float("nan"), "no coordinates"
    return worst_value, worst_label


def _passes(value: float, comparison: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value <= threshold if comparison == "<=" else value >= threshold


def _result(name: str, value: float, coordinate: str, threshold: float, comparison: str):
    return GateResult(
        name=name,
        value=float(value),
        coordinate=coordinate,
        threshold=float(threshold),
        comparison=comparison,
        passed=_passes(float(value), comparison, float(threshold)),
        source=_SOURCES[name],
    )


def _advice(gate: GateResult, num_draws: int) -> str:
    v, at = gate.value, gate.coordinate
    if gate.name == "chains":
        return (
            f"Only {_fmt(v)} chains: run more chains (num_chains >= {MIN_CHAINS}) from "
            "dispersed initial values; R-hat needs several chains to detect non-convergence."
        )
    if gate.name == "r_hat":
        return (
            f"R-hat = {_fmt(v)} at {at} exceeds {RHAT_MAX}: the chains disagree. Run longer "
            "with more warmup and more draws (e.g. double num_warmup and num_samples); if it "
            "persists, look for multimodality or use the non-centred parameterisation."
        )
    if gate.name in ("ess_bulk", "ess_tail"):
        kind = "Bulk" if gate.name == "ess_bulk" else "Tail"
        target = gate.threshold
        if math.isfinite(v) and v > 0:
            suggest = math.ceil(1.2 * num_draws * target / v)
            how = f"about {suggest} per chain instead of {num_draws}"
        else:
            how = f"many more than {num_draws} per chain"
        return (
            f"{kind} ESS = {_fmt(v)} at {at} is below {_fmt(target)}: take more draws "
            f"(num_samples: {how}); more warmup helps when the step size or mass matrix "
            "is poorly adapted."
        )
    if gate.name == "divergences":
        if math.isnan(v):
            return (
                "sample_stats.diverging is missing: rerun NUTS keeping its sample stats "
                "(validation.reference.run_nuts does)."
            )
        return (
            f"{_fmt(v)} divergent transitions ({at}): the draws are biased. Raise "
            "target_accept (e.g. 0.95 or 0.99) and use the non-centred parameterisation "
            "for hierarchical scales."
        )
    if gate.name == "e_bfmi":
        if math.isnan(v):
            return (
                f"E-BFMI could not be computed ({at}): rerun NUTS keeping the energy "
                "(extra_fields=('energy',); validation.reference.run_nuts does)."
            )
        return (
            f"E-BFMI = {_fmt(v)} in {at} is below {EBFMI_MIN}: momentum resampling explores "
            "the energy poorly (typical of funnels and heavy tails). Use the non-centred "
            "parameterisation, and raise target_accept and num_warmup."
        )
    raise ValueError(f"gate.name is {gate.name!r}; expected one of {GATE_NAMES}")


def _resolve_var_names(posterior, var_names) -> list[str]:
    available = [str(v) for v in posterior.data_vars]
    if var_names is None:
        names = available
    elif isinstance(var_names, str):
        names = [var_names]
    else:
        names = [str(v) for v in var_names]
    if not names:
        raise ValueError(
            f"var_names is {var_names!r}; expected at least one posterior variable "
            f"(available: {available})"
        )
    missing = [v for v in names if v not in available]
    if missing:
        raise ValueError(
            f"var_names contains {missing}, which are not posterior variables; "
            f"expected names among {available}"
        )
    return names


def check_gates(idata, var_names: Sequence[str] | str | None = None) -> GateReport:
    r"""Check an MCMC run against the acceptance gates of a reference posterior.

    Parameters
    ----------
    idata : arviz.InferenceData
        Must have a ``posterior`` group with ``chain`` and ``draw`` dimensions, and a
        ``sample_stats`` group with ``diverging`` and ``energy`` (as produced by
        :func:`validation.reference.run_nuts`). Missing sample stats fail their gate.
    var_names : sequence of str, str or None
        Posterior variables to check; ``None`` checks all of them (including
        deterministic sites). Every coordinate of every variable is checked.

    Returns
    -------
    GateReport
        ``accepted`` is true when, for :math:`M` chains,

        .. math::

            M \ge 4,\quad \max_j \hat R_j \le 1.01,\quad
            \min_j \mathrm{ESS}^{\mathrm{bulk}}_j \ge 400,\quad
            \min_j \mathrm{ESS}^{\mathrm{tail}}_j \ge 400,\quad
            \#\mathrm{div} = 0,\quad \min_c \mathrm{E\text{-}BFMI}_c \ge 0.3,

        with :math:`j` running over all flattened coordinates.

    Raises
    ------
    ValueError
        If ``idata`` has no posterior or ``var_names`` names a missing variable.

    Examples
    --------
    Independent draws stand in for a well-mixed sampler:

    >>> import numpy as np
    >>> import arviz as az
    >>> rng = np.random.default_rng(0)
    >>> idata = az.from_dict(
    ...     posterior={"theta": rng.normal(size=(4, 1000, 2))},
    ...     sample_stats={"diverging": np.zeros((4, 1000), bool),
    ...                   "energy": rng.normal(size=(4, 1000))},
    ... )
    >>> report = check_gates(idata)
    >>> report.accepted
    True
    >>> check_gates(idata.sel(chain=[0, 1])).failed[0].name
    'chains'
    """
    posterior = getattr(idata, "posterior", None)
    if posterior is None:
        raise ValueError(
            f"idata is {type(idata).__name__} without a posterior group; expected an "
            "arviz.InferenceData with a posterior (e.g. from validation.reference.run_nuts)"
        )
    for dim in ("chain", "draw"):
        if dim not in posterior.dims:
            raise ValueError(
                f"idata.posterior has dims {tuple(posterior.dims)}; expected 'chain' and 'draw'"
            )
    names = _resolve_var_names(posterior, var_names)
    post = posterior[names].astype(np.float64)
    num_chains = int(post.sizes["chain"])
    num_draws = int(post.sizes["draw"])

    gates = [_result("chains", num_chains, "-", MIN_CHAINS, ">=")]

    rhat = az.rhat(post, method="rank")
    gates.append(_result("r_hat", *_worst(rhat, names, largest=True), RHAT_MAX, "<="))
    ess_bulk = az.ess(post, method="bulk")
    gates.append(_result("ess_bulk", *_worst(ess_bulk, names, largest=False), ESS_BULK_MIN, ">="))
    ess_tail = az.ess(post, method="tail")
    gates.append(_result("ess_tail", *_worst(ess_tail, names, largest=False), ESS_TAIL_MIN, ">="))

    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        div = np.asarray(stats["diverging"].transpose("chain", "draw", ...).values)
        per_chain = div.reshape(div.shape[0], -1).sum(axis=1).astype(int)
        where = ", ".join(f"chain {c}: {n}" for c, n in enumerate(per_chain) if n) or "-"
        gates.append(_result("divergences", int(per_chain.sum()), where, MAX_DIVERGENCES, "<="))
    else:
        missing = "sample_stats.diverging missing"
        gates.append(_result("divergences", float("nan"), missing, MAX_DIVERGENCES, "<="))

    if stats is not None and "energy" in stats:
        energy = np.asarray(stats["energy"].transpose("chain", "draw").values, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            bfmi = np.asarray(az.bfmi(energy), dtype=np.float64).ravel()
        if np.any(np.isnan(bfmi)):
            c = int(np.flatnonzero(np.isnan(bfmi))[0])
            gates.append(_result("e_bfmi", float("nan"), f"chain {c}", EBFMI_MIN, ">="))
        else:
            c = int(np.argmin(bfmi))
            gates.append(_result("e_bfmi", float(bfmi[c]), f"chain {c}", EBFMI_MIN, ">="))
    else:
        missing = "sample_stats.energy missing"
        gates.append(_result("e_bfmi", float("nan"), missing, EBFMI_MIN, ">="))

    advice = [_advice(g, num_draws) for g in gates if not g.passed]
    return GateReport(
        accepted=all(g.passed for g in gates),
        gates=gates,
        advice=advice,
        var_names=names,
        num_chains=num_chains,
        num_draws=num_draws,
    )
