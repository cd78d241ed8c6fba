"""Supervised-to-bandit benchmark on scikit-learn's digits: shared-parameter dTS vs LinTS, HierTS.

Classes are arms, the reward is 1 for the right class (ppl_bandits/supervised.py describes
the pre-training: PCA features, bootstrap ridge class vectors, a DDPM on them). Prints the
final cumulative regret of each agent (mean ± se over runs), its online accuracy
1 − regret / rounds, the wall time (compilation included) and the pre-training time.
Targets: every agent beats uniform guessing (regret < 0.9 n), and dTS-shared's regret is
below LinTS's (the diffusion prior against the Gaussian marginals of the same samples).

    python benchmarks/bench_supervised.py [--runs 10] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import math

import jax
from _common import Timer, save

from ppl_bandits.experiments.catalog import run_experiment
from ppl_bandits.experiments.registry import cumulative_regret
from ppl_bandits.runtime import configure_cpu


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=None, help="DDPM epochs (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with Timer() as t:
        res = run_experiment(
            "supervised-digits",
            seed=args.seed,
            progress=False,
            num_runs=args.runs,
            num_rounds=args.rounds,
            epochs=args.epochs,
        )
        jax.block_until_ready([r.regret for r in res.results.values()])
    s = res.settings
    n = args.rounds
    print(
        f"digits ({s['num_components']} PCA components + intercept, 10 classes as arms), "
        f"{args.runs} runs x {n} rounds"
    )
    print(
        f"  pre-training {s['pretrain_seconds']:.1f} s (DDPM {s['epochs']} epochs, "
        f"{s['num_steps']} steps); ridge accuracy on the bandit half {s['pretrain_accuracy']:.3f}"
    )
    print(f"  {'agent':<12} {'regret':>16} {'accuracy':>9} {'wall s':>8}")
    final = {}
    for name, r in res.results.items():
        mean, se = cumulative_regret(r)
        final[name] = {
            "regret": float(mean[-1]),
            "se": float(se[-1]),
            "accuracy": 1.0 - float(mean[-1]) / n,
            "seconds": res.wall_seconds[name],
        }
        print(
            f"  {name:<12} {mean[-1]:9.1f} ± {se[-1]:5.1f} {1 - mean[-1] / n:9.3f} "
            f"{res.wall_seconds[name]:8.1f}"
        )
    print(f"total {t.seconds:.1f} s (pre-training and compilation included)")
    beats_random = all(v["regret"] < 0.9 * n for v in final.values())
    print(
        f"every agent beats uniform guessing (regret < {0.9 * n:.0f}): "
        f"{'PASS' if beats_random else 'FAIL'}"
    )
    verdict = None
    if "dTS-shared" in final and "LinTS" in final:
        # A comparison, not a target: the difference with its (unpaired, conservative) se.
        a, b = final["dTS-shared"], final["LinTS"]
        diff, se = a["regret"] - b["regret"], math.hypot(a["se"], b["se"])
        verdict = {"difference": diff, "se": se, "significant": abs(diff) > 2 * se}
        print(
            f"dTS-shared − LinTS final regret: {diff:.1f} ± {se:.1f}"
            f" ({'beyond' if verdict['significant'] else 'within'} 2 se)"
        )
    result = {
        "runs": args.runs,
        "rounds": n,
        "settings": {k: v for k, v in s.items() if isinstance(v, int | float | str)},
        "final": final,
        "total_seconds": t.seconds,
        "beats_random": beats_random,
        "dts_minus_lints": verdict,
    }
    print(f"wrote {save('supervised', result)}")
    return result


if __name__ == "__main__":
    main()
