"""Shared helpers of the benchmarks: timing, provenance and result files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ppl_bandits.provenance import collect_versions, command_line, write_json

__all__ = ["Timer", "save"]

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
