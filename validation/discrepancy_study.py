"""How far the approximate posteriors are from the exact model's, against the number of rounds.

For each approximate agent (meTS-GLM's Laplace likelihood, the factored effect posteriors
in both variants) the agent plays one problem; at each checkpoint its claimed posterior is
compared with an accepted NUTS reference of the exact NumPyro model by
:func:`validation.compare.discrepancy`. No verdict: the curve is the result.

Writes ``discrepancy.csv`` (one row per agent and checkpoint), ``discrepancy.json`` and
``discrepancy.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ppl_bandits.plotting import subplots
from ppl_bandits.results import provenance, write_json
from validation.audit import run_audit
from validation.families import AuditSettings
from validation.reference import NUTSSettings

__all__ = [
    "COLUMNS",
    "DEFAULT_STUDY",
    "run_discrepancy_study",
    "write_discrepancy_study",
]

#: (label, agent, model, factored variant) of the default study.
DEFAULT_STUDY = (
    ("meTS-GLM", "meTS-GLM", "mixed-effect-logistic", "mean-field"),
    ("meTS-GLM-Fa (mean-field)", "meTS-GLM-Fa", "mixed-effect-logistic", "mean-field"),
    ("meTS-Lin-Fa (mean-field)", "meTS-Lin-Fa", "mixed-effect-linear", "mean-field"),
    ("meTS-Lin-Fa (published)", "meTS-Lin-Fa", "mixed-effect-linear", "published"),
)

COLUMNS = (
    "label",
    "agent",
    "model",
    "variant",
    "rounds",
    "max_abs_standardized_mean_error",
    "median_abs_standardized_mean_error",
    "min_sd_ratio",
    "max_sd_ratio",
    "w2",
    "energy_distance",
    "w2_iid_floor",
    "energy_distance_iid_floor",
    "reference_accepted",
)


def run_discrepancy_study(
    *,
    rounds=(0, 50, 200, 1000),
    study=DEFAULT_STUDY,
    num_actions: int = 10,
    num_effects: int = 2,
    dim: int = 2,
    seed: int = 0,
    nuts: NUTSSettings | None = None,
    log=print,
) -> list[dict]:
    """One row per (agent, checkpoint) with the discrepancy statistics.

    Each entry ``(label, agent, model, variant)`` of ``study`` is one audit
    (:func:`validation.audit.run_audit`, no negative controls) of K = ``num_actions``,
    L = ``num_effects``, d = ``dim`` played for ``max(rounds)`` rounds with checkpoints
    ``rounds``; ``nuts`` sets its NUTS references (``None`` for the defaults).
    """
    rounds = sorted({int(r) for r in rounds})
    if not rounds or rounds[0] < 0:
        raise ValueError(f"rounds are {rounds}; expected round numbers >= 0")
    rows = []
    for label, agent, model, variant in study:
        problem = AuditSettings(
            num_actions=num_actions,
            num_effects=num_effects,
            dim=dim,
            rounds=max(max(rounds), 1),
            seed=seed,
            factored_variant=variant,
        )
        outcome = run_audit(
            model,
            agent,
            problem=problem,
            nuts=nuts,
            checkpoints=rounds,
            negative_controls=False,
            log=log,
        )
        for check in outcome.record["checks"]:
            s = check["statistics"]
            row = {
                "label": label,
                "agent": agent,
                "model": model,
                "variant": variant,
                "rounds": check["checkpoint"],
            }
            accepted = "w2" in s
            row["reference_accepted"] = accepted
            if accepted:
                sme = np.abs(np.asarray(s["standardized_mean_error"], float))
                ratio = np.asarray(s["sd_ratio"], float)
                row.update(
                    max_abs_standardized_mean_error=float(sme.max()),
                    median_abs_standardized_mean_error=float(np.median(sme)),
                    min_sd_ratio=float(ratio.min()),
                    max_sd_ratio=float(ratio.max()),
                    w2=float(s["w2"]),
                    energy_distance=float(s["energy_distance"]),
                    w2_iid_floor=float(s["w2_iid_floor"]),
                    energy_distance_iid_floor=float(s["energy_distance_iid_floor"]),
                )
            rows.append(row)
    return rows


def write_discrepancy_study(
    rows: list[dict], out_dir, *, command: str, seed: int, settings: dict, wall_seconds: float
) -> Path:
    """Write discrepancy.csv, discrepancy.json and discrepancy.png under ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "discrepancy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, restval="")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_json(
        out / "discrepancy.json",
        {
            "rows": rows,
            "settings": settings,
            **provenance(seed=seed, wall_seconds=wall_seconds, command=command),
        },
    )
    stats = (
        ("max_abs_standardized_mean_error", "max |standardized mean error|"),
        ("w2", "Gaussian 2-Wasserstein"),
        ("energy_distance", "energy distance"),
    )
    fig, axes = subplots(1, 3, figsize=(12, 3.6))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for ax, (key, title) in zip(axes, stats, strict=True):
        for label in labels:
            pts = [(r["rounds"], r[key]) for r in rows if r["label"] == label and key in r]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(np.asarray(x) + 1, y, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("rounds + 1")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "discrepancy.png", dpi=120)
    return out / "discrepancy.csv"
