"""dTS ablations: one experiment run over a grid of one setting (K, L, d, n or the pre-training
size).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ppl_bandits.experiments.catalog import run_experiment
from ppl_bandits.experiments.registry import cumulative_regret
from ppl_bandits.plotting import subplots
from ppl_bandits.results import provenance, write_json

__all__ = ["ABLATION_ALIASES", "ablation_value", "run_ablation", "write_ablation"]


#: Short names accepted by ``--over``.
ABLATION_ALIASES = {
    "K": "num_actions",
    "L": "num_effects",
    "d": "dim",
    "n": "num_rounds",
    "rounds": "num_rounds",
    "pretrain-samples": "pretrain_samples",
}


def run_ablation(
    experiment: str, over: str, values, *, seed: int = 0, progress: bool = False, **options
) -> list[dict]:
    """Run ``experiment`` once per value of option ``over`` (K, L, d, n or an option name).

    Returns one row per (value, agent): final cumulative regret mean and standard error
    over runs, and wall seconds. Every value uses the same seed.
    """

    option = ABLATION_ALIASES.get(over, over.replace("-", "_"))
    if options.get(option) is not None:
        raise ValueError(f"option {option} is both swept (--over {over}) and fixed")
    values = list(values)
    if not values:
        raise ValueError("values is empty; expected at least one value to sweep")
    rows = []
    for value in values:
        result = run_experiment(
            experiment, seed=seed, progress=progress, **{**options, option: value}
        )
        for name, res in result.results.items():
            mean, se = cumulative_regret(res)
            rows.append(
                {
                    "experiment": result.name,
                    "option": option,
                    "value": value,
                    "agent": name,
                    "final_regret_mean": float(mean[-1]),
                    "final_regret_se": float(se[-1]),
                    "wall_seconds": result.wall_seconds[name],
                    "num_runs": result.settings["num_runs"],
                    "num_rounds": result.settings["num_rounds"],
                }
            )
    return rows


def write_ablation(rows: list[dict], out_dir, *, command: str, seed: int, settings: dict) -> Path:
    """Write OUT/ablation.csv, ablation.png (final regret ± 2 se against the swept value)
    and ablation.json (rows, settings, command, seed, versions); returns the CSV path."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(out / "ablation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    option = rows[0]["option"]
    fig, ax = subplots(figsize=(6.4, 4.2))
    numeric = all(isinstance(r["value"], int | float) for r in rows)
    for agent in dict.fromkeys(r["agent"] for r in rows):
        sub = [r for r in rows if r["agent"] == agent]
        x = [r["value"] for r in sub] if numeric else list(range(len(sub)))
        m = np.array([r["final_regret_mean"] for r in sub])
        e = np.nan_to_num(np.array([r["final_regret_se"] for r in sub]))
        ax.errorbar(x, m, yerr=2 * e, marker="o", capsize=3, label=agent)
    if numeric and min(r["value"] for r in rows) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(option)
    ax.set_ylabel("final cumulative regret (±2 se)")
    ax.set_title(
        f"{rows[0]['experiment']}: ablation over {option}, "
        f"n={rows[0]['num_rounds']}, {rows[0]['num_runs']} runs",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    write_json(
        out / "ablation.json",
        {
            "rows": rows,
            "settings": settings,
            **provenance(seed=seed, wall_seconds=settings.get("wall_seconds"), command=command),
        },
    )
    return out / "ablation.csv"


def ablation_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text
