"""Cost of a simulation-based calibration study of meTS-Lin (K=20, L=3, d=2, 200 rounds).

Three measurements, all in this one process:

1. ``--replications`` (1000) replications, compilation included (a cold study: the first
   call of :func:`validation.calibration.run_calibration` for these shapes);
2. ``--large`` (10 000) replications, timed once, compilation included (compiling is a
   few seconds against minutes of simulation at this size);
3. the 1000-replication study sharded over 1, 2 and 4 host devices (each compiled first,
   then timed warm), with the ratio to one device. On a CPU host the "devices" share the
   machine's cores, so the ratio measures XLA's partitioning, not extra hardware.

    python benchmarks/bench_sbc.py [--replications 1000] [--large 10000] [--devices 1,2,4]
"""

from __future__ import annotations

import argparse

from _common import Timer, save

from ppl_bandits.runtime import configure_cpu

SETTING = {"rounds": 200, "num_actions": 20, "num_effects": 3, "dim": 2, "seed": 0}


def _study(replications: int, devices) -> dict:
    from validation.calibration import run_calibration

    return run_calibration("meTS-Lin", replications=replications, devices=devices, **SETTING)


def main(argv=None) -> dict:
    configure_cpu()  # before JAX starts its backend; see ppl_bandits/runtime.py
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replications", type=int, default=1000)
    p.add_argument("--large", type=int, default=10_000)
    p.add_argument("--devices", default="1,2,4")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    all_devices = jax.devices()
    counts = [int(c) for c in args.devices.split(",") if int(c) <= len(all_devices)]
    print(f"meTS-Lin SBC, {SETTING}, host devices available: {len(all_devices)}")

    with Timer() as cold:
        res = _study(args.replications, all_devices)
    print(
        f"{args.replications} replications, compilation included: {cold.seconds:.2f} s "
        f"(verdict {res['uniformity']['verdict']}, p = {res['uniformity']['p_value']:.3g})",
        flush=True,
    )

    with Timer() as large:
        big = _study(args.large, all_devices)
    print(
        f"{args.large} replications, compilation included: {large.seconds:.2f} s "
        f"(verdict {big['uniformity']['verdict']}, p = {big['uniformity']['p_value']:.3g}; "
        f"95% coverage {big['coverage']['95']['rate']:.4f} ± {big['coverage']['95']['se']:.4f})",
        flush=True,
    )

    scaling, reference_pit = [], None
    print(f"{'devices':>8} {'seconds':>9} {'ratio to 1':>11} {'identical':>10}")
    for n in counts:
        devices = all_devices[:n]
        _study(args.replications, devices)  # compile for this sharding
        with Timer() as t:
            r = _study(args.replications, devices)
        if reference_pit is None:
            reference_pit = r["pit"]
        same = bool(np.array_equal(reference_pit, r["pit"]))
        row = {"devices": n, "seconds": t.seconds, "identical_to_one_device": same}
        row["ratio_to_one_device"] = t.seconds / scaling[0]["seconds"] if scaling else 1.0
        scaling.append(row)
        print(f"{n:>8} {t.seconds:>9.2f} {row['ratio_to_one_device']:>11.2f} {same!s:>10}")

    result = {
        "setting": SETTING,
        "replications": args.replications,
        "cold_seconds": cold.seconds,
        "large_replications": args.large,
        "large_seconds": large.seconds,
        "large_uniformity": {k: big["uniformity"][k] for k in ("p_value", "verdict")},
        "large_coverage": big["coverage"],
        "scaling": scaling,
    }
    print(f"wrote {save('sbc', result)}")
    return result


if __name__ == "__main__":
    main()
