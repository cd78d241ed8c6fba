"""XLA settings for CPU runs, applied before JAX starts its backend.

Two flags, each set only when the user has not set it in ``XLA_FLAGS`` already:

- ``--xla_force_host_platform_device_count=4``: four CPU devices, so that four NUTS
  chains run in parallel (and sharded studies see several devices);
- ``--xla_backend_optimization_level=1``: the bandit loops are many small scan bodies
  whose cost on a 2-core CPU is dominated by compilation; level 1 compiles them about
  twice as fast with no measurable loss in run time (``benchmarks/bench_fig2_panel.py``
  measured 23.0 s at the default level and 17.4 s at level 1 for the full Fig. 2 panel).

The command line, the benchmarks and the test suite call :func:`configure_cpu` first.
Calling it after JAX has started has no effect on the running process.
"""

from __future__ import annotations

import os

__all__ = ["configure_cpu"]


def configure_cpu(host_devices: int = 4, optimization_level: int = 1) -> str:
    """Add the flags above to ``XLA_FLAGS`` unless already present; return the result."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not any(f.startswith("--xla_force_host_platform_device_count") for f in flags):
        flags.append(f"--xla_force_host_platform_device_count={int(host_devices)}")
    if not any(f.startswith("--xla_backend_optimization_level") for f in flags):
        flags.append(f"--xla_backend_optimization_level={int(optimization_level)}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]
