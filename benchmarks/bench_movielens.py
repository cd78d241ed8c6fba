"""MovieLens: embedding time on ML-1M-sized data and the full Fig. 3 linear panel.

Data: the MovieLens ratings at $MOVIELENS_PATH (a file or an unpacked archive) when that
variable names an existing path; otherwise synthetic ratings of ML-1M's size (6040 users,
3706 movies, 10^6 ratings; :func:`ppl_bandits.data.movielens.synthetic_ratings`) written to a
temporary ``ratings.dat``. The output says which.

Measured: loading, rank-5 ALS (with its held-out RMSE), the 5-component GMM, then the
full Fig. 3 linear panel (5 agents x 50 runs x 5000 rounds, K = 100, L = 5, d = 5,
compilation included) once the embeddings exist. Target: the panel in under 2 minutes.

    python benchmarks/bench_movielens.py [--runs 50] [--rounds 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import jax
from _common import Timer, save

from ppl_bandits.experiments.catalog import run_experiment
from ppl_bandits.runtime import configure_cpu

PANEL_SECONDS_MAX = 120.0


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    from ppl_bandits.data.movielens import load_ratings, synthetic_ratings, write_ratings
    from ppl_bandits.experiments.movielens import movielens_structure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    env_path = os.environ.get("MOVIELENS_PATH")
    tmp = None
    if env_path and Path(env_path).exists():
        path, source = Path(env_path), f"MovieLens ratings at MOVIELENS_PATH={env_path}"
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "ratings.dat"
        with Timer() as t_gen:
            write_ratings(path, synthetic_ratings(seed=args.seed), "1m")
        source = (
            "synthetic ML-1M-sized ratings (6040 users, 3706 movies, 1e6 ratings; "
            f"MOVIELENS_PATH unset or missing), generated in {t_gen.seconds:.1f} s"
        )
    print(f"data: {source}")
    with Timer() as t_load:
        ratings = load_ratings(path)
    with Timer() as t_struct:
        s = movielens_structure(path, rank=5, num_effects=5, seed=0)
    e = s.embeddings
    gmm_seconds = t_struct.seconds - e.seconds
    print(
        f"  {ratings.num_users} users x {ratings.num_items} movies, {ratings.num_ratings} "
        f"ratings; load {t_load.seconds:.1f} s"
    )
    print(
        f"  rank-5 ALS: {e.seconds:.1f} s, {e.iterations} sweeps (converged: {e.converged}); "
        f"train RMSE {e.train_rmse:.4f}, held-out RMSE {e.heldout_rmse:.4f} (10 % held out)"
    )
    print(f"  GMM (L = 5) on {len(s.movies)} movie vectors: {gmm_seconds:.1f} s")
    with Timer() as t:
        res = run_experiment(
            "movielens-linear",
            seed=args.seed,
            progress=False,
            data=str(path),
            num_runs=args.runs,
            num_rounds=args.rounds,
        )
        jax.block_until_ready([r.regret for r in res.results.values()])
    print(
        f"Fig. 3 linear panel: {len(res.results)} agents x {args.runs} runs x {args.rounds} "
        "rounds (K=100, L=5, d=5)"
    )
    from ppl_bandits.experiments.registry import cumulative_regret

    final = {}
    for name, r in res.results.items():
        mean, se = cumulative_regret(r)
        final[name] = (float(mean[-1]), float(se[-1]))
        print(
            f"  {name:<12} {res.wall_seconds[name]:7.2f} s (compile included)   "
            f"regret {mean[-1]:9.1f} ± {se[-1]:.1f}"
        )
    print(f"  problem draw {res.settings['draw_seconds']:7.2f} s")
    ok = t.seconds < PANEL_SECONDS_MAX
    full = args.runs == 50 and args.rounds == 5000
    print(
        f"total {t.seconds:.1f} s (target < {PANEL_SECONDS_MAX:.0f} s for the full panel"
        f"{'' if full else '; this is not the full panel'}): {'PASS' if ok else 'FAIL'}"
    )
    result = {
        "data": source,
        "num_users": ratings.num_users,
        "num_items": ratings.num_items,
        "num_ratings": ratings.num_ratings,
        "load_seconds": t_load.seconds,
        "embedding_seconds": e.seconds,
        "embedding_iterations": e.iterations,
        "embedding_converged": e.converged,
        "train_rmse": e.train_rmse,
        "heldout_rmse": e.heldout_rmse,
        "gmm_seconds": gmm_seconds,
        "panel_seconds": t.seconds,
        "agent_seconds": res.wall_seconds,
        "final_regret": final,
        "runs": args.runs,
        "rounds": args.rounds,
        "target_seconds": PANEL_SECONDS_MAX,
        "pass": ok,
    }
    print(f"wrote {save('movielens', result)}")
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
