r"""HCSA+TS: hypothetical coupled sample augmentation for Thompson sampling.

W. Kim, "Adaptive Data Augmentation for Thompson Sampling", arXiv 2506.14479. The paper's
formulas were lost in extraction; the pieces marked **(R)** are our reconstruction
(written up in ``docs/maths/hcsa.md``). Each (R) choice is one named parameter or one
documented function of this module, so a reader with the original paper changes it in one place:

=====================================  ====================================================
(R) choice                             where
=====================================  ====================================================
rank of the other arms' Gram matrix    :func:`rank_tolerance` (``rank_rtol``)
orthonormal completion (Gram–Schmidt)  :func:`orthonormal_completion`
augmentation h_t = c log(t+1)          :func:`augmentation_budget` (``aug_scale``, ``schedule``)
trial bound ρ_t of CAS                 :func:`max_trials`
reference estimator θ̌ (eq. 10)         :func:`ridge_reference` (``lam``, ``reference``)
pseudo-rewards (eqs. 11 and 14)        :func:`dr_pseudo_rewards`, :func:`coupled_pseudo_rewards`
HCSA Gram and estimator (eq. 15)       :func:`hcsa_statistics_update`, :func:`hcsa_estimate`
sampling before V_t has full rank      :func:`sampling_moments` (``null_precision``)
=====================================  ====================================================

Notation (one round ``t``; ``N`` arms, dimension ``d``):

- contexts ``x_1..x_N`` (rows of ``contexts``), played arm ``a``;
- hypothetical contexts (Sec. 4.2): eigendecompose the other arms' Gram matrix
  :math:`\sum_{k\ne a} x_k x_k^\top = \sum_{j\le r}\lambda_j u_j u_j^\top` and set
  :math:`z_0 = x_a`, :math:`z_j = \sqrt{\lambda_j}u_j` (:math:`j\le r`), so that
  :math:`\sum_j z_j z_j^\top = \sum_k x_k x_k^\top` (Lemma 1); on augmentation rounds
  (the set :math:`A`) also :math:`z_j = u_j` for an orthonormal basis
  :math:`u_{r+1..d}` of the complement. :math:`N_t = r + 1` off :math:`A`, :math:`d + 1` on it;
- hypothetical action distribution (eq. 9): :math:`\phi(0) = \gamma`,
  :math:`\phi(j) = (1-\gamma)/(N_t - 1)` for the other slots;
- slots are stored in a fixed shape ``(d + 1, d)`` with a boolean mask ``active``, so every
  function here is ``jax.jit``- and ``jax.vmap``-compatible.

Every jitted path orders its LAPACK calls (``eigh``, solves) by data dependencies, adding
one with :func:`serial_after` where the mathematics has none: jaxlib 0.10's batched CPU
LAPACK kernels deadlock when as many of them run concurrently as XLA has worker threads.

The agent (:func:`hcsa_ts`, Algorithm 2) carries in its state the PRNG key of the
hypothetical draws :math:`\tilde a` of the coming round (``coupling_key``). ``act`` runs the
coupled arm selection (:func:`coupled_arm_selection`, Algorithm 1) with it, and ``update``
recomputes from the same key whether the matching event :math:`M_t` happened
(:func:`count_trials`), so the two agree exactly although the protocol passes only the
action from ``act`` to ``update``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.checks import check_finite, is_traced
from ppl_bandits.core.claims import GaussianClaim
from ppl_bandits.core.types import Agent

__all__ = [
    "RANK_RTOL_FACTOR",
    "CASResult",
    "HCSAState",
    "HCSAStatistics",
    "HypotheticalContexts",
    "augmentation_budget",
    "check_action",
    "check_contexts",
    "check_positive",
    "check_probability",
    "check_reward",
    "count_trials",
    "coupled_arm_selection",
    "coupled_pseudo_rewards",
    "dr_pseudo_rewards",
    "hcsa_claim",
    "hcsa_estimate",
    "hcsa_statistics",
    "hcsa_statistics_update",
    "hcsa_ts",
    "hypothetical_action_probs",
    "hypothetical_contexts",
    "hypothetical_gram",
    "max_trials",
    "orthonormal_completion",
    "prior_dim_dtype",
    "rank_tolerance",
    "ridge_reference",
    "sample_hypothetical_action",
    "sampling_moments",
    "serial_after",
]

RANK_RTOL_FACTOR = 10.0
"""(R) Relative rank tolerance is ``RANK_RTOL_FACTOR · d · eps``: eigenvalues of a Gram
matrix computed by ``eigh`` carry an absolute error of order ``d · eps · λ_max`` (Golub and
Van Loan, Matrix Computations, Sec. 8.1); a factor 10 above that separates round-off from
signal, as ``numpy.linalg.matrix_rank`` does for singular values."""


def serial_after(x, *deps):
    r"""Return ``x`` unchanged but data-dependent on ``deps``: :math:`x + 0\cdot\sum_k d_k[0]`.

    Why: jaxlib 0.10's CPU LAPACK kernels (``eigh``, LU, Cholesky, triangular solves)
    split a batch over XLA's intra-op thread pool and block until the pieces are done. When
    as many *independent* LAPACK calls as the pool has threads run at the same time (two on
    a two-core machine), every worker blocks and the computation never returns (a gdb
    stack shows all ``tf_XLAEigen`` workers in ``ParallelBatchMap`` /
    ``BlockingCounter::Wait``). Every jitted path of this package therefore orders its
    LAPACK calls by data dependencies; this helper adds one where the mathematics does not.
    XLA keeps ``0.0 * d`` (it is not 0 for d = inf or NaN), so the dependency survives
    optimization; the value is exactly ``x`` whenever ``deps`` are finite.

    >>> serial_after(jnp.ones(2), jnp.arange(3))
    Array([1., 1.], dtype=float32)
    """
    x = jnp.asarray(x)
    zero = jnp.zeros((), x.dtype)
    for dep in deps:
        zero = zero + 0.0 * jnp.ravel(jnp.asarray(dep))[0].astype(x.dtype)
    return x + zero


# --------------------------------------------------------------------------------------
# Boundary checks (concrete inputs only; skipped inside jax transformations)
# --------------------------------------------------------------------------------------


def check_probability(name: str, value, *, low_open=True, high_open=True) -> float:
    """Return ``float(value)`` or raise ``ValueError`` unless it lies in (0, 1).

    ``low_open``/``high_open`` choose whether 0 and 1 are excluded.

    >>> check_probability("gamma", 0.3)
    0.3
    >>> check_probability("gamma", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: gamma is 1.0; expected a number in (0, 1)
    """
    v = float(value)
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (np.isfinite(v) and lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} is {value!r}; expected a number in {interval}")
    return v


def check_positive(name: str, value, *, allow_zero=False) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        want = "a finite number >= 0" if allow_zero else "a finite positive number"
        raise ValueError(f"{name} is {value!r}; expected {want}")
    return v


def check_contexts(contexts, d: int | None = None, *, name: str = "contexts") -> None:
    """Raise ``ValueError`` unless ``contexts`` is a finite (N, d) array with N >= 2.

    Skipped on traced arrays (validate once at the boundary, before ``jax.jit``).

    >>> check_contexts(jnp.ones((1, 3)))
    Traceback (most recent call last):
    ...
    ValueError: contexts has shape (1, 3); expected (N, d) with N >= 2 arms
    >>> check_contexts(jnp.ones((4, 3)), d=2)
    Traceback (most recent call last):
    ...
    ValueError: contexts has shape (4, 3); expected (N, 2) (d = 2 from the agent's state)
    """
    if is_traced(contexts):
        return
    shape = tuple(np.shape(contexts))
    if len(shape) != 2 or shape[0] < 2:
        raise ValueError(f"{name} has shape {shape}; expected (N, d) with N >= 2 arms")
    if d is not None and shape[1] != d:
        raise ValueError(
            f"{name} has shape {shape}; expected (N, {d}) (d = {d} from the agent's state)"
        )
    check_finite(name, contexts)


def check_action(action, num_arms: int) -> None:
    if is_traced(action):
        return
    a = np.asarray(action)
    if a.shape != () or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"action has shape {a.shape} and dtype {a.dtype}; expected an integer scalar"
        )
    if not 0 <= int(a) < num_arms:
        raise ValueError(f"action is {int(a)}; expected an arm index in [0, {num_arms})")


def check_reward(reward) -> None:
    if is_traced(reward):
        return
    r = np.asarray(reward)
    if r.shape != ():
        raise ValueError(f"reward has shape {r.shape}; expected a scalar ()")
    check_finite("reward", r)


# --------------------------------------------------------------------------------------
# Hypothetical contexts (Sec. 4.2, Lemma 1)
# --------------------------------------------------------------------------------------


def rank_tolerance(eigvals, rtol: float | None = None):
    r"""(R) Eigenvalues above this tolerance count towards the rank r.

    .. math:: \tau = \mathrm{rtol}\cdot\max(\lambda_{\max}, 0), \qquad
              \mathrm{rtol} = \texttt{RANK\_RTOL\_FACTOR}\cdot d\cdot\varepsilon
              \ \text{by default},

    with ε the machine epsilon of the eigenvalues' dtype. A zero matrix has rank 0.

    Parameters
    ----------
    eigvals : array (..., d)
    rtol : float, optional

    Examples
    --------
    >>> lam = jnp.array([0.0, 1e-12, 2.0], jnp.float32)
    >>> tol = rank_tolerance(lam)
    >>> int(jnp.sum(lam > tol))
    1
    """
    eigvals = jnp.asarray(eigvals)
    d = eigvals.shape[-1]
    if rtol is None:
        rtol = RANK_RTOL_FACTOR * d * float(jnp.finfo(eigvals.dtype).eps)
    return rtol * jnp.maximum(jnp.max(eigvals, axis=-1), 0.0)


def orthonormal_completion(basis, keep):
    r"""(R) Gram–Schmidt completion: keep the columns flagged ``keep``, re-orthonormalize the rest.

    Column ``j`` with ``keep[j] = False`` is replaced by the normalized residual of its
    projection on every kept column and on the already processed columns ``i < j``
    (classical Gram–Schmidt applied twice, "twice is enough": Giraud, Langou, Rozložník
    2005). Seeded with the eigenvectors of a symmetric matrix (orthonormal to round-off),
    the result spans the orthogonal complement of the kept columns and is orthonormal to
    round-off; a seed that is (numerically) inside the span of earlier columns is not
    supported.

    Parameters
    ----------
    basis : array (d, d)
        Columns; those with ``keep`` must be orthonormal.
    keep : bool array (d,)

    Returns
    -------
    array (d, d)

    Examples
    --------
    >>> u = jnp.array([[1.0, 1.0], [0.0, 1.0]])
    >>> q = orthonormal_completion(u, jnp.array([True, False]))
    >>> q
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    basis = jnp.asarray(basis)
    d = basis.shape[-1]
    idx = jnp.arange(d)

    def body(j, Q):
        fixed = (keep | (idx < j)) & (idx != j)
        C = Q * fixed[None, :].astype(Q.dtype)
        q = Q[:, j]
        q = q - C @ (C.T @ q)
        q = q - C @ (C.T @ q)
        q = q / jnp.linalg.norm(q)
        return Q.at[:, j].set(jnp.where(keep[j], Q[:, j], q))

    return jax.lax.fori_loop(0, d, body, basis)


class HypotheticalContexts(NamedTuple):
    """The hypothetical arm set of one round, in a fixed shape (slot 0 is the played arm)."""

    z: jax.Array
    """(d + 1, d) slot 0 = x_a; slots 1..r = √λ_j u_jᵀ; slots r+1..d = u_jᵀ on augmentation
    rounds and 0 otherwise."""
    active: jax.Array
    """(d + 1,) bool: which slots belong to the hypothetical bandit (N_t of them)."""
    rank: jax.Array
    """() int32: r, the rank of the other arms' Gram matrix Σ_{k≠a} x_k x_kᵀ."""
    num_slots: jax.Array
    """() int32: N_t = r + 1 off the augmentation set, d + 1 on it (eq. 7)."""
    augmented: jax.Array
    """() bool: whether the orthonormal complement was added (round t ∈ A)."""


def hypothetical_contexts(
    contexts, action, *, augment=False, rank_rtol: float | None = None
) -> HypotheticalContexts:
    r"""Hypothetical contexts of Sec. 4.2 (eqs. 3 and 8) for the played arm ``action``.

    .. math::

        \sum_{k\ne a} x_k x_k^\top = \sum_{j=1}^{r}\lambda_j u_j u_j^\top, \quad
        z_0 = x_a,\ z_j = \sqrt{\lambda_j}\,u_j\ (1\le j\le r),\ z_j = u_j\ (r<j\le d,
        \text{ on } A),

    so that (Lemma 1) :math:`\sum_j z_j z_j^\top = \sum_{k=1}^N x_k x_k^\top` off the
    augmentation set and :math:`\sum_k x_k x_k^\top + P_\perp` on it, with :math:`P_\perp` the
    orthogonal projector onto :math:`\mathrm{span}\{u_1..u_r\}^\perp`. The rank ``r`` counts
    eigenvalues above :func:`rank_tolerance`; the complement comes from
    :func:`orthonormal_completion` seeded with ``eigh``'s remaining eigenvectors.

    Parameters
    ----------
    contexts : array (N, d)
    action : int
    augment : bool (may be traced)
        Whether the round belongs to the augmentation set A.
    rank_rtol : float, optional
        Relative rank tolerance (see :func:`rank_tolerance`).

    Examples
    --------
    Two arms in d = 2: the other arm's Gram matrix has rank 1.

    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> hc = hypothetical_contexts(x, 0)
    >>> int(hc.rank), int(hc.num_slots), hc.active.tolist()
    (1, 2, [True, True, False])
    >>> bool(jnp.allclose(hypothetical_gram(hc), x.T @ x))
    True
    >>> hc = hypothetical_contexts(x, 0, augment=True)
    >>> projector = jnp.diag(jnp.array([1.0, 0.0]))  # onto span{x_2}^⊥
    >>> int(hc.num_slots), bool(jnp.allclose(hypothetical_gram(hc), x.T @ x + projector))
    (3, True)
    """
    contexts = jnp.asarray(contexts)
    check_contexts(contexts)
    N = contexts.shape[0]
    if not is_traced(action):
        check_action(action, N)
    others = (jnp.arange(N) != action).astype(contexts.dtype)
    Xo = contexts * others[:, None]
    gram_other = Xo.T @ Xo
    lam, U = jnp.linalg.eigh(gram_other)
    lam, U = lam[::-1], U[:, ::-1]  # descending: the rank-r part is a prefix
    pos = lam > rank_tolerance(lam, rank_rtol)
    U = orthonormal_completion(U, pos)
    augment = jnp.asarray(augment, bool)
    scaled = jnp.sqrt(jnp.where(pos, lam, 0.0))[:, None] * U.T
    rows = jnp.where(pos[:, None], scaled, jnp.where(augment, U.T, 0.0))
    z = jnp.concatenate([contexts[action][None, :], rows], axis=0)
    active = jnp.concatenate([jnp.ones((1,), bool), pos | augment])
    rank = jnp.sum(pos).astype(jnp.int32)
    num_slots = jnp.sum(active).astype(jnp.int32)
    return HypotheticalContexts(z, active, rank, num_slots, augment)


def hypothetical_gram(hc: HypotheticalContexts):
    r"""Gram matrix of the active hypothetical contexts, :math:`\sum_{j} z_j z_j^\top` (d, d).

    >>> hc = hypothetical_contexts(jnp.eye(3), 1)
    >>> hypothetical_gram(hc)
    Array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    zm = hc.z * hc.active[:, None].astype(hc.z.dtype)
    return zm.T @ zm


# --------------------------------------------------------------------------------------
# Hypothetical action distribution φ (eq. 9)
# --------------------------------------------------------------------------------------


def hypothetical_action_probs(hc: HypotheticalContexts, gamma):
    r"""φ over the d + 1 slots (eq. 9): γ on slot 0, (1 − γ)/(N_t − 1) on the other active slots.

    Inactive slots get 0. When N_t = 1 (all other arms are zero) the remaining mass 1 − γ
    is a *null draw* that :func:`sample_hypothetical_action` maps to the inactive slot 1
    (its context is zero, so it contributes nothing).

    >>> hc = hypothetical_contexts(jnp.array([[1.0, 0.0], [0.0, 2.0]]), 0)
    >>> hypothetical_action_probs(hc, 0.25)
    Array([0.25, 0.75, 0.  ], dtype=float32)
    """
    dtype = hc.z.dtype
    others = jnp.maximum(hc.num_slots - 1, 1).astype(dtype)
    phi = jnp.where(hc.active, (1.0 - gamma) / others, 0.0).astype(dtype)
    return phi.at[0].set(gamma)


def sample_hypothetical_action(key, num_slots, gamma):
    r"""Draw ã ~ φ (eq. 9) from one uniform U.

    ã = 0 iff U < γ, else ã = 1 + ⌊(U − γ)/(1 − γ)·(N_t − 1)⌋.

    The event {ã = 0} depends on U only, not on N_t: :func:`coupled_arm_selection` and
    :func:`count_trials` use the same uniform to decide matching without building the
    hypothetical contexts of every trial. With N_t = 1 a non-matching draw is the null
    slot 1. The final ``minimum`` only guards the floating-point edge U → 1.

    >>> slots = jax.vmap(lambda k: sample_hypothetical_action(k, 4, 0.5))(
    ...     jax.random.split(jax.random.key(0), 2000))
    >>> bool(jnp.all((slots >= 0) & (slots <= 3)))
    True
    """
    u = jax.random.uniform(key)
    others = jnp.maximum(jnp.asarray(num_slots) - 1, 1)
    j = 1 + jnp.floor((u - gamma) / (1.0 - gamma) * others).astype(jnp.int32)
    j = jnp.minimum(j, others)
    return jnp.where(u < gamma, 0, j).astype(jnp.int32)


# --------------------------------------------------------------------------------------
# Coupled arm selection CAS (Algorithm 1)
# --------------------------------------------------------------------------------------


def max_trials(t, gamma, delta):
    r"""(R) Trial bound of CAS.

    .. math:: \rho_t = \lceil \log((t+1)^2/\delta) / \log(1/(1-\gamma)) \rceil ;

    then :math:`P(M_t^c) = (1-\gamma)^{\rho_t} \le \delta/(t+1)^2`. Works on traced ``t``.

    >>> int(max_trials(1, 0.5, 0.1))
    6
    >>> (1 - 0.5) ** 6 <= 0.1 / 4
    True
    """
    t = jnp.asarray(t, jnp.float32)
    rho = jnp.ceil(jnp.log((t + 1.0) ** 2 / delta) / math.log(1.0 / (1.0 - gamma)))
    return jnp.maximum(rho, 1.0).astype(jnp.int32)


def _match_uniform(hypothetical_key, m):
    """The uniform deciding ã = 0 in trial ``m`` (1-based); shared by CAS and count_trials."""
    return jax.random.uniform(jax.random.fold_in(hypothetical_key, m))


def count_trials(hypothetical_key, gamma, rho):
    r"""Trials of CAS until the first ã = 0, truncated at ρ: (trials, matched).

    ``trials = min(K, ρ)`` with K ~ Geometric(γ) on {1, 2, ...} and ``matched = K ≤ ρ``
    (the matching event :math:`M_t`). Deterministic given ``hypothetical_key``; it returns
    exactly what :func:`coupled_arm_selection` returns for the same key.

    >>> trials, matched = count_trials(jax.random.key(3), 0.5, 6)
    >>> 1 <= int(trials) <= 6
    True
    """

    def cond(c):
        m, matched = c
        return (~matched) & (m < rho)

    def body(c):
        m, _ = c
        m = m + 1
        return m, _match_uniform(hypothetical_key, m) < gamma

    m, matched = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.array(False)))
    return m, matched


class CASResult(NamedTuple):
    """Outcome of the coupled arm selection of one round."""

    action: jax.Array
    """() int32: the arm played, argmax_k x_kᵀθ̃ of the last trial."""
    trials: jax.Array
    """() int32: number of trials used, 1 ≤ trials ≤ ρ_t."""
    matched: jax.Array
    """() bool: the matching event M_t (ã = 0 happened within ρ_t trials)."""
    max_trials: jax.Array
    """() int32: the bound ρ_t."""
    theta_tilde: jax.Array
    """(d,) the Thompson sample of the last trial."""


def coupled_arm_selection(
    key, contexts, theta_hat, scale, *, gamma, rho, hypothetical_key
) -> CASResult:
    r"""CAS (Algorithm 1): resample (θ̃, a, ã) until ã = 0, at most ρ_t times (``lax.while_loop``).

    Trial m draws :math:`\tilde\theta_m = \hat\theta + S\xi_m` (ξ_m standard normal from
    ``fold_in(key, m)``, so :math:`\tilde\theta_m \sim N(\hat\theta, SS^\top)`), the arm
    :math:`a_m = \arg\max_k x_k^\top\tilde\theta_m`, and the hypothetical action
    :math:`\tilde a_m \sim \phi` from ``fold_in(hypothetical_key, m)``. It stops at the first
    :math:`\tilde a_m = 0` (the matching event) or after ``rho`` trials, and plays the last arm.
    Since {ã_m = 0} does not depend on N_t (:func:`sample_hypothetical_action`), the
    hypothetical contexts are built once, for the arm finally played, as the paper
    recommends (Sec. 4.5).

    Parameters
    ----------
    key : PRNG key
        Randomness of the Thompson samples.
    contexts : array (N, d)
    theta_hat : array (d,)
    scale : array (d, d)
        Square root S of the sampling covariance (see :func:`sampling_moments`).
    gamma : float
        φ(0), the probability that one trial matches.
    rho : int
        Trial bound ρ_t (see :func:`max_trials`).
    hypothetical_key : PRNG key
        Randomness of the hypothetical actions (kept apart so that :func:`count_trials`
        can replay the matching decision).

    Examples
    --------
    >>> x = jnp.eye(3)
    >>> res = coupled_arm_selection(jax.random.key(0), x, jnp.zeros(3), jnp.eye(3),
    ...                             gamma=0.5, rho=6, hypothetical_key=jax.random.key(1))
    >>> bool(1 <= res.trials <= res.max_trials)
    True
    >>> bool(res.trials == count_trials(jax.random.key(1), 0.5, 6)[0])
    True
    """
    contexts = jnp.asarray(contexts)
    check_contexts(contexts)
    theta_hat = jnp.asarray(theta_hat)
    d = contexts.shape[1]
    rho = jnp.asarray(rho, jnp.int32)

    def cond(c):
        m, _, matched, _ = c
        return (~matched) & (m < rho)

    def body(c):
        m, _, _, _ = c
        m = m + 1
        xi = jax.random.normal(jax.random.fold_in(key, m), (d,), theta_hat.dtype)
        theta = theta_hat + scale @ xi
        a = jnp.argmax(contexts @ theta).astype(jnp.int32)
        return m, a, _match_uniform(hypothetical_key, m) < gamma, theta

    init = (jnp.int32(0), jnp.int32(0), jnp.array(False), theta_hat)
    m, a, matched, theta = jax.lax.while_loop(cond, body, init)
    return CASResult(a, m, matched, rho, theta)


# --------------------------------------------------------------------------------------
# Reference estimator and pseudo-rewards (eqs. 10, 11, 14)
# --------------------------------------------------------------------------------------


def ridge_reference(lam: float = 1.0) -> Callable:
    r"""(R) Reference estimator of eq. (10): ridge on the played pairs up to round t − 1.

    .. math:: \check\theta_t = \Big(\lambda I + \sum_{s<t} x_{s,a_s}x_{s,a_s}^\top\Big)^{-1}
              \sum_{s<t} x_{s,a_s} y_s ,

    using every played pair (matched or not; θ̌_t only has to be measurable with respect to
    the past). Returns a function ``(ref_gram, ref_moment) -> θ̌`` of the unregularized
    sufficient statistics.

    >>> ref = ridge_reference(1.0)
    >>> ref(jnp.eye(2), jnp.array([2.0, 4.0]))
    Array([1., 2.], dtype=float32)
    """
    lam = check_positive("lam", lam)

    def reference(ref_gram, ref_moment):
        d = ref_gram.shape[-1]
        return jnp.linalg.solve(ref_gram + lam * jnp.eye(d, dtype=ref_gram.dtype), ref_moment)

    return reference


def dr_pseudo_rewards(hc: HypotheticalContexts, rewards, slot, theta_check, phi):
    r"""Doubly robust pseudo-rewards of the hypothetical bandit (eq. 11), (R).

    .. math:: \breve Y_j = z_j^\top\check\theta
              + \frac{\mathbb 1\{\tilde a = j\}}{\phi(j)}\,(Y_j - z_j^\top\check\theta),
              \qquad j = 0..N_t - 1,

    unbiased for :math:`z_j^\top\theta^*` given the past whatever θ̌, as long as θ̌ does not
    depend on this round's draws. Only slot ``slot`` = ã uses its reward; a null draw
    (inactive slot) corrects nothing. Inactive slots return 0.

    Parameters
    ----------
    hc : HypotheticalContexts
    rewards : array (d + 1,)
        Hypothetical rewards Y_j = z_jᵀθ* + η (only ``rewards[slot]`` is read).
    slot : int
        The hypothetical action ã.
    theta_check : array (d,)
    phi : array (d + 1,)
        The φ used in the weights (:func:`hypothetical_action_probs`).

    Examples
    --------
    >>> hc = hypothetical_contexts(jnp.eye(2), 0)
    >>> phi = hypothetical_action_probs(hc, 0.5)
    >>> dr_pseudo_rewards(hc, jnp.array([1.0, 0.0, 0.0]), 0, jnp.zeros(2), phi)
    Array([2., 0., 0.], dtype=float32)
    """
    pred = hc.z @ theta_check
    hit = (jnp.arange(hc.z.shape[0]) == slot) & hc.active
    weight = jnp.where(hit, 1.0 / jnp.where(hit, phi, 1.0), 0.0)
    out = pred + weight * (rewards - pred)
    return jnp.where(hc.active, out, 0.0)


def coupled_pseudo_rewards(hc: HypotheticalContexts, reward, theta_check, gamma):
    r"""Coupled pseudo-rewards (eq. 14), (R): eq. (11) on the matching event ã = 0.

    .. math:: \breve Y_0 = x_a^\top\check\theta + (Y - x_a^\top\check\theta)/\gamma,
              \qquad \breve Y_j = z_j^\top\check\theta\ (j \ge 1),

    computable because slot 0 is the played arm and its reward ``Y`` is observed.

    >>> hc = hypothetical_contexts(jnp.eye(2), 0)
    >>> coupled_pseudo_rewards(hc, 1.0, jnp.zeros(2), 0.5)
    Array([2., 0., 0.], dtype=float32)
    """
    pred = hc.z @ theta_check
    out = pred.at[0].add((reward - pred[0]) / gamma)
    return jnp.where(hc.active, out, 0.0)


# --------------------------------------------------------------------------------------
# HCSA estimator (eq. 15) and Thompson sampling moments
# --------------------------------------------------------------------------------------


def hcsa_statistics_update(gram, moment, hc: HypotheticalContexts, pseudo_rewards, include):
    r"""(R) One round of the HCSA sufficient statistics (eq. 15).

    .. math:: V_t = V_{t-1} + \mathbb 1\{M_t\}\sum_j z_j z_j^\top, \qquad
              W_t = W_{t-1} + \mathbb 1\{M_t\}\sum_j z_j \breve Y_j ,

    with the augmentation projector inside :math:`\sum_j z_j z_j^\top` on rounds of A; no
    ridge term. ``include`` is the matching indicator (rounds without it carry over).

    >>> hc = hypothetical_contexts(jnp.eye(2), 0)
    >>> V, W = hcsa_statistics_update(jnp.zeros((2, 2)), jnp.zeros(2), hc,
    ...                               jnp.array([2.0, 0.0, 0.0]), True)
    >>> V, W
    (Array([[1., 0.],
           [0., 1.]], dtype=float32), Array([2., 0.], dtype=float32))
    """
    w = hc.active.astype(hc.z.dtype) * jnp.asarray(include, hc.z.dtype)
    zw = hc.z * w[:, None]
    return gram + zw.T @ hc.z, moment + zw.T @ pseudo_rewards


def _spectral(gram, rank_rtol):
    lam, Q = jnp.linalg.eigh(gram)
    pos = lam > rank_tolerance(lam, rank_rtol)
    return lam, Q, pos


def hcsa_estimate(gram, moment, *, rank_rtol: float | None = None):
    r"""The HCSA estimator :math:`\hat\theta_t = V_t^{-1} W_t` (eq. 15), (R).

    Before V_t has full rank (e.g. before the first matched round) the minimum-norm
    solution :math:`V_t^{+} W_t` is returned: zero in directions never seen.

    >>> hcsa_estimate(2.0 * jnp.eye(2), jnp.array([2.0, 4.0]))
    Array([1., 2.], dtype=float32)
    >>> hcsa_estimate(jnp.zeros((2, 2)), jnp.zeros(2))
    Array([0., 0.], dtype=float32)
    """
    lam, Q, pos = _spectral(gram, rank_rtol)
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    return Q @ (inv * (Q.T @ moment))


def sampling_moments(gram, moment, *, v, null_precision=1.0, rank_rtol: float | None = None):
    r"""(R) Mean and covariance square root of the Thompson sample, θ̃ ~ N(θ̂, v² P⁻¹).

    With :math:`V = Q\,\mathrm{diag}(\lambda)\,Q^\top`, the precision P equals V on the
    eigen-directions with :math:`\lambda_i >` :func:`rank_tolerance` and ``null_precision``
    on the others; θ̂ is :func:`hcsa_estimate`. Once V has full rank (after the first
    matched augmentation round) this is exactly N(V⁻¹W, v² V⁻¹) as in Algorithm 2.

    Returns
    -------
    theta_hat : (d,)
    scale : (d, d), with ``scale @ scale.T`` = v² P⁻¹.

    Examples
    --------
    >>> th, S = sampling_moments(4.0 * jnp.eye(2), jnp.array([4.0, 0.0]), v=1.0)
    >>> th, S
    (Array([1., 0.], dtype=float32), Array([[0.5, 0. ],
           [0. , 0.5]], dtype=float32))
    """
    lam, Q, pos = _spectral(gram, rank_rtol)
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    theta_hat = Q @ (inv * (Q.T @ moment))
    prec = jnp.where(pos, lam, null_precision)
    scale = v * Q / jnp.sqrt(prec)[None, :]
    return theta_hat, scale


def augmentation_budget(t, scale: float = 1.0):
    r"""(R) Augmentation schedule :math:`h_t = c\log(t + 1)`.

    Round t joins the augmentation set A while :math:`|A_{t-1}| < h_t`.

    The paper ties h_t to γ and λ through its eq. (4), which was lost; ``c`` (``aug_scale``
    of :func:`hcsa_ts`) is the tunable constant. A custom schedule can be passed to
    :func:`hcsa_ts` as ``schedule``.

    >>> abs(float(augmentation_budget(1, 2.0)) - 2.0 * math.log(2.0)) < 1e-6
    True
    """
    return scale * jnp.log(jnp.asarray(t, jnp.float32) + 1.0)


# --------------------------------------------------------------------------------------
# The agent (Algorithm 2)
# --------------------------------------------------------------------------------------


class HCSAState(NamedTuple):
    """State of HCSA+TS after ``round`` rounds."""

    gram: jax.Array
    """(d, d) V_t = Σ_{s≤t, M_s} Σ_j z_{s,j} z_{s,j}ᵀ, with the augmentation projectors (eq. 15)."""
    moment: jax.Array
    """(d,) W_t = Σ_{s≤t, M_s} Σ_j z_{s,j} Y̆_{s,j} with the coupled pseudo-rewards (eq. 14)."""
    ref_gram: jax.Array
    """(d, d) Σ_{s≤t} x_{s,a_s} x_{s,a_s}ᵀ: played contexts, for the reference θ̌ (eq. 10)."""
    ref_moment: jax.Array
    """(d,) Σ_{s≤t} x_{s,a_s} y_s."""
    round: jax.Array
    """() int32: t, the number of completed rounds."""
    num_augmented: jax.Array
    """() int32: :math:`|A_t|`, rounds that joined the augmentation set."""
    num_matched: jax.Array
    """() int32: number of rounds with the matching event M_s."""
    total_trials: jax.Array
    """() int32: CAS trials summed over rounds."""
    last_trials: jax.Array
    """() int32: CAS trials of round t."""
    last_matched: jax.Array
    """() bool: M_t for round t."""
    coupling_key: jax.Array
    """PRNG key of the hypothetical draws ã of round t + 1 (read by act and update)."""


def prior_dim_dtype(prior) -> tuple[int, Any]:
    mu = getattr(prior, "mu", None)
    if mu is None or jnp.ndim(mu) != 1:
        raise ValueError(
            f"prior is {type(prior).__name__}; expected a LinearBanditPrior with mu of shape (d,)"
        )
    mu = jnp.asarray(mu)
    return mu.shape[0], jnp.result_type(mu.dtype, jnp.float32)


def hcsa_ts(
    v: float = 1.0,
    gamma: float = 0.5,
    delta: float = 0.1,
    lam: float = 1.0,
    aug_scale: float = 1.0,
    *,
    schedule: Callable | None = None,
    reference: Callable | None = None,
    null_precision: float = 1.0,
    rank_rtol: float | None = None,
    sampling_gamma: float | None = None,
    name: str = "HCSA+TS",
) -> Agent:
    r"""HCSA+TS (Algorithm 2): LinTS-shared on the HCSA estimator, with coupled arm selection.

    Each round t: (act) run :func:`coupled_arm_selection` with
    :math:`\tilde\theta \sim N(\hat\theta_{t-1}, v^2 V_{t-1}^{-1})` (see
    :func:`sampling_moments`) and the bound ρ_t of :func:`max_trials`; (update) replay the
    matching decision with :func:`count_trials`, decide whether t joins A
    (:func:`augmentation_budget`), build the hypothetical contexts of the played arm
    (:func:`hypothetical_contexts`), the coupled pseudo-rewards (:func:`coupled_pseudo_rewards`)
    with the reference θ̌ (:func:`ridge_reference`), and on M_t add them to (V, W)
    (:func:`hcsa_statistics_update`). Cost: two d × d eigendecompositions per round.

    Parameters
    ----------
    v : float > 0
        Exploration scale of the Thompson sample.
    gamma : float in (0, 1)
        φ(0), the hypothetical probability of the played arm (eq. 9).
    delta : float in (0, 1)
        Coupling failure budget: P(M_t fails) ≤ δ/(t+1)².
    lam : float > 0
        Ridge parameter of the reference estimator (eq. 10).
    aug_scale : float >= 0
        c in h_t = c log(t + 1); 0 disables the orthogonal augmentation.
    schedule : callable t -> h_t, optional
        Replaces :func:`augmentation_budget`.
    reference : callable (ref_gram, ref_moment) -> θ̌, optional
        Replaces :func:`ridge_reference` (``lam`` is then unused).
    null_precision : float > 0
        Precision of the Thompson sample in directions V has not seen yet (R).
    rank_rtol : float, optional
        Relative rank tolerance (:func:`rank_tolerance`).
    sampling_gamma : float in (0, 1), optional
        Probability with which CAS actually draws ã = 0; defaults to ``gamma``. Only the
        wrong-φ negative control of :mod:`validation.coupling` sets it differently.
    name : str

    Raises
    ------
    ValueError
        Naming the argument, for a value outside its range; at run time (outside
        ``jax.jit``) for contexts that are not (N, d) with N >= 2 or do not match the
        prior's d.

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> agent = hcsa_ts(v=0.5, gamma=0.5)
    >>> state = agent.init(jax.random.key(0), isotropic_linear_bandit_prior(3))
    >>> x = jnp.eye(3)
    >>> a = agent.act(jax.random.key(1), state, x)
    >>> state = agent.update(jax.random.key(2), state, x, a, jnp.float32(0.3))
    >>> int(state.round), state.gram.shape
    (1, (3, 3))
    >>> hcsa_ts(gamma=1.5)
    Traceback (most recent call last):
    ...
    ValueError: gamma is 1.5; expected a number in (0, 1)
    """
    v = check_positive("v", v)
    gamma = check_probability("gamma", gamma)
    delta = check_probability("delta", delta)
    aug_scale = check_positive("aug_scale", aug_scale, allow_zero=True)
    null_precision = check_positive("null_precision", null_precision)
    sampling_gamma = gamma if sampling_gamma is None else sampling_gamma
    sampling_gamma = check_probability("sampling_gamma", sampling_gamma)
    if rank_rtol is not None:
        rank_rtol = check_positive("rank_rtol", rank_rtol)
    if reference is None:
        reference = ridge_reference(lam)
    elif not callable(reference):
        raise ValueError(f"reference is {reference!r}; expected a callable (ref_gram, ref_moment)")
    if schedule is None:

        def schedule(t):
            return augmentation_budget(t, aug_scale)

    elif not callable(schedule):
        raise ValueError(f"schedule is {schedule!r}; expected a callable t -> h_t")

    def init(key, prior) -> HCSAState:
        d, dtype = prior_dim_dtype(prior)
        zi = jnp.int32(0)
        return HCSAState(
            gram=jnp.zeros((d, d), dtype),
            moment=jnp.zeros((d,), dtype),
            ref_gram=jnp.zeros((d, d), dtype),
            ref_moment=jnp.zeros((d,), dtype),
            round=zi,
            num_augmented=zi,
            num_matched=zi,
            total_trials=zi,
            last_trials=zi,
            last_matched=jnp.array(False),
            coupling_key=jax.random.fold_in(key, 0),
        )

    def act(key, state: HCSAState, contexts):
        check_contexts(contexts, state.gram.shape[-1])
        contexts = jnp.asarray(contexts, state.gram.dtype)
        t = state.round + 1
        theta_hat, scale = sampling_moments(
            state.gram, state.moment, v=v, null_precision=null_precision, rank_rtol=rank_rtol
        )
        res = coupled_arm_selection(
            key,
            contexts,
            theta_hat,
            scale,
            gamma=sampling_gamma,
            rho=max_trials(t, gamma, delta),
            hypothetical_key=state.coupling_key,
        )
        return res.action

    def update(key, state: HCSAState, contexts, action, reward) -> HCSAState:
        check_contexts(contexts, state.gram.shape[-1])
        check_action(action, np.shape(contexts)[0])
        check_reward(reward)
        dtype = state.gram.dtype
        contexts = jnp.asarray(contexts, dtype)
        reward = jnp.asarray(reward, dtype)
        t = state.round + 1
        trials, matched = count_trials(
            state.coupling_key, sampling_gamma, max_trials(t, gamma, delta)
        )
        in_aug = state.num_augmented < schedule(t)
        hc = hypothetical_contexts(contexts, action, augment=in_aug, rank_rtol=rank_rtol)
        # order the reference's LAPACK call after the eigh (see serial_after)
        theta_check = reference(serial_after(state.ref_gram, hc.z), state.ref_moment)
        pseudo = coupled_pseudo_rewards(hc, reward, theta_check, gamma)
        gram, moment = hcsa_statistics_update(state.gram, state.moment, hc, pseudo, matched)
        x = contexts[action]
        return HCSAState(
            gram=gram,
            moment=moment,
            ref_gram=state.ref_gram + jnp.outer(x, x),
            ref_moment=state.ref_moment + reward * x,
            round=t,
            num_augmented=state.num_augmented + in_aug.astype(jnp.int32),
            num_matched=state.num_matched + matched.astype(jnp.int32),
            total_trials=state.total_trials + trials,
            last_trials=trials,
            last_matched=matched,
            coupling_key=jax.random.fold_in(key, 1),
        )

    return Agent(name, init, act, update, hcsa_claim)


def hcsa_claim(state: HCSAState) -> GaussianClaim:
    """N(θ̂_t, V_t⁺): the HCSA estimate (eq. 15, minimum-norm while V_t is singular) and the
    pseudo-inverse of its Gram, the centre and shape of the Thompson sample (scaled by v²)."""
    d = state.moment.shape[-1]
    cov = 0.5 * (jnp.linalg.pinv(state.gram) + jnp.swapaxes(jnp.linalg.pinv(state.gram), -1, -2))
    return GaussianClaim(hcsa_estimate(state.gram, state.moment), cov, (("theta", (d,)),))


class HCSAStatistics(NamedTuple):
    """What the coupling checks read of an HCSA+TS state (Kim 2025, Sec. 4)."""

    gram: jax.Array
    """(d, d) V_t, the augmented Gram matrix of eq. 15."""
    moment: jax.Array
    """(d,) W_t, the pseudo-reward moment of eq. 14."""
    num_matched: jax.Array
    """() int32: rounds with the matching event M_s."""


def hcsa_statistics(state: HCSAState) -> HCSAStatistics:
    """The sufficient statistics of the HCSA estimate and the count of matched rounds.

    The coupling checks compare the V_t-normalized error V_t^{1/2}(θ̂_t − θ) with that of
    the hypothetical full-information estimator, and they need every round matched; this
    is the one place outside the family that reads them.
    """
    return HCSAStatistics(state.gram, state.moment, state.num_matched)
