"""Run every benchmark, each in a fresh process, and collect their PASS/FAIL lines: ``make bench``.

Each benchmark writes its own JSON record under ``reports/bench/``. Benchmarks measure
ratios and targets within one run; the machine should be otherwise idle when their
absolute times are compared with a target.

    python run_all.py                 # all of them (about 25 minutes on a 2-core CPU)
    python run_all.py fig2_panel sbc  # a selection
"""

import re
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = (
    "fig2_panel",
    "mets_scaling",
    "sbc",
    "dts_scaling",
    "pretrain",
    "hcsa",
    "movielens",
    "supervised",
)


def main(argv=None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}")
    here = Path(__file__).resolve().parent
    verdicts, failed = [], []
    for name in names:
        print(f"== bench_{name}", flush=True)
        t0 = time.perf_counter()
        # Stream the benchmark's own progress lines while keeping them for the summary.
        proc = subprocess.Popen(
            [sys.executable, str(here / f"bench_{name}.py")],
            cwd=here,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out_lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            out_lines.append(line)
        proc.wait()
        lines = [ln.strip() for ln in out_lines if re.search(r"\b(PASS|FAIL)\b", ln)]
        verdicts += [f"{name}: {ln}" for ln in lines]
        if proc.returncode or any(re.search(r"\bFAIL\b", ln) for ln in lines):
            failed.append(name)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nsummary")
    for line in verdicts:
        print(f"  {line}")
    print(f"{len(names) - len(failed)}/{len(names)} benchmarks met every target")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
