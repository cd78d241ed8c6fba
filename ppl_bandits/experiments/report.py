"""Result files of ``ppl-bandits simulate``: regret.csv, regret.png and summary.json, plus
metrics.csv and metric_<name>.png when the experiment records extra curves."""

from __future__ import annotations

import csv

import numpy as np

from ppl_bandits.experiments.catalog import EXPERIMENTS, list_experiments
from ppl_bandits.experiments.registry import ExperimentResult, cumulative_regret
from ppl_bandits.plotting import subplots
from ppl_bandits.results import prepare_out_dir, provenance, write_json

__all__ = ["write_simulation_report"]

_SHORT = {"num_actions": "K", "num_effects": "L", "dim": "d", "num_arms": "N"}


def _title(result: ExperimentResult) -> str:
    s = result.settings
    list_experiments()  # registers the built-in experiments if nothing has yet
    spec = EXPERIMENTS.get(result.name)
    keys = spec.title_keys if spec is not None else ()
    parts = [f"{_SHORT.get(k, k)}={s[k]}" for k in keys if s.get(k) is not None]
    return f"{result.name}: " + ", ".join([*parts, f"{s['num_runs']} runs (±2 se)"])


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    R = values.shape[0]
    se = values.std(axis=0, ddof=1) / np.sqrt(R) if R > 1 else np.full(values.shape[1:], np.nan)
    return values.mean(axis=0), se


#: Rounds per run kept in regret_runs.csv (evenly spaced, the last round included).
RUN_CURVE_POINTS = 200


def write_simulation_report(
    result: ExperimentResult, out_dir, *, command: str, total_seconds: float
) -> dict:
    """Write DIR/regret.csv (agent, round, mean, se of the cumulative regret), DIR/regret.png
    and DIR/summary.json (and DIR/metrics.csv with a PNG per extra metric); return the
    summary."""

    out = prepare_out_dir(out_dir)
    agents, runs = {}, {}
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
            per_run = np.cumsum(np.asarray(res.regret, np.float64), axis=1)
            runs[name] = per_run
            agents[name] = {
                "final_regret_mean": float(mean[-1]),
                "final_regret_se": float(se[-1]) if per_run.shape[0] > 1 else None,
                "final_regret_per_run": per_run[:, -1].tolist(),
                "wall_seconds": result.wall_seconds[name],
            }
            if per_run.shape[0] < 2:
                agents[name]["final_regret_se_note"] = "one run: no standard error"
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative expected regret")
    ax.set_title(_title(result), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "regret.png", dpi=120)
    files = ["regret.csv", "regret_runs.csv", "regret.png", "summary.json"]
    # Per-run curves (common random numbers make paired comparisons possible from the file):
    # every run's cumulative regret at up to RUN_CURVE_POINTS rounds, the last one included.
    with open(out / "regret_runs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["agent", "run", "round", "cumulative_regret"])
        for name, per_run in runs.items():
            n = per_run.shape[1]
            idx = np.unique(np.linspace(0, n - 1, min(n, RUN_CURVE_POINTS)).round().astype(int))
            for r in range(per_run.shape[0]):
                for t in idx:
                    w.writerow([name, r, int(t) + 1, f"{per_run[r, t]:.6g}"])
    if result.metrics:
        with open(out / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["metric", "agent", "round", "mean", "se"])
            for metric, per_agent in result.metrics.items():
                fig, ax = subplots(figsize=(6.4, 4.2))
                for name, (rounds, values) in per_agent.items():
                    mean, se = _mean_se(values)
                    for t, m, e in zip(rounds, mean, se, strict=True):
                        w.writerow([metric, name, int(t), f"{m:.6g}", f"{e:.6g}"])
                    ax.plot(rounds, mean, label=name)
                    ax.fill_between(rounds, mean - 2 * se, mean + 2 * se, alpha=0.2)
                    agents[name][f"final_{metric}_mean"] = float(mean[-1])
                    agents[name][f"final_{metric}_se"] = float(se[-1])
                ax.set_xlabel("round")
                ax.set_ylabel(metric.replace("_", " "))
                ax.set_title(_title(result), fontsize=9)
                ax.legend(fontsize=8)
                fig.tight_layout()
                fig.savefig(out / f"metric_{metric}.png", dpi=120)
                files.append(f"metric_{metric}.png")
        files.append("metrics.csv")
    s = result.settings
    summary = {
        "experiment": result.name,
        "agents": agents,
        "settings": s,
        "files": files,
        **provenance(seed=s["seed"], wall_seconds=total_seconds, command=command),
    }
    write_json(out / "summary.json", summary)
    return summary
