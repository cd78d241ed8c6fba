"""Provenance of result files: the command, the seed and the library versions."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["collect_versions", "command_line", "write_json"]

_PACKAGES = (
    "ppl-bandits",
    "jax",
    "jaxlib",
    "numpyro",
    "arviz",
    "numpy",
    "scipy",
    "xarray",
    "h5netcdf",
    "matplotlib",
)


def collect_versions() -> dict:
    """Versions of Python, the platform, the numerical libraries and JAX's devices.

    A library that is not installed is reported as None.

    >>> v = collect_versions()
    >>> sorted(k for k in ("jax", "numpyro", "arviz", "numpy", "python") if k in v)
    ['arviz', 'jax', 'numpy', 'numpyro', 'python']
    """
    import os

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import jax

        out["jax_backend"] = jax.default_backend()
        out["jax_devices"] = [str(d) for d in jax.devices()]
        out["jax_x64"] = bool(jax.config.jax_enable_x64)
    except Exception as exc:  # pragma: no cover - reported, not fatal
        out["jax_devices"] = f"unavailable: {exc}"
    return out


def command_line(argv=None) -> str:
    """The command as a shell-quoted string (``ppl-bandits ...`` when run from the CLI)."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name if argv else "python"
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:])])


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars and arrays converted)."""
    import numpy as np

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if hasattr(o, "tolist"):
            return np.asarray(o).tolist()
        raise TypeError(f"cannot serialise {type(o).__name__}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=default, allow_nan=True) + "\n")
    return path
