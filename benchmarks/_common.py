"""Shared helpers of the benchmarks: timing, provenance and result files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ppl_bandits.results import collect_versions, command_line, write_json

__all__ = ["Timer", "per_round_seconds", "save"]

OUT = Path(__file__).resolve().parent.parent / "reports" / "bench"


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def save(name: str, result: dict) -> Path:
    """Write reports/bench/NAME.json with the command and library versions."""
    result = {**result, "command": command_line(sys.argv), "versions": collect_versions()}
    return write_json(OUT / f"{name}.json", result)


def per_round_seconds(env, agent, rounds: int, seed: int = 0) -> float:
    """Seconds per round of ``agent`` on one run of ``env``: the ``rounds`` are one compiled
    scan, timed on its second call so that compilation is excluded."""
    import jax

    from ppl_bandits.core.runner import draw_problems, simulate

    key = jax.random.key(seed)
    problems = draw_problems(key, env, 1)
    kw = {"num_rounds": rounds, "num_runs": 1, "chunk_size": rounds, "problems": problems}
    jax.block_until_ready(simulate(key, env, agent, **kw).regret)  # compile
    with Timer() as t:
        jax.block_until_ready(simulate(key, env, agent, **kw).regret)
    return t.seconds / rounds
