"""The ``ppl-bandits`` command line.

- ``simulate EXPERIMENT [--runs --rounds --K --L --d --N --agents --seed --set OPTION=VALUE]
  --out DIR``: a named experiment (:mod:`ppl_bandits.experiments.catalog`); DIR/regret.csv,
  regret.png, summary.json (and metrics.csv for extra curves).
- ``audit --model MODEL --agent AGENT [...] --out DIR``: the agent's posterior against NUTS
  on the exact model; DIR/audit.json and DIR/report.html.
- ``discrepancy [--model diffusion-neural] --out DIR``: approximate posteriors against NUTS
  over rounds (and pre-training size).
- ``calibrate --posterior NAME | --all --out DIR``: simulation-based calibration.
- ``check-coupling --out DIR``: the HCSA coupling checks.
- ``pretrain --samples SET|FILE --steps L --out DIR``: a DDPM diffusion prior.
- ``ablation --experiment E --over OPTION --values V1,V2 --out DIR``: dTS ablations.
- ``demo``: the audit of meTS-Lin on the mixed-effect linear model at its small default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ppl_bandits.data.history import load_history
from ppl_bandits.diffusion.ddpm import pretrain
from ppl_bandits.experiments.ablation import ablation_value, run_ablation, write_ablation
from ppl_bandits.experiments.catalog import list_experiments, run_experiment
from ppl_bandits.experiments.report import write_simulation_report
from ppl_bandits.results import check_out_dir, command_line, provenance, write_json
from ppl_bandits.runtime import configure_cpu
from validation.audit import run_audit
from validation.calibration import calibration_table, run_calibration
from validation.calibration_report import write_calibration, write_calibration_table
from validation.coupling import run_coupling_checks
from validation.coupling_report import write_coupling_report
from validation.diffusion_study import run_diffusion_study, write_diffusion_study
from validation.discrepancy_study import run_discrepancy_study, write_discrepancy_study
from validation.families import AUDIT_FAMILIES, AuditSettings
from validation.reference import NUTSSettings
from validation.report import CheckpointPanel, write_audit_report

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="ppl-bandits", description="Structured Thompson sampling with audited posteriors."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="run a named experiment and write its regret report",
        description="Options an experiment does not take are refused; "
        "defaults are the experiment's own (see summary.json).",
    )
    sim.add_argument("experiment", help=f"one of: {', '.join(list_experiments())}")
    sim.add_argument("--runs", type=_positive_int, help="independent runs")
    sim.add_argument("--rounds", type=_positive_int, help="rounds per run")
    sim.add_argument("--K", type=_positive_int, help="number of actions")
    sim.add_argument("--L", type=_positive_int, help="number of effects or diffusion levels")
    sim.add_argument("--d", type=_positive_int, help="context dimension")
    sim.add_argument("--N", type=_positive_int, help="arms per round (per-round contexts)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--agents", help="comma-separated agent names (default: the paper's)")
    sim.add_argument(
        "--context",
        choices=("shared", "pool"),
        help="mixed-effect: one context for all actions, or the authors' per-action pool",
    )
    sim.add_argument(
        "--factored-variant",
        choices=("mean-field", "published"),
        help="mean of the factored (-Fa) agents",
    )
    sim.add_argument("--mask-prob", type=float, help="probability of masking context entries")
    sim.add_argument("--data", help="path to a data set (real-data experiments)")
    sim.add_argument("--prior-dir", help="directory of a pre-trained diffusion prior")
    sim.add_argument(
        "--pretrain-samples", type=_positive_int, help="samples the diffusion prior is trained on"
    )
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="any other option of the experiment (repeatable), e.g. --set kind=drift",
    )
    sim.add_argument("--out", default="reports/simulate", help="output directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bars")

    audit = sub.add_parser("audit", help="audit an agent's posterior against NUTS")
    _audit_arguments(audit, out_default="reports/audit")

    disc = sub.add_parser(
        "discrepancy",
        help="discrepancy of the approximate posteriors against rounds (and pre-training size)",
        description="Without --model: meTS-GLM and the factored meTS posteriors against rounds. "
        "With --model diffusion-neural: the dTS audit studies (against rounds, against the "
        "DDPM pre-training sample size, and the paper's posterior-quality check).",
    )
    disc.add_argument(
        "--model",
        choices=("mixed-effect", "diffusion-neural"),
        default="mixed-effect",
        help="which study (default mixed-effect)",
    )
    disc.add_argument(
        "--rounds-list",
        type=_checkpoints,
        default=None,
        help="checkpoints, comma-separated (default 0,50,200,1000; diffusion-neural 0,10,100,1000)",
    )
    disc.add_argument("--K", type=_positive_int, default=None, help="default 10 (dTS: 1)")
    disc.add_argument("--L", type=_positive_int, default=None, help="default 2 (DDPM steps: 10)")
    disc.add_argument("--d", type=_positive_int, default=2)
    disc.add_argument("--seed", type=int, default=0)
    disc.add_argument("--warmup", type=_positive_int, default=1000)
    disc.add_argument("--samples", type=_positive_int, default=1000)
    disc.add_argument(
        "--pretrain-sizes",
        type=_checkpoints,
        default=[10, 100, 1000, 10000],
        help="diffusion-neural: DDPM pre-training sample sizes (default 10,100,1000,10000)",
    )
    disc.add_argument(
        "--pretrain-samples",
        type=_positive_int,
        default=1000,
        help="diffusion-neural: pre-training samples of the rounds study (default 1000)",
    )
    disc.add_argument(
        "--pretrain-steps", type=_positive_int, default=3000, help="Adam steps of pre-training"
    )
    disc.add_argument(
        "--quality-rounds",
        type=_positive_int,
        default=100,
        help="diffusion-neural: rounds of the pre-training study and the quality check",
    )
    disc.add_argument("--prior-dir", help="diffusion-neural: a saved DDPM (skips pre-training)")
    disc.add_argument("--out", default="reports/discrepancy")

    cal = sub.add_parser(
        "calibrate", help="simulation-based calibration of a posterior under adaptive data"
    )
    which = cal.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--posterior",
        help="an agent name (meTS-Lin, LinTS, ...), dTS (linear links, exact), dTS-neural "
        "(neural links, the dTS approximation), or POSTERIOR:CONTROL",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every posterior at the same size: OUT/table.csv, table.md, table.json",
    )
    cal.add_argument("--replications", type=_positive_int, default=200)
    cal.add_argument("--rounds", type=_positive_int, default=100)
    cal.add_argument("--K", type=_positive_int, default=10)
    cal.add_argument("--L", type=_positive_int, default=2, help="effects, or diffusion levels")
    cal.add_argument("--d", type=_positive_int, default=2)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--alpha", type=float, default=0.01)
    cal.add_argument("--out", default="reports/calibrate")

    cc = sub.add_parser("check-coupling", help="the HCSA coupling checks and their controls")
    cc.add_argument("--d", type=_positive_int, default=10, help="context dimension")
    cc.add_argument("--N", type=_positive_int, default=10, help="arms per round (>= 2)")
    cc.add_argument("--rounds", type=_positive_int, default=50)
    cc.add_argument("--replications", type=_positive_int, default=500)
    cc.add_argument("--gamma", type=float, default=0.25)
    cc.add_argument("--delta", type=float, default=0.1)
    cc.add_argument("--seed", type=int, default=0)
    cc.add_argument("--out", default="reports/coupling")

    pre = sub.add_parser(
        "pretrain",
        help="pre-train a DDPM diffusion prior (dTS) and write it with a figure and a record",
        description="Writes OUT/ddpm_params.npz, ddpm_settings.json (the prior that "
        "simulate --prior-dir loads), pretrain.png, losses.csv and pretrain.json.",
    )
    pre.add_argument(
        "--samples",
        required=True,
        help="swiss-roll, gaussian, mixture, or a .npy/.csv file with one sample per row",
    )
    pre.add_argument("--steps", type=int, default=20, help="L, number of diffusion steps")
    pre.add_argument("--num-samples", type=int, default=1000, help="draws of a named training set")
    pre.add_argument("--dim", type=int, help="dimension of a named set (default 2)")
    pre.add_argument(
        "--epochs", type=int, default=20000, help="passes over the data (paper: 20000)"
    )
    pre.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    pre.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    pre.add_argument("--beta-start", type=float, default=1e-3)
    pre.add_argument("--beta-end", type=float, default=0.5)
    pre.add_argument("--model-samples", type=int, default=2000, help="draws for the figure")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--out", default="reports/pretrain", help="output directory")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")

    abl = sub.add_parser(
        "ablation",
        help="run a dTS experiment over a grid of one setting (K, L, d, n or pre-training size)",
        description="Runs EXPERIMENT once per value of --over and writes OUT/ablation.csv, "
        "ablation.png and ablation.json (final regret per agent and value).",
    )
    abl.add_argument("--experiment", default="dts-linear", help="a dTS experiment")
    abl.add_argument(
        "--over", required=True, help="K, L, d, n, pretrain-samples or any option name"
    )
    abl.add_argument("--values", required=True, help="comma-separated values")
    abl.add_argument("--runs", type=_positive_int, help="independent runs")
    abl.add_argument("--rounds", type=_positive_int, help="rounds per run")
    abl.add_argument("--agents", help="comma-separated agent names")
    abl.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE")
    abl.add_argument("--seed", type=int, default=0)
    abl.add_argument("--out", default="reports/dts-ablation", help="output directory")
    abl.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser(
        "demo", help="audit meTS-Lin on the mixed-effect linear model (small default)"
    )
    _audit_arguments(demo, out_default="reports/demo")
    return parser


def _checkpoints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated round numbers, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected round numbers >= 0, got {text!r}")
    return values


def _audit_arguments(p: argparse.ArgumentParser, *, out_default: str) -> None:

    p.add_argument("--model", default="mixed-effect-linear", help=", ".join(AUDIT_FAMILIES))
    p.add_argument(
        "--agent",
        default="meTS-Lin",
        help="; ".join(f"{m}: {', '.join(f.agents)}" for m, f in AUDIT_FAMILIES.items()),
    )
    p.add_argument("--K", type=_positive_int, default=10, help="number of actions")
    p.add_argument(
        "--L", type=_positive_int, default=2, help="number of effects (or diffusion levels)"
    )
    p.add_argument("--d", type=_positive_int, default=2, help="context dimension")
    p.add_argument("--N", type=_positive_int, default=10, help="linear-bandit: arms per round")
    p.add_argument("--rounds", type=_positive_int, default=200)
    p.add_argument(
        "--checkpoints",
        type=_checkpoints,
        default=[50, 200],
        help="rounds at which to audit, comma-separated (default 50,200)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--alpha", type=float, default=0.01, help="family-wise error rate of each exact comparison"
    )
    p.add_argument("--chains", type=_positive_int, default=4)
    p.add_argument("--warmup", type=_positive_int, default=1000)
    p.add_argument("--samples", type=_positive_int, default=1000)
    p.add_argument(
        "--parameterization", choices=("auto", "centered", "noncentered"), default="auto"
    )
    p.add_argument("--no-negative-controls", action="store_true")
    p.add_argument(
        "--prior",
        choices=("random", "ddpm"),
        default="random",
        help="diffusion-neural: random MLP links or a DDPM prior",
    )
    p.add_argument("--prior-dir", help="diffusion-neural: directory of a saved DDPM (save_ddpm)")
    p.add_argument(
        "--pretrain-samples",
        type=_positive_int,
        default=1000,
        help="diffusion-neural DDPM: N(0, I) samples to pre-train on",
    )
    p.add_argument("--pretrain-steps", type=_positive_int, default=3000, help="DDPM: Adam steps")
    p.add_argument("--ddpm-steps", type=_positive_int, default=10, help="DDPM: diffusion steps L")
    p.add_argument(
        "--posterior-samples",
        type=_positive_int,
        default=20000,
        help="draws that represent a non-Gaussian claimed posterior (dTS, neural links)",
    )
    p.add_argument("--data", help="mixed-effect: path of a real data set (MovieLens)")
    p.add_argument(
        "--history",
        help="audit the agent after a recorded history instead of a simulated one: a CSV "
        "(context columns, action, reward) or .npz (contexts, actions, rewards) file; "
        "--rounds becomes its length",
    )
    p.add_argument("--out", default=out_default)


def _audit(args, command: str) -> int:

    t0 = time.perf_counter()
    problem = AuditSettings(
        num_actions=args.K,
        num_effects=args.L,
        dim=args.d,
        num_arms=args.N,
        rounds=args.rounds,
        seed=args.seed,
        prior=args.prior,
        prior_dir=args.prior_dir,
        pretrain_samples=args.pretrain_samples,
        pretrain_steps=args.pretrain_steps,
        ddpm_steps=args.ddpm_steps,
        posterior_samples=args.posterior_samples,
        data=args.data,
    )
    outcome = run_audit(
        args.model,
        args.agent,
        problem=problem,
        nuts=NUTSSettings(num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples),
        checkpoints=args.checkpoints,
        alpha=args.alpha,
        parameterization=args.parameterization,
        negative_controls=not args.no_negative_controls,
        history=None if args.history is None else load_history(args.history),
        out_dir=args.out,
    )
    if args.history is not None:
        outcome.record["history"]["file"] = str(args.history)
    record = outcome.record | provenance(
        seed=args.seed, wall_seconds=time.perf_counter() - t0, command=command
    )
    out = Path(args.out)
    write_json(out / "audit.json", record)
    report = write_audit_report(record, [CheckpointPanel(**p) for p in outcome.panels], out)
    _print_verdicts(record)
    print(f"wrote {out / 'audit.json'}" + (f" and {report}" if report else ""))
    print(f"total {record['wall_seconds']:.1f} s")
    return 0 if record["verdict"] in ("pass", "report") else 1


def _discrepancy(args, command: str) -> int:

    if args.model == "diffusion-neural":
        return _diffusion_study(args, command)
    t0 = time.perf_counter()
    args.rounds_list = args.rounds_list or [0, 50, 200, 1000]
    args.K = args.K or 10
    args.L = args.L or 2
    settings = {
        "rounds": args.rounds_list,
        "num_actions": args.K,
        "num_effects": args.L,
        "dim": args.d,
        "num_warmup": args.warmup,
        "num_samples": args.samples,
    }
    rows = run_discrepancy_study(
        rounds=args.rounds_list,
        num_actions=args.K,
        num_effects=args.L,
        dim=args.d,
        seed=args.seed,
        nuts=NUTSSettings(num_warmup=args.warmup, num_samples=args.samples),
    )
    path = write_discrepancy_study(
        rows,
        args.out,
        command=command,
        seed=args.seed,
        settings=settings,
        wall_seconds=time.perf_counter() - t0,
    )
    print(
        f"\n{'posterior':<26} {'rounds':>6} {'max|SME|':>9} {'sd ratio':>13} "
        f"{'W2 (iid floor)':>15} {'energy (iid floor)':>19}"
    )
    for r in rows:
        if not r["reference_accepted"]:
            print(f"{r['label']:<26} {r['rounds']:>6}  reference refused")
            continue
        print(
            f"{r['label']:<26} {r['rounds']:>6} {r['max_abs_standardized_mean_error']:>9.3f} "
            f"{r['min_sd_ratio']:>6.2f}-{r['max_sd_ratio']:<6.2f} {r['w2']:>7.3f} "
            f"({r['w2_iid_floor']:.3f}) {r['energy_distance']:>10.4f} "
            f"({r['energy_distance_iid_floor']:.4f})"
        )
    print(f"wrote {path}, {path.with_suffix('.json')}, {path.with_suffix('.png')}")
    return 0


def _diffusion_study(args, command: str) -> int:

    t0 = time.perf_counter()
    settings = {
        "rounds": args.rounds_list or [0, 10, 100, 1000],
        "pretrain_sizes": args.pretrain_sizes,
        "pretrain_samples": args.pretrain_samples,
        "pretrain_steps": args.pretrain_steps,
        "quality_rounds": args.quality_rounds,
        "num_actions": args.K or 1,
        "dim": args.d,
        "ddpm_steps": args.L or 10,
        "seed": args.seed,
        "num_warmup": args.warmup,
        "num_samples": args.samples,
        "prior_dir": args.prior_dir,
    }
    study = {k: v for k, v in settings.items() if k not in ("num_warmup", "num_samples")}
    result = run_diffusion_study(
        **study, nuts=NUTSSettings(num_warmup=args.warmup, num_samples=args.samples)
    )
    path = write_diffusion_study(
        result,
        args.out,
        command=command,
        seed=args.seed,
        settings=settings,
        wall_seconds=time.perf_counter() - t0,
    )
    _print_diffusion_rows(result["rows"])
    q = result["quality"]
    print(
        f"\nposterior quality ({q['pretrain_samples']} pre-training samples, {q['rounds']} "
        f"rounds): dTS vs exact Gaussian (true prior) max|SME| "
        f"{q['dts_vs_exact_max_abs_sme']:.3f}, W2 {q['dts_vs_exact_w2']:.3f} "
        f"(iid floor {q['exact_w2_iid_floor']:.3f})"
    )
    print(f"wrote {path}, {path.with_suffix('.json')}, quality.json and two PNGs")
    return 0


def _print_diffusion_rows(rows) -> None:
    def f(r, k, fmt=".3f"):
        v = r.get(k)
        return "n/a" if v is None else format(v, fmt)

    print(
        f"\n{'study':<9} {'n_pre':>6} {'rounds':>6} | dTS vs NUTS: {'max|SME|':>8} "
        f"{'sd ratio':>11} {'W2 (floor)':>15} | vs exact (true prior): {'dTS W2':>7} "
        f"{'NUTS W2':>7} {'floor':>6}"
    )
    for r in rows:
        sd = (
            "n/a"
            if r.get("min_sd_ratio") is None
            else f"{r['min_sd_ratio']:.2f}-{r['max_sd_ratio']:.2f}"
        )
        print(
            f"{r['study']:<9} {r['pretrain_samples']:>6} {r['rounds']:>6} | "
            f"{'':>12} {f(r, 'max_abs_standardized_mean_error'):>8} {sd:>11} "
            f"{f(r, 'w2'):>7} ({f(r, 'w2_iid_floor')}) | {'':>22} "
            f"{f(r, 'dts_vs_exact_w2'):>7} {f(r, 'nuts_vs_exact_w2'):>7} "
            f"{f(r, 'exact_w2_iid_floor'):>6}"
        )


def _calibrate_all(args, command: str) -> int:

    t0 = time.perf_counter()
    settings = {
        "replications": args.replications,
        "rounds": args.rounds,
        "num_actions": args.K,
        "num_effects": args.L,
        "dim": args.d,
        "seed": args.seed,
        "alpha": args.alpha,
    }
    rows = calibration_table(**settings, out_dir=args.out, progress=True)
    settings.update(command=command, wall_seconds=time.perf_counter() - t0)
    path = write_calibration_table(rows, args.out, settings=settings)
    print(path.with_name("table.md").read_text(), end="")
    print(f"wrote {path}, {path.with_suffix('.csv')}, {path.with_suffix('.md')}")
    print(f"total {settings['wall_seconds']:.1f} s")
    # Exit 0 when every control is rejected: a posterior's own verdict is a finding.
    return 0 if all(c["rejected"] for r in rows for c in r["controls"]) else 1


def _calibrate(args, command: str) -> int:

    if args.all:
        return _calibrate_all(args, command)
    t0 = time.perf_counter()
    result = run_calibration(
        args.posterior,
        replications=args.replications,
        rounds=args.rounds,
        num_actions=args.K,
        num_effects=args.L,
        dim=args.d,
        seed=args.seed,
        alpha=args.alpha,
    )
    result["wall_seconds"] = time.perf_counter() - t0
    result["command"] = command
    path = write_calibration(result, args.out)
    uni = result["uniformity"]
    print(
        f"{result['posterior']}: uniformity {uni['verdict'].upper()} "
        f"(p = {uni['p_value']:.3g}, {args.replications} replications, {args.rounds} rounds)"
    )
    for level, row in result["coverage"].items():
        print(f"  central {level} % interval coverage {row['rate']:.3f} ± {row['se']:.3f}")
    for c in result.get("negative_controls", []):
        print(f"  negative control {c['name']}: {'rejected' if c['rejected'] else 'NOT rejected'}")
    print(f"wrote {path} and {path.with_name('calibration.png')}")
    return 0 if uni["verdict"] == "pass" or ":" in result["posterior"] else 1


def _check_coupling(args, command: str) -> int:

    t0 = time.perf_counter()
    result = run_coupling_checks(
        d=args.d,
        N=args.N,
        rounds=args.rounds,
        replications=args.replications,
        seed=args.seed,
        gamma=args.gamma,
        delta=args.delta,
        progress=True,
    )
    path = write_coupling_report(
        result,
        args.out,
        command=command,
        wall_seconds=time.perf_counter() - t0,
    )
    for c in result["checks"]:
        print(f"  {c['name']:<28} {c['verdict']}")
    for c in result["negative_controls"]:
        label = f"{c['name']} ({c.get('check', '')})"
        print(f"  control {label:<48} {'rejected' if c['rejected'] else 'NOT rejected'}")
    print(f"wrote {path}")
    ok = all(c["verdict"] == "pass" for c in result["checks"]) and all(
        c["rejected"] for c in result["negative_controls"]
    )
    return 0 if ok else 1


def _print_verdicts(record: dict) -> None:
    print(f"\n{record['agent']} on {record['model']}: verdict {record['verdict'].upper()}")
    print(f"  {'check':<18} {'t':>6}  {'verdict':<8} statistic")
    for c in record["checks"]:
        s = c["statistics"]
        if c["name"] == "exact-comparison" and "critical_value" in s:
            z = [
                abs(v)
                for k in ("z_mean", "z_sd", "z_cross")
                for v in (s.get(k) or [])
                if v is not None
            ]
            z.append(abs(s.get("z_mahalanobis") or 0.0))
            stat = f"max |z| {max(z):.2f} vs critical {s['critical_value']:.2f}"
        elif "max_abs_standardized_mean_error" in s:
            stat = (
                f"max |std. mean error| {s['max_abs_standardized_mean_error']:.3f}, "
                f"W2 {s['w2']:.3f}"
            )
        else:
            stat = s.get("reason", "")
        print(f"  {c['name']:<18} {c['checkpoint']:>6}  {c['verdict']:<8} {stat}")
    if record["negative_controls"]:
        print(f"  {'negative control':<26} {'t':>6}  rejected")
        for c in record["negative_controls"]:
            r = {True: "yes", False: "NO", None: "n/a (" + c.get("note", "") + ")"}
            print(f"  {c['name']:<26} {c['checkpoint']:>6}  {r[c['rejected']]}")


def _parse_set(items) -> dict:
    """``--set KEY=VALUE`` pairs; values are read as int, float, true/false or text."""
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set is {item!r}; expected OPTION=VALUE")
        value: object = text
        for cast in (int, float):
            try:
                value = cast(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        options[key] = value
    return options


_SIMULATE_OPTIONS = {
    "K": "num_actions",
    "L": "num_effects",
    "d": "dim",
    "N": "num_arms",
    "runs": "num_runs",
    "rounds": "num_rounds",
    "context": "context",
    "factored_variant": "factored_variant",
    "mask_prob": "mask_prob",
    "data": "data",
    "prior_dir": "prior_dir",
    "pretrain_samples": "pretrain_samples",
}


def _simulate(args, command: str) -> int:

    agents = None if args.agents is None else [a.strip() for a in args.agents.split(",")]
    options = {opt: getattr(args, attr) for attr, opt in _SIMULATE_OPTIONS.items()}
    for key, value in _parse_set(args.set).items():
        if options.get(key) is not None:
            raise ValueError(f"option {key} is given twice (as a flag and with --set)")
        options[key] = value
    t0 = time.perf_counter()
    result = run_experiment(
        args.experiment, seed=args.seed, progress=not args.quiet, agents=agents, **options
    )
    summary = write_simulation_report(
        result, args.out, command=command, total_seconds=time.perf_counter() - t0
    )
    width = max(len(n) for n in summary["agents"])
    print(f"{summary['experiment']}: final cumulative regret (mean ± se over runs)")
    for name, row in sorted(summary["agents"].items(), key=lambda kv: kv[1]["final_regret_mean"]):
        print(
            f"  {name:<{width}}  {row['final_regret_mean']:10.2f} ± {_se(row['final_regret_se'])}"
            f"   ({row['wall_seconds']:.1f} s)"
        )
    out = Path(args.out)
    print("wrote " + ", ".join(str(out / f) for f in summary["files"]))
    print(f"total {summary['wall_seconds']:.1f} s")
    return 0


def _se(value) -> str:
    """A standard error for printing; None (one run) prints as n/a."""
    return "n/a" if value is None else f"{value:.2f}"


def _pretrain(args, command: str) -> int:

    record = pretrain(
        args.samples,
        args.out,
        num_steps=args.steps,
        num_samples=args.num_samples,
        dim=args.dim,
        epochs=args.epochs,
        hidden=args.hidden,
        schedule=args.schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        seed=args.seed,
        model_samples=args.model_samples,
        progress=not args.quiet,
        command=command,
    )
    print(
        f"DDPM on {record['samples']} ({record['num_samples']} x {record['dim']}), "
        f"L={args.steps}, {record['epochs']} epochs ({record['adam_steps']} Adam steps): "
        f"{record['training_seconds']:.1f} s, final loss {record['final_loss']:.4g}"
    )
    fmt = ", ".join
    print(f"  training mean [{fmt(f'{v:.3f}' for v in record['training_mean'])}]")
    print(f"  model mean    [{fmt(f'{v:.3f}' for v in record['model_mean'])}]")
    print("wrote " + ", ".join(str(Path(args.out) / f) for f in record["files"]))
    return 0


def _ablation(args, command: str) -> int:
    options = _parse_set(args.set)
    options.update(num_runs=args.runs, num_rounds=args.rounds)
    agents = None if args.agents is None else [a.strip() for a in args.agents.split(",")]
    values = [ablation_value(v.strip()) for v in args.values.split(",") if v.strip()]
    t0 = time.perf_counter()
    rows = run_ablation(
        args.experiment,
        args.over,
        values,
        seed=args.seed,
        progress=not args.quiet,
        agents=agents,
        **options,
    )
    settings = {
        "experiment": args.experiment,
        "over": args.over,
        "values": values,
        "options": {k: v for k, v in options.items() if v is not None},
        "agents": agents,
        "wall_seconds": time.perf_counter() - t0,
    }
    path = write_ablation(rows, args.out, command=command, seed=args.seed, settings=settings)
    print(f"{args.experiment}: final cumulative regret (mean ± se) against {rows[0]['option']}")
    for r in rows:
        print(
            f"  {r['option']}={r['value']!s:<8} {r['agent']:<10} "
            f"{r['final_regret_mean']:10.2f} ± {r['final_regret_se']:.2f}   "
            f"({r['wall_seconds']:.1f} s)"
        )
    print(f"wrote {path}, {path.with_suffix('.png')}, {path.with_suffix('.json')}")
    return 0


def main(argv=None) -> int:

    configure_cpu()

    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_line(["ppl-bandits", *argv])
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "out", None) is not None:
            check_out_dir(args.out)
        if args.command == "simulate":
            return _simulate(args, command)
        if args.command in ("audit", "demo"):
            return _audit(args, command)
        if args.command == "discrepancy":
            return _discrepancy(args, command)
        if args.command == "calibrate":
            return _calibrate(args, command)
        if args.command == "check-coupling":
            return _check_coupling(args, command)
        if args.command == "pretrain":
            return _pretrain(args, command)
        if args.command == "ablation":
            return _ablation(args, command)
    except ValueError as exc:
        print(f"ppl-bandits {args.command}: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
