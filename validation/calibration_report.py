"""Files, figures and tables of the simulation-based calibration studies.

:mod:`validation.calibration` runs the studies; this module writes them: one study's
``calibration.json``, ``pit.csv`` and ``calibration.png`` (:func:`write_calibration`), and
the table of verdicts of several studies, one row per study (:func:`table_row`), as
``table.csv``, ``table.md`` and ``table.json`` (:func:`write_calibration_table`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ppl_bandits.plotting import subplots
from ppl_bandits.results import provenance, write_json
from validation.ecdf import ALPHA, ecdf_band

__all__ = ["TABLE_COLUMNS", "table_row", "write_calibration", "write_calibration_table"]

#: Columns of the table of verdicts.
TABLE_COLUMNS = (
    "posterior",
    "model",
    "replications",
    "rounds",
    "p_value",
    "verdict",
    "psi",
    "theta",
    "chi2",
    "coverage_50",
    "coverage_80",
    "coverage_95",
    "controls_rejected",
    "wall_seconds",
)


# --------------------------------------------------------------------------- one study


def _plot_ecdf(ax, u: np.ndarray, alpha: float, title: str) -> None:
    n = u.size
    z, lower, upper = ecdf_band(n, alpha)
    ecdf = np.searchsorted(np.sort(u), z, side="right") / n
    ax.fill_between(
        z,
        lower - z,
        upper - z,
        color="0.85",
        step="mid",
        label=f"{100 * (1 - alpha):g}% simultaneous band",
    )
    ax.plot(z, ecdf - z, drawstyle="steps-mid", color="C0")
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PIT")
    ax.set_xlim(0, 1)


def write_calibration(result: dict, out_dir) -> Path:
    """Write ``out_dir/calibration.json``, ``calibration.png`` and ``pit.csv``.

    ``result`` is the dict of :func:`validation.calibration.run_calibration`. The JSON
    holds ``posterior``, ``replications``, ``rounds``, ``uniformity`` (statistic, p_value,
    verdict, ...), ``coverage`` ({"50": {rate, se, ...}, "80", "95"}),
    ``negative_controls`` ([{name, rejected}]), ``wall_seconds``, ``command``, ``seed``,
    ``versions`` and the settings. The figure shows the ECDF difference F̂(u) − u with its
    simultaneous band for the χ² PIT and the three worst coordinates, and the coverage.
    Returns the path of the JSON file.
    """

    for key in ("posterior", "pit", "chi2_pit", "uniformity", "coverage", "labels"):
        if key not in result:
            raise ValueError(f"result lacks {key!r}; expected the dict of run_calibration")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uni = dict(result["uniformity"])
    record = {
        "posterior": result["posterior"],
        "model": result.get("model"),
        "replications": result["replications"],
        "rounds": result["rounds"],
        "num_actions": result.get("num_actions"),
        "num_effects": result.get("num_effects"),
        "dim": result.get("dim"),
        "uniformity": uni,
        "coverage": result["coverage"],
        "negative_controls": [
            {
                "name": c["name"],
                "rejected": bool(c["rejected"]),
                "p_value": c["uniformity"]["p_value"],
            }
            for c in result.get("negative_controls", [])
        ],
        "labels": list(result["labels"]) + list(result["chi2_labels"]),
        "devices": result.get("devices"),
        **provenance(
            seed=result.get("seed"),
            wall_seconds=result.get("wall_seconds"),
            command=result.get("command"),
        ),
    }
    path = write_json(out / "calibration.json", record)
    header = ",".join(list(result["labels"]) + list(result["chi2_labels"]))
    np.savetxt(
        out / "pit.csv",
        np.concatenate([result["pit"], result["chi2_pit"]], axis=1),
        delimiter=",",
        header=header,
        comments="",
        fmt="%.8g",
    )

    alpha = uni.get("alpha", ALPHA)
    p_cols = np.asarray(uni["column_p_values"])[: result["pit"].shape[1]]
    worst = list(np.argsort(p_cols, kind="stable")[:3])
    fig, axes = subplots(
        1, 2 + len(worst), figsize=(4.0 * (2 + len(worst)), 3.4), layout="constrained"
    )
    _plot_ecdf(axes[0], result["chi2_pit"][:, 0], alpha, result["chi2_labels"][0])
    axes[0].set_ylabel("ECDF − uniform")
    for ax, j in zip(axes[1:], worst, strict=False):
        _plot_ecdf(ax, result["pit"][:, j], alpha, result["labels"][j])
    axes[0].legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    coverage = result["coverage"]
    levels = list(coverage)  # "50", "80", "95"
    rates = [coverage[k]["rate"] for k in levels]
    errs = [2 * coverage[k]["se"] for k in levels]
    x = np.arange(len(levels))
    ax.bar(x, rates, yerr=errs, color="C0", capsize=4, label="central intervals (±2 se)")
    ax.scatter(
        x,
        [coverage[k]["nominal"] for k in levels],
        color="k",
        marker="_",
        s=400,
        zorder=3,
        label="nominal",
    )
    ax.set_xticks(x, [f"{k}%" for k in levels])
    ax.set_ylim(0, 1)
    ax.set_title("coverage", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"SBC of {result['posterior']}: {result['replications']} replications, "
        f"{result['rounds']} rounds; uniformity {uni['verdict']} (p = {uni['p_value']:.3g})",
        fontsize=10,
    )
    fig.savefig(out / "calibration.png", dpi=110)
    return path


# --------------------------------------------------------------------------- table


def table_row(res: dict) -> dict:
    """The row of the table of verdicts for one study (a dict of ``run_calibration``).

    ``posterior``, ``model``, ``replications``, ``rounds``, the family-wise ``p_value``
    and ``verdict``, the verdicts of the ψ, θ and χ² blocks (``psi``, ``theta``, ``chi2``;
    "" where a posterior has no such block), the pooled central-interval coverage
    ``coverage_50``, ``coverage_80``, ``coverage_95`` with their replication-level
    standard errors ``coverage_50_se``, ..., ``controls_rejected`` ("2/2"), ``controls``
    and ``wall_seconds``.
    """
    cov = res["coverage"]
    blocks = res["uniformity_blocks"]
    controls = res["negative_controls"]
    row = {
        "posterior": res["posterior"],
        "model": res["model"],
        "replications": res["replications"],
        "rounds": res["rounds"],
        "p_value": res["uniformity"]["p_value"],
        "verdict": res["uniformity"]["verdict"],
        **{b: blocks[b]["verdict"] if b in blocks else "" for b in ("psi", "theta", "chi2")},
        "controls_rejected": f"{sum(c['rejected'] for c in controls)}/{len(controls)}",
        "controls": [
            {
                "name": c["name"],
                "rejected": bool(c["rejected"]),
                "p_value": c["uniformity"]["p_value"],
            }
            for c in controls
        ],
        "wall_seconds": res["wall_seconds"],
    }
    for level in ("50", "80", "95"):
        row[f"coverage_{level}"] = cov[level]["rate"]
        row[f"coverage_{level}_se"] = cov[level]["se_replications"]
    return row


def _markdown(rows: list[dict]) -> str:
    head = (
        "| posterior | model | R | rounds | p-value | verdict | ψ / θ / χ² | "
        "coverage 50 % | coverage 80 % | coverage 95 % | controls rejected |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cov = " | ".join(
            f"{r[f'coverage_{lv}']:.3f} ± {r[f'coverage_{lv}_se']:.3f}" for lv in ("50", "80", "95")
        )
        blocks = " / ".join(r[b] or "–" for b in ("psi", "theta", "chi2"))
        lines.append(
            f"| {r['posterior']} | {r['model']} | {r['replications']} | {r['rounds']} | "
            f"{r['p_value']:.3g} | **{r['verdict']}** | {blocks} | {cov} | "
            f"{r['controls_rejected']} |"
        )
    return "\n".join(lines) + "\n"


def write_calibration_table(rows: list[dict], out_dir, *, settings: dict | None = None) -> Path:
    """Write ``out_dir/table.csv``, ``table.md`` and ``table.json`` (with provenance).

    ``rows`` are those of :func:`validation.calibration.calibration_table`. Returns the
    path of the JSON file.
    """
    if not rows:
        raise ValueError("rows is empty; expected the rows of calibration_table")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        c
        for col in TABLE_COLUMNS
        for c in ((col, f"{col}_se") if col.startswith("coverage_") else (col,))
    ]
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(_markdown(rows))
    settings = dict(settings or {})
    return write_json(
        out / "table.json",
        {
            "rows": rows,
            "settings": settings,
            "alpha": settings.get("alpha", ALPHA),
            **provenance(
                seed=settings.get("seed"),
                wall_seconds=settings.get("wall_seconds"),
                command=settings.get("command"),
            ),
        },
    )
