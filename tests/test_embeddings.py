"""ALS embeddings and the Gaussian-mixture proxy structure (ppl_bandits.data.embeddings)."""

import numpy as np
import pytest

from models.mixed_effect import mixing_matrices
from ppl_bandits.data.embeddings import (
    ACTION_SHARE,
    EFFECT_SHARE,
    fit_embeddings,
    fit_proxy_structure,
    proxy_prior,
    split_ratings,
)
from ppl_bandits.data.movielens import from_arrays

NOISE = 0.1


def low_rank_ratings(seed=0, users=150, items=120, rank=5, density=0.5, noise=NOISE):
    """Ratings 3 + x_uᵀθ_i + N(0, noise²) on a random half of a rank-``rank`` matrix."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(users, rank))
    T = rng.normal(size=(items, rank)) / np.sqrt(rank)
    u, i = np.nonzero(rng.uniform(size=(users, items)) < density)
    r = 3.0 + np.einsum("nk,nk->n", X[u], T[i]) + noise * rng.normal(size=u.size)
    return from_arrays(u + 1, i + 1, r)


def test_als_recovers_low_rank_matrix_at_noise_level():
    ratings = low_rank_ratings()
    emb = fit_embeddings(ratings, rank=5, reg=1e-2, holdout=0.2, seed=1)
    assert emb.converged
    # ALS solves each half-step exactly: the objective never increases.
    assert np.all(np.diff(emb.objective) <= 1e-9 * emb.objective[:-1])
    # With ~60 training ratings per user and 5 parameters, the estimation error adds about
    # sqrt(2 * 5 / 60) ≈ 0.4 of the noise variance: the held-out RMSE is near σ.
    assert NOISE * 0.9 < emb.heldout_rmse < NOISE * 1.3, emb.heldout_rmse
    assert emb.train_rmse < emb.heldout_rmse
    # Negative control: a rank-1 fit of rank-5 data cannot reach the noise level.
    bad = fit_embeddings(ratings, rank=1, reg=1e-2, holdout=0.2, seed=1)
    assert bad.heldout_rmse > 5 * NOISE, bad.heldout_rmse


def test_split_is_seeded_fraction():
    a = split_ratings(1000, 0.1, 3)
    assert a.sum() == 100
    assert np.array_equal(a, split_ratings(1000, 0.1, 3))
    assert not np.array_equal(a, split_ratings(1000, 0.1, 4))
    with pytest.raises(ValueError, match="holdout"):
        split_ratings(10, 1.0, 0)


def test_unrated_items_get_zero_vectors():
    r = from_arrays([1, 1, 2, 2], [1, 2, 1, 2], [4.0, 3.0, 5.0, 1.0])
    r = r._replace(item_ids=np.array([1, 2, 3]))  # item 3 has no rating
    emb = fit_embeddings(r, rank=1, holdout=0.0)
    assert emb.item_count.tolist() == [2, 2, 0]
    assert np.all(emb.item[2] == 0) and np.isnan(emb.heldout_rmse)


# --------------------------------------------------------------------------- GMM proxy

MEANS = np.array([[-4.0, 0.0], [4.0, 1.0], [0.0, 6.0]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
SD = 0.7


def clustered(seed, means=MEANS, n=1000):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=WEIGHTS)
    return means[labels] + SD * rng.normal(size=(n, 2)), labels


def max_mean_z(structure, means, labels):
    """Largest |estimated − true component mean| in standard errors SD / sqrt(n_ℓ)."""
    est = structure.mu_psi.reshape(-1, 2)
    counts = np.bincount(labels, minlength=3)
    return float(np.max(np.abs(est - means) / (SD / np.sqrt(counts[:, None]))))


def test_gmm_proxy_recovers_known_parameters():
    v, labels = clustered(0)
    s = fit_proxy_structure(v, 3, seed=0)
    # Components are ordered by weight, as the truth is.
    assert max_mean_z(s, MEANS, labels) < 4.0
    se_w = np.sqrt(WEIGHTS * (1 - WEIGHTS) / len(v))
    assert np.all(np.abs(s.component_weights - WEIGHTS) < 4 * se_w)
    assert np.mean(np.argmax(s.weights, 1) == labels) > 0.999
    assert np.allclose(s.weights.sum(1), 1.0)
    # The spec's covariances, exactly: Σ̆_0 = diag(per-dimension variance).
    breve = np.diag(v.var(axis=0))
    np.testing.assert_allclose(s.sigma0, ACTION_SHARE * breve, rtol=1e-12)
    np.testing.assert_allclose(s.sigma_psi, EFFECT_SHARE * np.kron(np.eye(3), breve), rtol=1e-12)
    np.testing.assert_allclose(
        s.component_covs, np.broadcast_to(SD**2 * np.eye(2), (3, 2, 2)), atol=0.15
    )
    # responsibilities() of the fitted vectors reproduce predict_proba.
    np.testing.assert_allclose(s.responsibilities(v), s.weights, atol=1e-6)
    # Negative control: the same check rejects cluster centres shifted by 0.3 (≥ 8 se).
    assert max_mean_z(s, MEANS + np.array([0.3, 0.0]), labels) > 4.0


def test_proxy_prior_is_the_mixed_effect_prior():
    v, _ = clustered(1, n=300)
    s = fit_proxy_structure(v, 3, seed=0)
    p = proxy_prior(s, [0, 5, 7], noise_sd=0.5)
    assert (p.num_actions, p.num_effects, p.dim) == (3, 3, 2)
    M = np.asarray(mixing_matrices(p))
    b = s.weights[[0, 5, 7]]
    np.testing.assert_allclose(M, np.kron(b[:, None, :], np.eye(2)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(p.sigma0[1]), s.sigma0, rtol=1e-6)
    with pytest.raises(ValueError, match="num_effects"):
        fit_proxy_structure(v[:2], 3)
