"""The supervised-to-bandit task: scikit-learn's digits, reduced by PCA, classes as arms."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from ppl_bandits.data.embeddings import one_blas_thread
from ppl_bandits.diffusion.ddpm import DDPMSettings, train_ddpm

__all__ = ["SupervisedTask", "supervised_task"]


class SupervisedTask(NamedTuple):
    """Pre-training output and the bandit half (numpy arrays, scaled coordinates)."""

    features: np.ndarray
    """(n, p) bandit-half features (scaled; last column the scaled intercept)."""
    labels: np.ndarray
    """(n,) bandit-half classes."""
    samples: np.ndarray
    """(S, K*p) bootstrap class-parameter vectors (scaled), the DDPM's training data."""
    scale: float
    """The scalar s: features are x s, parameters θ / s."""
    num_classes: int
    accuracy: float
    """Bandit-half accuracy of the full pre-training ridge fit (a ceiling for the agents)."""
    params: object
    """DDPM weights (:class:`models.diffusion.MLPParams`)."""
    settings: object
    """:class:`ppl_bandits.diffusion.ddpm.DDPMSettings`."""
    losses: np.ndarray
    seconds: float
    """Pre-training wall time (PCA, bootstrap, DDPM)."""


_CACHE: dict = {}


def _ridge(X, Y, lam):
    p = X.shape[-1]
    return np.linalg.solve(np.swapaxes(X, -1, -2) @ X + lam * np.eye(p), np.swapaxes(X, -1, -2) @ Y)


def _pretraining_arrays(num_components, num_bootstrap, subset, ridge, seed):
    """Features of both halves, bootstrap class vectors, scale and the ridge accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    K = int(y.max()) + 1
    X_pre, X_test, y_pre, y_test = train_test_split(
        X, y, test_size=0.5, random_state=seed, stratify=y
    )
    pca = PCA(num_components, random_state=seed).fit(X_pre)
    Z_pre, Z_test = pca.transform(X_pre), pca.transform(X_test)
    sd = Z_pre.std(0)
    F_pre = np.column_stack([Z_pre / sd, np.ones(len(Z_pre))])
    F_test = np.column_stack([Z_test / sd, np.ones(len(Z_test))])
    Y_pre = np.eye(K)[y_pre]
    full = _ridge(F_pre, Y_pre, ridge)  # (p, K)
    accuracy = float(np.mean(np.argmax(F_test @ full, 1) == y_test))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(F_pre), (num_bootstrap, subset))
    W = _ridge(F_pre[idx], Y_pre[idx], ridge)  # (S, p, K)
    theta = np.swapaxes(W, 1, 2).reshape(num_bootstrap, -1)  # (S, K*p), class-major
    scale = float(theta.std())
    samples = theta / scale
    # Drop exact duplicate images so that a context identifies its label.
    F_test, keep = np.unique(F_test, axis=0, return_index=True)
    y_test = y_test[keep]
    return F_test * scale, y_test, samples, scale, K, accuracy


def supervised_task(
    *,
    num_components: int = 3,
    num_bootstrap: int = 1000,
    subset: int = 100,
    ridge: float = 1.0,
    epochs: int = 3000,
    num_steps: int = 10,
    hidden: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> SupervisedTask:
    """Pre-train on half of ``load_digits`` (see the module docstring); cached in memory."""
    import jax

    key = (num_components, num_bootstrap, subset, ridge, epochs, num_steps, hidden, seed)
    if key in _CACHE:
        return _CACHE[key]
    for name, v in (
        ("num_components", num_components),
        ("num_bootstrap", num_bootstrap),
        ("subset", subset),
        ("epochs", epochs),
    ):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} is {v!r}; expected an integer >= 1")

    t0 = time.perf_counter()
    with one_blas_thread():
        arrays = _pretraining_arrays(num_components, num_bootstrap, subset, ridge, seed)
    F_test, y_test, samples, scale, K, accuracy = arrays
    settings = DDPMSettings(dim=samples.shape[1], num_steps=num_steps, hidden=hidden)
    params, losses = train_ddpm(
        jax.random.key(seed), samples, settings, epochs=int(epochs), progress=progress
    )
    task = SupervisedTask(
        features=F_test,
        labels=y_test.astype(np.int32),
        samples=samples,
        scale=scale,
        num_classes=K,
        accuracy=accuracy,
        params=params,
        settings=settings,
        losses=np.asarray(losses),
        seconds=time.perf_counter() - t0,
    )
    _CACHE[key] = task
    return task
