"""Boundary checks: clear errors that name the argument, what was given and what was expected.

These run on concrete (non-traced) arrays only. Inside ``jax.jit`` or ``jax.vmap`` the
arrays are tracers and the checks are skipped: callers validate once, at the boundary,
before tracing.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = [
    "as_positive_definite",
    "check_finite",
    "check_shape",
    "is_traced",
]


def is_traced(*arrays) -> bool:
    """True when any argument is a JAX tracer (we are inside a transformation)."""
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_shape(name: str, value, expected: tuple) -> None:
    """Raise ``ValueError`` unless ``value.shape`` matches ``expected``.

    ``None`` in ``expected`` matches any size.
    """
    shape = tuple(np.shape(value))
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} has shape {shape}; expected {want}")


def check_finite(name: str, value) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries."""
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} has {bad} non-finite entries (NaN or inf); expected finite values"
        )


def as_positive_definite(name: str, value) -> None:
    """Raise ``ValueError`` unless every trailing (n, n) matrix is symmetric positive definite."""
    arr = np.asarray(value, dtype=np.float64)
    check_finite(name, arr)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} has shape {arr.shape}; expected square matrices (..., n, n)")
    scale = max(1.0, float(np.max(np.abs(arr))))
    asym = float(np.max(np.abs(arr - np.swapaxes(arr, -1, -2)))) if arr.size else 0.0
    if asym > 1e-6 * scale:
        raise ValueError(f"{name} is not symmetric (max |A - A^T| = {asym:.3g})")
    eig = np.linalg.eigvalsh(arr) if arr.size else np.ones(1)
    if np.min(eig) <= 0:
        raise ValueError(
            f"{name} is not positive definite (smallest eigenvalue {np.min(eig):.3g}); "
            "expected a symmetric positive-definite covariance"
        )
