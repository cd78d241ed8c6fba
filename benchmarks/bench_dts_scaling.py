"""Per-round cost of dTS against the number of actions K (L = 4, d = 20, linear links),
and the wall time of one (K = 10⁴, L = 4, d = 20, n = 5000) run.

Targets (issue 5): the cost grows linearly in K, log-log slope between the smallest
K >= 1000 and the largest K (5·10⁴) at most 1.1; one run of the large setting takes under
60 s on this CPU, compilation included. Each K is compiled first (not timed), then
``--rounds`` rounds of one run are timed; all times come from this one process.

    python benchmarks/bench_dts_scaling.py [--rounds 300] [--ks 1000,3000,10000,30000,50000]
"""

from __future__ import annotations

import argparse
import math

import jax
import numpy as np
from _common import Timer, per_round_seconds, save

from ppl_bandits.core.runner import simulate
from ppl_bandits.diffusion.agents import make_diffusion_agent
from ppl_bandits.diffusion.environment import diffusion_environment
from ppl_bandits.runtime import configure_cpu

SLOPE_MAX = 1.1
RUN_SECONDS_MAX = 60.0


def cost(K: int, L: int, d: int, rounds: int) -> float:
    return per_round_seconds(diffusion_environment(K, L, d), make_diffusion_agent("dTS"), rounds)


def full_run_seconds(K: int, L: int, d: int, rounds: int, seed: int = 1) -> dict:
    """Wall time of one run as ``ppl-bandits simulate`` does it (draw, compile, rounds)."""
    env = diffusion_environment(K, L, d)
    agent = make_diffusion_agent("dTS")
    key = jax.random.key(seed)
    with Timer() as t:
        res = simulate(key, env, agent, num_rounds=rounds, num_runs=1)
        regret = np.asarray(jax.block_until_ready(res.regret))
    return {"seconds": t.seconds, "final_regret": float(regret.sum())}


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--ks", default="1000,3000,10000,30000,50000")
    p.add_argument("--L", type=int, default=4)
    p.add_argument("--d", type=int, default=20)
    p.add_argument("--run-K", type=int, default=10_000)
    p.add_argument("--run-rounds", type=int, default=5000)
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    rows, times = [], []
    print(f"dTS per-round cost, L={args.L}, d={args.d}, {args.rounds} timed rounds, one run")
    print(f"{'K':>8} {'ms/round':>10} {'ratio to first K':>17}")
    for K in ks:
        s = cost(K, args.L, args.d, args.rounds)
        times.append(s)
        rows.append({"K": K, "seconds_per_round": s})
        print(f"{K:>8} {1e3 * s:>10.4f} {s / times[0]:>17.2f}", flush=True)
    lo = [i for i, k in enumerate(ks) if k >= 1000]
    verdicts = {}
    if len(lo) >= 2:
        i, j = lo[0], lo[-1]
        slope = math.log(times[j] / times[i]) / math.log(ks[j] / ks[i])
        verdicts["slope"] = {"value": slope, "K_range": [ks[i], ks[j]], "pass": slope <= SLOPE_MAX}
        print(
            f"log-log slope K={ks[i]}..{ks[j]}: {slope:.3f} (target <= {SLOPE_MAX}): "
            f"{'PASS' if slope <= SLOPE_MAX else 'FAIL'}"
        )
    full = float(np.polyfit(np.log(ks), np.log(times), 1)[0]) if len(ks) > 1 else float("nan")
    print(f"least-squares slope over all K: {full:.3f}")
    run = full_run_seconds(args.run_K, args.L, args.d, args.run_rounds)
    ok = run["seconds"] <= RUN_SECONDS_MAX
    verdicts["run"] = {**run, "pass": ok, "target_seconds": RUN_SECONDS_MAX}
    print(
        f"one run K={args.run_K}, L={args.L}, d={args.d}, n={args.run_rounds} (compile "
        f"included): {run['seconds']:.1f} s (target < {RUN_SECONDS_MAX:.0f} s): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    result = {
        "rows": rows,
        "verdicts": verdicts,
        "least_squares_slope": full,
        "rounds": args.rounds,
        "L": args.L,
        "d": args.d,
    }
    print(f"wrote {save('dts_scaling', result)}")
    return result


if __name__ == "__main__":
    main()
