r"""Low-rank embeddings of a rating matrix (ALS) and the Gaussian-mixture proxy structure.

**Embeddings.** With :math:`\mu` the mean training rating, alternating ridge least squares
(ALS-WR; Zhou, Wilkinson, Schreiber, Pan 2008) fits user vectors :math:`x_u` and item
vectors :math:`\theta_i` in :math:`\mathbb{R}^r` to the observed entries :math:`\Omega`:

.. math::

    \min_{x, \theta}\ \sum_{(u,i)\in\Omega} (r_{ui} - \mu - x_u^\top\theta_i)^2
    + \lambda\Big(\sum_u n_u\|x_u\|^2 + \sum_i n_i\|\theta_i\|^2\Big),

with :math:`n_u, n_i` the numbers of training ratings, from the truncated SVD of the
zero-filled residual matrix (scaled by the observed fraction). Each half-step solves every
user's (item's) ridge problem exactly, :math:`x_u = (\Theta_u^\top\Theta_u + \lambda n_u
I)^{-1}\Theta_u^\top(r_u - \mu)`, so the objective never increases; iteration stops when
its relative decrease falls below ``tol`` (the convergence criterion) or after
``max_iter`` sweeps. A seeded random split holds out a fraction of the ratings; the
held-out RMSE of :math:`\mu + x_u^\top\theta_i` is reported. Users or items without a
training rating get zero vectors (``user_count``/``item_count`` say which).

**Proxy structure** (Aouali, Kveton, Katariya 2023, Sec. 6; ``docs/maths/mets.md``): a
Gaussian mixture with ``L`` components on the item vectors gives
:math:`\mu_{\psi_\ell}` = the component means, :math:`b_{i\ell}` = the membership
probabilities (responsibilities) of item :math:`i`, :math:`\breve\Sigma_0` = the diagonal
of the per-dimension variances of the item vectors, :math:`\Sigma_\Psi = 0.75\,
\mathrm{blockdiag}(\breve\Sigma_0, \dots, \breve\Sigma_0)` and :math:`\Sigma_0 = 0.25\,
\breve\Sigma_0`. Components are ordered by decreasing weight.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from models.mixed_effect import mixed_effect_prior

__all__ = [
    "Embeddings",
    "ProxyStructure",
    "als",
    "fit_embeddings",
    "fit_proxy_structure",
    "one_blas_thread",
    "proxy_prior",
    "split_ratings",
]

#: Sweep limit and relative-decrease tolerance of ALS.
ALS_MAX_ITER = 200
ALS_TOL = 1e-6
#: The paper's split of the movie-vector variance between the effects and the actions.
EFFECT_SHARE = 0.75
ACTION_SHARE = 0.25


class Embeddings(NamedTuple):
    """A fitted factorization (numpy arrays)."""

    user: np.ndarray
    """(U, r) user vectors x_u."""
    item: np.ndarray
    """(I, r) item vectors θ_i."""
    mean: float
    """μ, the mean training rating (predictions are μ + x_uᵀθ_i)."""
    user_count: np.ndarray
    """(U,) training ratings per user."""
    item_count: np.ndarray
    """(I,) training ratings per item."""
    train_rmse: float
    heldout_rmse: float
    """RMSE on the held-out ratings (NaN when nothing is held out)."""
    iterations: int
    converged: bool
    """Whether the relative decrease of the objective fell below the tolerance."""
    objective: np.ndarray
    """(iterations + 1,) the objective after initialisation and after each sweep."""
    seconds: float
    """Wall time of the fit."""


def split_ratings(n: int, holdout: float, seed: int) -> np.ndarray:
    """Boolean mask (n,) of held-out ratings: a seeded random ``holdout`` fraction."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout is {holdout!r}; expected a fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: round(holdout * n)]] = True
    return mask


def _grams(rows, vecs, n_rows):
    """Σ_{k: rows_k = u} v_k v_kᵀ for every u (n_rows, r, r), by one bincount per entry."""
    r = vecs.shape[1]
    out = np.empty((n_rows, r, r))
    for a in range(r):
        for b in range(a, r):
            out[:, a, b] = np.bincount(rows, vecs[:, a] * vecs[:, b], minlength=n_rows)
            out[:, b, a] = out[:, a, b]
    return out


def _half_step(rows, other_idx, other, resid, n_rows, count, reg):
    """Ridge solution for every row given the other side's vectors."""
    V = other[other_idx]
    r = other.shape[1]
    G = _grams(rows, V, n_rows) + (reg * np.maximum(count, 1))[:, None, None] * np.eye(r)
    rhs = np.stack([np.bincount(rows, V[:, a] * resid, minlength=n_rows) for a in range(r)], 1)
    return np.linalg.solve(G, rhs[..., None])[..., 0]


def _svd_init(user, item, y, num_users, num_items, rank, seed):
    """Start from the rank-r truncated SVD of the zero-filled residual matrix.

    Zero-filling shrinks the matrix by the fraction ρ of observed entries, so the
    singular values are divided by ρ. ALS from a random start converges slowly along its
    flat directions when λ is small; this start puts it near the solution. The SVD's
    start vector is seeded, so the result is reproducible.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    k = min(rank, min(num_users, num_items) - 1)
    rng = np.random.default_rng(seed)
    X = 0.01 * rng.normal(size=(num_users, rank))
    T = 0.01 * rng.normal(size=(num_items, rank))
    if k < 1:
        return X, T
    R = csr_matrix((y, (user, item)), shape=(num_users, num_items))
    rho = y.size / (num_users * num_items)
    v0 = rng.uniform(-1, 1, min(num_users, num_items))
    U, S, Vt = svds(R, k=k, v0=v0)
    root = np.sqrt(S / rho)
    X[:, :k] = U * root
    T[:, :k] = Vt.T * root
    return X, T


def _objective(u, i, y, X, T, count_u, count_i, reg):
    err = y - np.einsum("nk,nk->n", X[u], T[i])
    penalty = reg * (count_u @ np.sum(X**2, 1) + count_i @ np.sum(T**2, 1))
    return float(err @ err + penalty), err


def als(
    user,
    item,
    rating,
    num_users: int,
    num_items: int,
    *,
    rank: int = 5,
    reg: float = 0.1,
    seed: int = 0,
    max_iter: int = ALS_MAX_ITER,
    tol: float = ALS_TOL,
):
    """ALS-WR on (user, item, rating) triples (see the module docstring).

    Returns ``(X (U, r), T (I, r), mean, objective history, converged)``.
    """
    for name, v in (("rank", rank), ("max_iter", max_iter)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} is {v!r}; expected an integer >= 1")
    if not reg > 0:
        raise ValueError(f"reg is {reg!r}; expected a positive number")
    user = np.asarray(user, np.int64)
    item = np.asarray(item, np.int64)
    y_raw = np.asarray(rating, np.float64)
    if y_raw.size == 0:
        raise ValueError("no ratings to factorize; expected at least one")
    mean = float(y_raw.mean())
    y = y_raw - mean
    count_u = np.bincount(user, minlength=num_users).astype(np.float64)
    count_i = np.bincount(item, minlength=num_items).astype(np.float64)
    X, T = _svd_init(user, item, y, num_users, num_items, rank, seed)
    X[count_u == 0] = 0.0
    T[count_i == 0] = 0.0
    obj, _ = _objective(user, item, y, X, T, count_u, count_i, reg)
    history = [obj]
    converged = False
    for _ in range(int(max_iter)):
        X = _half_step(user, item, T, y, num_users, count_u, reg)
        T = _half_step(item, user, X, y, num_items, count_i, reg)
        obj, _ = _objective(user, item, y, X, T, count_u, count_i, reg)
        prev = history[-1]
        history.append(obj)
        if prev - obj <= tol * max(prev, 1e-300):
            converged = True
            break
    return X, T, mean, np.asarray(history), converged


def _als_fit(ratings, train, rank, reg, seed, max_iter, tol):
    return als(
        ratings.user[train],
        ratings.item[train],
        ratings.rating[train],
        ratings.num_users,
        ratings.num_items,
        rank=rank,
        reg=reg,
        seed=seed,
        max_iter=max_iter,
        tol=tol,
    )


def fit_embeddings(
    ratings,
    *,
    rank: int = 5,
    reg: float = 0.1,
    holdout: float = 0.1,
    seed: int = 0,
    max_iter: int = ALS_MAX_ITER,
    tol: float = ALS_TOL,
) -> Embeddings:
    """Rank-``rank`` ALS embeddings of a :class:`ppl_bandits.data.movielens.Ratings`.

    A seeded ``holdout`` fraction of the ratings is held out; the vectors are fit on the
    rest and :attr:`Embeddings.heldout_rmse` is their RMSE on the held-out part.

    Examples
    --------
    >>> from ppl_bandits.data.movielens import synthetic_ratings
    >>> emb = fit_embeddings(synthetic_ratings(60, 40, 1200, seed=1), rank=2)
    >>> emb.user.shape, emb.item.shape, emb.converged
    ((60, 2), (40, 2), True)
    """
    t0 = time.perf_counter()
    test = split_ratings(ratings.rating.shape[0], holdout, seed)
    train = ~test
    with one_blas_thread():
        X, T, mean, history, converged = _als_fit(ratings, train, rank, reg, seed, max_iter, tol)

    def rmse(mask):
        if not mask.any():
            return float("nan")
        pred = mean + np.einsum("nk,nk->n", X[ratings.user[mask]], T[ratings.item[mask]])
        return float(np.sqrt(np.mean((ratings.rating[mask] - pred) ** 2)))

    return Embeddings(
        user=X,
        item=T,
        mean=mean,
        user_count=np.bincount(ratings.user[train], minlength=ratings.num_users),
        item_count=np.bincount(ratings.item[train], minlength=ratings.num_items),
        train_rmse=rmse(train),
        heldout_rmse=rmse(test),
        iterations=len(history) - 1,
        converged=converged,
        objective=history,
        seconds=time.perf_counter() - t0,
    )


def one_blas_thread():
    """Limit BLAS to one thread: EM and ALS are many small products, and on a busy 2-core
    machine multi-threaded BLAS made the mixture fit 35 times slower (26.8 s against
    0.76 s for 3706 five-dimensional vectors)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


# --------------------------------------------------------------------------- GMM proxy


class ProxyStructure(NamedTuple):
    """The mixed-effect proxy prior read off a Gaussian mixture (numpy arrays)."""

    mu_psi: np.ndarray
    """(L*d,) component means stacked, μ_{ψ_ℓ} at [ℓ d:(ℓ+1) d]."""
    sigma_psi: np.ndarray
    """(L*d, L*d) Σ_Ψ = 0.75 blockdiag(Σ̆_0)."""
    sigma0: np.ndarray
    """(d, d) Σ_0 = 0.25 Σ̆_0."""
    weights: np.ndarray
    """(N, L) membership probabilities b_{iℓ} of the N vectors the mixture was fit on."""
    component_weights: np.ndarray
    """(L,) mixture weights (decreasing)."""
    component_covs: np.ndarray
    """(L, d, d) fitted component covariances (recorded; the prior uses Σ̆_0)."""
    variances: np.ndarray
    """(d,) per-dimension variance of the vectors, the diagonal of Σ̆_0."""

    def responsibilities(self, vectors) -> np.ndarray:
        """b_{iℓ} of new vectors (M, d) under the fitted mixture."""
        return _responsibilities(
            np.asarray(vectors, np.float64),
            self.mu_psi.reshape(-1, self.sigma0.shape[0]),
            self.component_covs,
            self.component_weights,
        )


def _responsibilities(x, means, covs, weights):
    L = means.shape[0]
    logp = np.empty((x.shape[0], L))
    for l in range(L):
        C = np.linalg.cholesky(covs[l])
        z = np.linalg.solve(C, (x - means[l]).T)
        logp[:, l] = np.log(weights[l]) - 0.5 * np.sum(z**2, 0) - np.sum(np.log(np.diag(C)))
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def fit_proxy_structure(
    vectors, num_effects: int = 5, *, seed: int = 0, n_init: int = 3
) -> ProxyStructure:
    """Fit a full-covariance Gaussian mixture (scikit-learn) and read off the proxy prior.

    Parameters
    ----------
    vectors : array (N, d)
        Item vectors (N >= num_effects).
    num_effects : int
        L, the number of mixture components (effects).
    seed, n_init : int
        scikit-learn's ``random_state`` and number of EM restarts.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = np.concatenate([rng.normal(-3, 1, (200, 2)), rng.normal(3, 1, (100, 2))])
    >>> s = fit_proxy_structure(v, 2)
    >>> s.mu_psi.round(0).tolist(), s.weights.shape
    ([-3.0, -3.0, 3.0, 3.0], (300, 2))
    """
    from sklearn.mixture import GaussianMixture

    v = np.asarray(vectors, np.float64)
    if v.ndim != 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"vectors has shape {v.shape}; expected finite vectors (N, d)")
    L = num_effects
    if int(L) != L or L < 1 or v.shape[0] < L:
        raise ValueError(
            f"num_effects is {L!r}; expected an integer in [1, {v.shape[0]}] "
            "(the number of vectors)"
        )
    gmm = GaussianMixture(L, covariance_type="full", random_state=seed, n_init=n_init)
    with one_blas_thread():
        gmm.fit(v)
        memberships = gmm.predict_proba(v)
    order = np.lexsort((gmm.means_[:, 0], -gmm.weights_))
    means = gmm.means_[order]
    covs = gmm.covariances_[order]
    weights = gmm.weights_[order]
    d = v.shape[1]
    variances = v.var(axis=0)
    breve = np.diag(variances)
    return ProxyStructure(
        mu_psi=means.reshape(L * d),
        sigma_psi=EFFECT_SHARE * np.kron(np.eye(L), breve),
        sigma0=ACTION_SHARE * breve,
        weights=memberships[:, order],
        component_weights=weights,
        component_covs=covs,
        variances=variances,
    )


def proxy_prior(structure: ProxyStructure, items=None, *, noise_sd=0.5, dtype=None):
    """The :class:`models.mixed_effect.MixedEffectPrior` of the proxy structure.

    ``items`` (K,) selects the actions' rows of the membership weights (all rows by
    default).
    """
    import jax.numpy as jnp

    dtype = dtype or jnp.result_type(float)
    w = structure.weights if items is None else structure.weights[np.asarray(items)]
    return mixed_effect_prior(
        jnp.asarray(structure.mu_psi, dtype),
        jnp.asarray(structure.sigma_psi, dtype),
        weights=jnp.asarray(w, dtype),
        sigma0=jnp.asarray(structure.sigma0, dtype),
        noise_sd=noise_sd,
    )
