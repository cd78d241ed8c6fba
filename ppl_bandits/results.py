"""Provenance of result files: the command, the seed and the library versions."""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = [
    "check_out_dir",
    "collect_versions",
    "command_line",
    "prepare_out_dir",
    "strict_json",
    "write_json",
]

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


def strict_json(obj):
    """``obj`` with numpy values converted and every NaN or infinity replaced by ``None``.

    Strict JSON (RFC 8259) has no NaN or Infinity; a parser such as ``json.loads`` with
    ``parse_constant`` raising, or any non-Python reader, rejects them. Where a number is
    undefined (a standard error over one run, say) the file holds ``null``.

    >>> strict_json({"se": float("nan"), "x": [1.0, float("inf")]})
    {'se': None, 'x': [1.0, None]}
    """
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return strict_json(np.asarray(obj).tolist())
    return obj


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented strict JSON (numpy converted, NaN and infinity as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
    return path


def prepare_out_dir(out, option: str = "--out") -> Path:
    """Create the output directory and check that a file can be written there.

    Called before any computation, so that an unwritable ``--out`` costs nothing: raises
    ``ValueError`` naming ``option``, the path and the reason.
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".ppl-bandits-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"{option} is {str(out)!r}; expected a directory that can be created and written "
            f"({exc.strerror or exc})"
        ) from None
    return path


def check_out_dir(out, option: str = "--out") -> Path:
    """Check, before any computation, that the output directory can be created and written.

    :func:`prepare_out_dir`, after which every directory this check created is removed
    again, so that a command which then fails on its input leaves nothing behind; the
    writers create the directory when they write. Raises ``ValueError`` naming ``option``.
    """
    path = Path(out).absolute()
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    prepare_out_dir(out, option)
    for made in missing:  # deepest first
        try:
            made.rmdir()
        except OSError:  # pragma: no cover - something was written there meanwhile
            break
    return Path(out)
