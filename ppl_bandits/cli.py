"""The ``ppl-bandits`` command line.

``ppl-bandits simulate EXPERIMENT [--runs R] [--rounds N] [--K K --L L --d d] [--seed S]
[--out DIR]`` runs a named experiment and writes DIR/regret.csv, DIR/regret.png and
DIR/summary.json. ``ppl-bandits demo`` runs the small built-in default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    from ppl_bandits.experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(
        prog="ppl-bandits", description="Structured Thompson sampling with audited posteriors."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a named experiment and write its regret report")
    sim.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    sim.add_argument("--runs", type=_positive_int, help="independent runs (default 50)")
    sim.add_argument("--rounds", type=_positive_int, help="rounds per run (default 5000)")
    sim.add_argument("--K", type=_positive_int, help="number of actions (default 100)")
    sim.add_argument("--L", type=_positive_int, help="number of effects (default 3)")
    sim.add_argument("--d", type=_positive_int, help="context dimension (default 2)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--agents", help="comma-separated agent names (default: the paper's)")
    sim.add_argument(
        "--context",
        choices=("shared", "pool"),
        default="shared",
        help="one context for all actions, or the authors' per-action context pool",
    )
    sim.add_argument(
        "--factored-variant",
        choices=("mean-field", "published"),
        default="mean-field",
        help="mean of the factored (-Fa) agents",
    )
    sim.add_argument("--out", default="reports/simulate", help="output directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="the built-in default job (small, a few minutes)")
    demo.add_argument("--out", default="reports/demo")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _simulate(args, command: str) -> int:
    from ppl_bandits.experiments import run_experiment
    from ppl_bandits.report import write_simulation_report

    agents = None if args.agents is None else [a.strip() for a in args.agents.split(",")]
    t0 = time.perf_counter()
    result = run_experiment(
        args.experiment,
        seed=args.seed,
        progress=not args.quiet,
        num_actions=args.K,
        num_effects=args.L,
        dim=args.d,
        num_rounds=args.rounds,
        num_runs=args.runs,
        context=args.context,
        agents=agents,
        factored_variant=args.factored_variant,
    )
    summary = write_simulation_report(
        result, args.out, command=command, total_seconds=time.perf_counter() - t0
    )
    width = max(len(n) for n in summary["agents"])
    print(f"{summary['experiment']}: final cumulative regret (mean ± se over runs)")
    for name, row in sorted(summary["agents"].items(), key=lambda kv: kv[1]["final_regret_mean"]):
        print(
            f"  {name:<{width}}  {row['final_regret_mean']:10.2f} ± {row['final_regret_se']:.2f}"
            f"   ({row['wall_seconds']:.1f} s)"
        )
    out = Path(args.out)
    print(f"wrote {out / 'regret.csv'}, {out / 'regret.png'}, {out / 'summary.json'}")
    print(f"total {summary['wall_seconds']:.1f} s")
    return 0


def _demo(args, command: str) -> int:
    ns = argparse.Namespace(
        experiment="mets-linear",
        runs=20,
        rounds=1000,
        K=100,
        L=3,
        d=2,
        seed=args.seed,
        agents=None,
        context="shared",
        factored_variant="mean-field",
        out=args.out,
        quiet=False,
    )
    return _simulate(ns, command)


def main(argv=None) -> int:
    from ppl_bandits.provenance import command_line

    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_line(["ppl-bandits", *argv])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args, command)
        if args.command == "demo":
            return _demo(args, command)
    except ValueError as exc:
        print(f"ppl-bandits {args.command}: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
