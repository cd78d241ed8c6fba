"""Cost of a simulation-based calibration study of meTS-Lin (K=20, L=3, d=2, 200 rounds).

Every measurement runs in a fresh Python process, so "compilation included" means what it
says (nothing is cached between measurements; JAX's persistent cache is not enabled):

1. ``--replications`` (1000) replications on the default 4 host devices; target < 20 s;
2. ``--large`` (10 000) replications, same; target < 120 s;
3. the ``--replications`` study with ``--xla_force_host_platform_device_count`` = 1, 2
   and 4, cold then warm (the same study again in the same process), with the ratio to
   one device and a check that the PITs are bit-identical across device counts. On a CPU
   host the "devices" share the machine's cores, so the ratio measures XLA's
   partitioning, not extra hardware.

Each child reports the study's wall seconds (after ``import``; the imports are reported
apart), its CPU seconds (all threads; a contention-robust upper bound of the wall time on
an idle 2-core machine, since compilation is single-threaded) and where the time went
(simulate = compile + run of the fused program, PIT read-out, uniformity test, controls).
The load average is printed: on a shared machine the wall times are pessimistic.

    python benchmarks/bench_sbc.py [--replications 1000] [--large 10000] [--devices 1,2,4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import save

SETTING = {"rounds": 200, "num_actions": 20, "num_effects": 3, "dim": 2, "seed": 0}
TARGETS = {"cold_1000": 20.0, "cold_large": 120.0}


def _child(replications: int, warm: bool) -> None:
    """Run in a fresh process: one cold study (and a warm one); print a JSON line."""
    started, cpu0 = time.perf_counter(), time.process_time()
    from ppl_bandits.runtime import configure_cpu

    configure_cpu()
    import jax
    import numpy as np

    from validation.calibration import run_calibration

    imports = time.perf_counter() - started
    jax.devices()  # start the backend outside the timed study

    def study():
        t, c = time.perf_counter(), time.process_time()
        res = run_calibration("meTS-Lin", replications=replications, **SETTING)
        return res, time.perf_counter() - t, time.process_time() - c

    res, wall, cpu = study()
    out = {
        "replications": replications,
        "devices": len(jax.devices()),
        "imports_seconds": imports,
        "cold_seconds": wall,
        "cold_cpu_seconds": cpu,
        "cold_timings": res["timings"],
        "verdict": res["uniformity"]["verdict"],
        "p_value": res["uniformity"]["p_value"],
        "coverage_95": res["coverage"]["95"]["rate"],
        "coverage_95_se": res["coverage"]["95"]["se_replications"],
        "controls_rejected": [c["rejected"] for c in res["negative_controls"]],
        "pit_sha1": hashlib.sha1(np.ascontiguousarray(res["pit"]).tobytes()).hexdigest(),
    }
    if warm:
        res, wall, cpu = study()
        out.update(warm_seconds=wall, warm_cpu_seconds=cpu, warm_timings=res["timings"])
    out["process_cpu_seconds"] = time.process_time() - cpu0
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(replications: int, devices: int | None, warm: bool) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(replications)]
    if warm:
        cmd.append("--warm")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def _line(name: str, seconds: float, target: float) -> bool:
    ok = seconds < target
    print(f"{'PASS' if ok else 'FAIL'} {name}: {seconds:.2f} s (target < {target:g} s)")
    return ok


def _show(tag: str, r: dict) -> None:
    t = r["cold_timings"]
    print(
        f"{tag}: cold {r['cold_seconds']:.2f} s wall / {r['cold_cpu_seconds']:.2f} s CPU "
        f"(simulate {t['simulate']:.2f}, PITs {t['pits']:.2f}, uniformity "
        f"{t['uniformity']:.2f}, controls {t['controls']:.2f}); imports "
        f"{r['imports_seconds']:.2f} s; verdict {r['verdict']} (p = {r['p_value']:.3g}), "
        f"95% coverage {r['coverage_95']:.4f} ± {r['coverage_95_se']:.4f}, controls "
        f"rejected {sum(r['controls_rejected'])}/{len(r['controls_rejected'])}",
        flush=True,
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replications", type=int, default=1000)
    p.add_argument("--large", type=int, default=10_000)
    p.add_argument("--devices", default="1,2,4")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.warm)
        return {}

    load0 = os.getloadavg()
    print(f"meTS-Lin SBC, {SETTING}; load average at start {load0[0]:.1f} (2 cores)")
    cold = _spawn(args.replications, None, warm=False)
    _show(f"{args.replications} replications, {cold['devices']} devices", cold)
    large = _spawn(args.large, None, warm=False)
    _show(f"{args.large} replications, {large['devices']} devices", large)

    scaling = []
    print(
        f"{'devices':>8} {'cold s':>8} {'cold CPU s':>11} {'warm s':>8} {'warm CPU s':>11} "
        f"{'warm ratio':>11} {'identical':>10}"
    )
    for n in [int(c) for c in args.devices.split(",")]:
        r = _spawn(args.replications, n, warm=True)
        r["identical_to_first"] = r["pit_sha1"] == (scaling[0] if scaling else r)["pit_sha1"]
        r["warm_ratio_to_first"] = (
            r["warm_seconds"] / (scaling[0] if scaling else r)["warm_seconds"]
        )
        scaling.append(r)
        print(
            f"{n:>8} {r['cold_seconds']:>8.2f} {r['cold_cpu_seconds']:>11.2f} "
            f"{r['warm_seconds']:>8.2f} {r['warm_cpu_seconds']:>11.2f} "
            f"{r['warm_ratio_to_first']:>11.2f} {r['identical_to_first']!s:>10}",
            flush=True,
        )
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.1f}; wall times are pessimistic under contention")

    checks = {
        f"cold_{args.replications}": _line(
            f"{args.replications} replications, compilation included",
            cold["cold_seconds"],
            TARGETS["cold_1000"],
        ),
        f"cold_{args.large}": _line(
            f"{args.large} replications, compilation included",
            large["cold_seconds"],
            TARGETS["cold_large"],
        ),
    }
    same = all(r["identical_to_first"] for r in scaling)
    print(f"{'PASS' if same else 'FAIL'} PITs identical across {args.devices} host devices")
    checks["identical_across_devices"] = same
    result = {
        "setting": SETTING,
        "targets_seconds": TARGETS,
        "load_average": {"start": load0, "end": load1},
        "cold": cold,
        "large": large,
        "scaling": scaling,
        "checks": checks,
    }
    print(f"wrote {save('sbc', result)}")
    return result


if __name__ == "__main__":
    main()
