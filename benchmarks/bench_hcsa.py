"""HCSA+TS throughput against LinTS-shared, and the wall time of the default ``hcsa`` run.

1. Rounds per second of HCSA+TS and of LinTS-shared at d = 20, N = 20 in the same process, on
   one run and on the experiment's batch of 20 runs (compilation excluded: each agent runs
   once to compile, then the timed run reuses the compiled chunks). The ratio is printed;
   it is a measurement, not a target (HCSA+TS does two d × d eigendecompositions a round,
   LinTS-shared one Cholesky factorization).
2. The default ``hcsa`` experiment (6 agents, 20 trials, its default horizon; compilation,
   problem draws and the prediction-error metric included) against the 10-minute target
   on this CPU: PASS/FAIL.

    python benchmarks/bench_hcsa.py [--rounds 2000] [--experiment-rounds T] [--skip-experiment]

Writes reports/bench/hcsa.json.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from _common import Timer, save

from ppl_bandits.experiments.catalog import EXPERIMENTS, run_experiment
from ppl_bandits.experiments.registry import cumulative_regret
from ppl_bandits.runtime import configure_cpu

TARGET_SECONDS = 600.0


def _throughput(env, agent, *, rounds: int, runs: int, seed: int) -> float:
    """Rounds per second (summed over runs) of a second, already compiled, simulation."""
    from ppl_bandits.core.runner import draw_problems, simulate

    key = jax.random.key(seed)
    problems = draw_problems(key, env, runs)
    kw = {"num_rounds": rounds, "num_runs": runs, "problems": problems, "chunk_size": rounds}
    jax.block_until_ready(simulate(key, env, agent, **kw).regret)  # compile
    with Timer() as t:
        jax.block_until_ready(simulate(key, env, agent, **kw).regret)
    return rounds * runs / t.seconds


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2000, help="rounds of the throughput runs")
    p.add_argument(
        "--experiment-rounds", type=int, default=None, help="horizon (default: the experiment's)"
    )
    p.add_argument("--skip-experiment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from ppl_bandits.experiments.hcsa import hcsa_experiment_agents
    from ppl_bandits.linear_contextual.environment import hcsa_environment

    env = hcsa_environment(20, 20)
    hcsa, lints = hcsa_experiment_agents(horizon=args.rounds, names=["HCSA+TS", "LinTS-shared"])
    result: dict = {"d": 20, "N": 20, "throughput_rounds": args.rounds, "throughput": {}}
    print(f"throughput at d=20, N=20 ({args.rounds} rounds, compilation excluded)")
    for runs in (1, 20):
        rate_h = _throughput(env, hcsa, rounds=args.rounds, runs=runs, seed=args.seed)
        rate_l = _throughput(env, lints, rounds=args.rounds, runs=runs, seed=args.seed)
        ratio = rate_l / rate_h
        result["throughput"][f"runs={runs}"] = {
            "hcsa_ts_rounds_per_second": rate_h,
            "shared_lin_ts_rounds_per_second": rate_l,
            "shared_lin_ts_over_hcsa_ts": ratio,
        }
        print(
            f"  {runs:>2} run(s): HCSA+TS {rate_h:9.0f} rounds/s, "
            f"LinTS-shared {rate_l:9.0f} rounds/s; LinTS-shared/HCSA+TS = {ratio:.2f}"
        )

    if not args.skip_experiment:
        with Timer() as t:
            res = run_experiment(
                "hcsa", seed=args.seed, progress=False, num_rounds=args.experiment_rounds
            )
        s = res.settings
        ok = t.seconds <= TARGET_SECONDS
        print(
            f"default hcsa experiment: {len(res.results)} agents x {s['num_runs']} runs x "
            f"{s['num_rounds']} rounds (d={s['dim']}, N={s['num_arms']}, "
            f"mask_prob={s['mask_prob']}, kind={s['kind']})"
        )
        print(f"  {'agent':<13} {'seconds':>8} {'regret':>16} {'max pred. error':>18}")
        table = {}
        for name, r in res.results.items():
            mean, se = cumulative_regret(r)
            _, values = res.metrics["max_prediction_error"][name]
            err = np.asarray(values[:, -1], np.float64)
            err_se = err.std(ddof=1) / np.sqrt(err.size) if err.size > 1 else float("nan")
            table[name] = {
                "wall_seconds": res.wall_seconds[name],
                "final_regret_mean": float(mean[-1]),
                "final_regret_se": float(se[-1]),
                "final_max_prediction_error_mean": float(err.mean()),
                "final_max_prediction_error_se": float(err_se),
            }
            print(
                f"  {name:<13} {res.wall_seconds[name]:8.1f} {mean[-1]:9.1f} ± {se[-1]:5.1f}"
                f" {err.mean():11.4f} ± {err_se:.4f}"
            )
        print(f"  problem draw {s['draw_seconds']:.1f} s")
        print(
            f"total {t.seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s): "
            f"{'PASS' if ok else 'FAIL'}"
        )
        defaults = EXPERIMENTS["hcsa"].defaults
        result["experiment"] = {
            "total_seconds": t.seconds,
            "target_seconds": TARGET_SECONDS,
            "pass": ok,
            "is_default_horizon": s["num_rounds"] == defaults["num_rounds"],
            "settings": {k: v for k, v in s.items() if k != "checkpoints"},
            "agents": table,
        }
    result["devices"] = [str(d) for d in jax.devices()]
    print(f"wrote {save('hcsa', result)}")
    return result


if __name__ == "__main__":
    main()
