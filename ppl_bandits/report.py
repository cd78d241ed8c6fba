"""Result files of ``ppl-bandits simulate``: regret.csv, regret.png and summary.json."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ppl_bandits.experiments import ExperimentResult, cumulative_regret
from ppl_bandits.provenance import collect_versions, write_json

__all__ = ["write_simulation_report"]


def write_simulation_report(
    result: ExperimentResult, out_dir, *, command: str, total_seconds: float
) -> dict:
    """Write DIR/regret.csv (agent, round, mean, se of the cumulative regret), DIR/regret.png
    and DIR/summary.json; return the summary."""
    from ppl_bandits.plotting import subplots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agents = {}
    fig, ax = subplots(figsize=(6.4, 4.2))
    with open(out / "regret.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["agent", "round", "mean", "se"])
        for name, res in result.results.items():
            mean, se = cumulative_regret(res)
            for t in range(mean.shape[0]):
                w.writerow([name, t + 1, f"{mean[t]:.6g}", f"{se[t]:.6g}"])
            rounds = np.arange(1, mean.shape[0] + 1)
            ax.plot(rounds, mean, label=name)
            ax.fill_between(rounds, mean - 2 * se, mean + 2 * se, alpha=0.2)
            agents[name] = {
                "final_regret_mean": float(mean[-1]),
                "final_regret_se": float(se[-1]),
                "wall_seconds": result.wall_seconds[name],
            }
    s = result.settings
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative expected regret")
    ax.set_title(
        f"{result.name}: K={s['num_actions']}, L={s['num_effects']}, d={s['dim']}, "
        f"{s['num_runs']} runs (±2 se)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "regret.png", dpi=120)
    summary = {
        "experiment": result.name,
        "agents": agents,
        "settings": s,
        "wall_seconds": total_seconds,
        "command": command,
        "seed": s["seed"],
        "versions": collect_versions(),
    }
    write_json(out / "summary.json", summary)
    return summary
