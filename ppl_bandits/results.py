"""The one writer of result files and their provenance.

Every command and study of the project writes its records through this module:

- :func:`provenance` gives the fields every record carries: the command that made it, the
  seed, the wall time and the library versions;
- :func:`write_json` writes strict JSON (RFC 8259: no NaN or Infinity, ``null`` instead);
- :func:`prepare_out_dir` and :func:`check_out_dir` check an output directory before any
  computation starts, with one error that names the option.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import tempfile
from importlib import metadata
from pathlib import Path, PurePath

import numpy as np

__all__ = [
    "check_out_dir",
    "collect_versions",
    "command_line",
    "prepare_out_dir",
    "provenance",
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


def provenance(*, seed, wall_seconds, command: str | None = None) -> dict:
    """The fields every result record carries: ``command``, ``seed``, ``wall_seconds``,
    ``versions``.

    ``command`` defaults to the running process's command line (:func:`command_line`);
    ``seed`` is the seed the result was made from (None where nothing was random), and
    ``wall_seconds`` the wall-clock time of the work the record reports.

    >>> p = provenance(seed=3, wall_seconds=1.5, command="ppl-bandits demo")
    >>> sorted(p), p["seed"], p["command"]
    (['command', 'seed', 'versions', 'wall_seconds'], 3, 'ppl-bandits demo')
    """
    return {
        "command": command_line() if command is None else str(command),
        "seed": seed,
        "wall_seconds": None if wall_seconds is None else float(wall_seconds),
        "versions": collect_versions(),
    }


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
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return strict_json(np.asarray(obj).tolist())
    return obj


def write_json(path, obj, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented strict JSON (numpy converted, NaN and infinity as null),
    with its keys sorted when ``sort_keys`` (for records compared across runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict_json(obj), indent=2, sort_keys=sort_keys, allow_nan=False)
    path.write_text(text + "\n")
    return path


def prepare_out_dir(out, option: str = "--out", *, files=()) -> Path:
    """Create the output directory and check that files can be written there.

    Called before any computation, so that an unwritable output costs nothing: raises
    ``ValueError`` naming ``option``, the path and the reason, when ``out`` is not a path,
    is an existing file, cannot be created or written, or holds one of ``files`` (names the
    caller will write) that cannot be overwritten.
    """
    try:
        path = Path(out)
    except TypeError:
        raise ValueError(
            f"{option} is {type(out).__name__}; expected a directory path (str or os.PathLike)"
        ) from None
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} is {str(path)!r}, which is a file; expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ppl-bandits-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"{option} is {str(path)!r}, which cannot be created or written "
            f"({exc.strerror or exc}); expected a writable directory"
        ) from None
    for name in files:
        target = path / name
        if target.exists() and (not target.is_file() or not os.access(target, os.W_OK)):
            raise ValueError(
                f"{option} is {str(path)!r}, where {name} exists and cannot be overwritten; "
                "expected a writable directory"
            )
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
