"""Per-round cost of meTS-Lin against the number of actions K (d = 2 and d = 5, L = 3).

The cost must grow linearly in K: the log-log slope between K = 1e3 and K = 1e5 must be
at most 1.1. Each K is compiled first (not timed), then ``--rounds`` rounds of one run are
timed; the slope is a ratio of times measured in this one process.

    python benchmarks/bench_mets_scaling.py [--rounds 300] [--ks 100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from _common import per_round_seconds, save

from ppl_bandits.mixed_effect.catalog import make_agent
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from ppl_bandits.runtime import configure_cpu

SLOPE_MAX = 1.1


def cost(K: int, L: int, d: int, rounds: int) -> float:
    return per_round_seconds(mixed_effect_environment(K, L, d), make_agent("meTS-Lin"), rounds)


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--ks", default="100,1000,10000,100000")
    p.add_argument("--dims", default="2,5")
    p.add_argument("--L", type=int, default=3)
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    rows, verdicts = [], {}
    print(f"meTS-Lin per-round cost, L={args.L}, {args.rounds} timed rounds, one run")
    print(f"{'d':>3} {'K':>8} {'ms/round':>10} {'ratio to first K':>17}")
    for d in (int(x) for x in args.dims.split(",")):
        times = []
        for K in ks:
            s = cost(K, args.L, d, args.rounds)
            times.append(s)
            rows.append({"d": d, "K": K, "seconds_per_round": s})
            print(f"{d:>3} {K:>8} {1e3 * s:>10.4f} {s / times[0]:>17.2f}", flush=True)
        lo = [i for i, k in enumerate(ks) if k >= 1000]
        if len(lo) >= 2:
            i, j = lo[0], lo[-1]
            slope = math.log(times[j] / times[i]) / math.log(ks[j] / ks[i])
            verdicts[f"d={d}"] = {
                "slope": slope,
                "K_range": [ks[i], ks[j]],
                "pass": slope <= SLOPE_MAX,
            }
            print(
                f"    log-log slope K={ks[i]}..{ks[j]}: {slope:.3f} "
                f"(target <= {SLOPE_MAX}): {'PASS' if slope <= SLOPE_MAX else 'FAIL'}"
            )
        full = np.polyfit(np.log(ks), np.log(times), 1)[0]
        print(f"    least-squares slope over all K: {full:.3f}")
    result = {"rows": rows, "slopes": verdicts, "rounds": args.rounds, "L": args.L}
    print(f"wrote {save('mets_scaling', result)}")
    return result


if __name__ == "__main__":
    main()
