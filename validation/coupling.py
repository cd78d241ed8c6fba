r"""The HCSA coupling checks (Kim 2025; ``docs/maths/hcsa.md``).

Four checks of :mod:`ppl_bandits.linear_contextual.hcsa`, each with a verdict, its statistics
and at least one deliberately wrong variant that it must reject (negative controls):

1. **Lemma 1** (float64): :math:`\sum_j z_j z_j^\top = \sum_k x_k x_k^\top` to round-off for
   random, rank-deficient (N < d, low-rank) and masked contexts, for every played arm; with
   the augmentation, the added matrix is the orthogonal projector onto the complement, so
   the eigenvalues of the hypothetical Gram dominate those of :math:`\sum_k x_k x_k^\top`,
   exceed them by at most 1, and the Gram is :math:`\succeq I` on the complement.
   Control: contexts :math:`z_j = u_j` without the :math:`\sqrt{\lambda_j}` scaling.
2. **Matching**: the empirical P(M_t) of CAS is at least 1 − δ/(t+1)² (one-sided exact
   binomial test) and the trial count is Geometric(γ) truncated at ρ_t (chi-square); the
   count never exceeds ρ_t and :func:`~ppl_bandits.linear_contextual.hcsa.count_trials`
   replays CAS exactly.
   Control: CAS that draws ã = 0 with probability 0.5 instead of γ.
3. **Unbiasedness of eq. (11)** by Monte Carlo: z-scores (mean − z_jᵀθ*)/MCSE over every
   active slot of several scenarios, Bonferroni at level α. Controls: wrong φ (γ in the
   weights, 0.5 used to sample) and a biased reference that is refit on the current
   round's hypothetical pair (θ̌ then depends on ã and η). A reference that is merely
   *offset* cannot make eq. (11) biased (double robustness); the separate check
   ``double_robustness`` shows that it indeed passes.
4. **Coupling (Lemma 2)**, (R): over many replications, the V-normalized error
   :math:`V_T^{1/2}(\hat\theta_T - \theta^*)` of the HCSA estimator produced by the agent
   (CAS resampling, observed rewards, coupled pseudo-rewards eq. 14, restricted to runs where
   every M_t happened) against that of the full-information hypothetical estimator (eq. 12)
   on the matching event: one Thompson draw per round, hypothetical rewards for every slot,
   pseudo-rewards eq. (11) at ã = 0 with the φ that actually drew ã. The two estimators
   are compared as two "chains" with ArviZ rank-normalized split-R̂ and bulk/tail ESS, and
   with a two-sample Kolmogorov–Smirnov test per statistic (norm and two coordinates).
   Controls: wrong φ (the agent weights with γ but samples with 0.5; the reference
   estimator uses the φ that drew ã) and a reference θ̌ offset by ``reference_bias`` prior
   standard deviations per coordinate.

Run it with :func:`run_coupling_checks`; :func:`validation.coupling_report.write_coupling_report`
writes the record, the figures and the HTML page. The R̂ and ESS thresholds of check 4 are
those of :mod:`validation.diagnostics`, where their sources are cited.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits.linear_contextual.environment import hcsa_environment
from ppl_bandits.linear_contextual.hcsa import (
    augmentation_budget,
    check_probability,
    count_trials,
    coupled_arm_selection,
    dr_pseudo_rewards,
    hcsa_statistics,
    hcsa_statistics_update,
    hcsa_ts,
    hypothetical_action_probs,
    hypothetical_contexts,
    hypothetical_gram,
    max_trials,
    rank_tolerance,
    ridge_reference,
    sample_hypothetical_action,
    sampling_moments,
    serial_after,
)
from validation.diagnostics import ESS_BULK_MIN, ESS_TAIL_MIN, RHAT_MAX

__all__ = [
    "ALPHA",
    "ESS_MIN",
    "GRAM_RTOL",
    "RHAT_MAX",
    "run_coupling_checks",
    "truncated_geometric_pmf",
]

ALPHA = 0.01
"""Family-wise error level of each statistical check (Bonferroni within the check)."""
ESS_MIN = math.ceil(max(ESS_BULK_MIN, ESS_TAIL_MIN))
"""Least number of replications per estimator in check 4: with fewer, the bulk and tail ESS
cannot reach their minima, ``ESS_BULK_MIN`` and ``ESS_TAIL_MIN`` of
:mod:`validation.diagnostics` (which, with ``RHAT_MAX``, check 4 applies)."""
GRAM_RTOL = 1e-10
"""Round-off tolerance of the float64 identities of check 1, relative to max(1, ‖Σ x xᵀ‖)."""


def _progress_logger(progress: bool, start: float):
    """One line per stage on stderr with the time since the start (or nothing)."""

    def log(msg: str) -> None:
        if progress:
            elapsed = time.perf_counter() - start
            print(f"[coupling {elapsed:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


# --------------------------------------------------------------------------------------
# Check 1: Lemma 1 (float64)
# --------------------------------------------------------------------------------------


def _scenario_contexts(key, kind: str, N: int, d: int, draws: int):
    """(draws, N', d) context matrices of one scenario (float64 inside enable_x64)."""
    k1, k2 = jax.random.split(key)
    if kind == "random":
        return jax.random.normal(k1, (draws, N, d))
    if kind == "few_arms":  # N' < d: the other arms' Gram is rank-deficient
        n = max(2, d // 3)
        return jax.random.normal(k1, (draws, n, d))
    if kind == "low_rank":  # rows in a random rank-2 subspace, plus a duplicated arm
        basis = jax.random.normal(k2, (draws, 2, d))
        x = jnp.einsum("bnk,bkd->bnd", jax.random.normal(k1, (draws, N, 2)), basis)
        return x.at[:, -1].set(x[:, 0])
    if kind == "masked":  # the last d//2 entries of every context are missing
        x = jax.random.normal(k1, (draws, N, d))
        return x.at[:, :, d - d // 2 :].set(0.0)
    raise ValueError(f"unknown scenario {kind!r}")


GRAM_SCENARIOS = ("random", "few_arms", "low_rank", "masked")


def _lemma1_stats(contexts, action):
    """Identity and eigenvalue statistics of one (contexts, action) pair.

    Written with two LAPACK calls that depend on each other (one batched ``eigh`` inside
    :func:`~ppl_bandits.linear_contextual.hcsa.hypothetical_contexts` for both variants, one stacked
    ``eigvalsh``): see :func:`ppl_bandits.linear_contextual.hcsa.serial_after` for why.
    """
    G = contexts.T @ contexts
    d = G.shape[0]
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(G)))
    both = jax.vmap(lambda aug: hypothetical_contexts(contexts, action, augment=aug))(
        jnp.array([False, True])
    )
    hc = jax.tree_util.tree_map(lambda v: v[0], both)
    aug = jax.tree_util.tree_map(lambda v: v[1], both)
    ident = jnp.max(jnp.abs(hypothetical_gram(hc) - G)) / scale
    # negative control: eigenvectors without the √λ scaling
    norms = jnp.linalg.norm(hc.z, axis=1, keepdims=True)
    unit = hc.z / jnp.where(norms > 0, norms, 1.0)
    bad = hc._replace(z=hc.z.at[1:].set(unit[1:]))
    ident_bad = jnp.max(jnp.abs(hypothetical_gram(bad) - G)) / scale
    H = hypothetical_gram(aug)
    proj = H - G  # the projector onto the complement: eigenvalues in {0, 1}
    idempotence = jnp.max(jnp.abs(proj @ proj - proj))
    slots = jnp.arange(aug.z.shape[0])
    comp = (slots > aug.rank) & aug.active  # augmentation slots: the complement basis
    U = aug.z * comp[:, None].astype(aug.z.dtype)  # rows u_j of the complement (others 0)
    block = U @ (H - jnp.eye(d, dtype=H.dtype)) @ U.T  # ⪰ 0 iff H ⪰ I there
    ortho = jnp.max(jnp.abs(U @ U.T - jnp.diag(comp.astype(U.dtype))))
    eig = jnp.linalg.eigvalsh(jnp.stack([H, G, proj, block[1:, 1:]]))
    eig_gap = jnp.min(eig[0] - eig[1]) / scale
    excess = jnp.max(eig[2])
    comp_min = jnp.min(eig[3])
    return ident, eig_gap, excess, idempotence, comp_min, ortho, hc.rank, ident_bad


_lemma1_batch = jax.jit(jax.vmap(jax.vmap(_lemma1_stats, in_axes=(None, 0)), in_axes=(0, None)))


def _check_gram(key, d: int, N: int, draws: int):
    """Statistics of Lemma 1 per scenario, and the identity errors of the control."""
    out, bad = {}, {}
    with jax.enable_x64(True):
        for i, kind in enumerate(GRAM_SCENARIOS):
            x = _scenario_contexts(jax.random.fold_in(key, i), kind, N, d, draws)
            x = x.astype(jnp.float64)
            acts = jnp.arange(x.shape[1])
            res = (np.asarray(v) for v in _lemma1_batch(x, acts))
            ident, gap, excess, idem, comp_min, ortho, rank, ident_bad = res
            bad[kind] = {
                "max_identity_error": float(ident_bad.max()),
                "log10_identity_errors": np.log10(np.maximum(ident_bad.ravel(), 1e-300)).tolist(),
            }
            out[kind] = {
                "num_matrices": int(x.shape[0]),
                "num_arms": int(x.shape[1]),
                "max_identity_error": float(ident.max()),
                "min_eigenvalue_gap": float(gap.min()),
                "max_eigenvalue_excess": float(excess.max()),
                "max_projector_idempotence_error": float(idem.max()),
                "min_complement_eigenvalue_minus_one": float(comp_min.min()),
                "max_complement_orthonormality_error": float(ortho.max()),
                "rank_range": [int(rank.min()), int(rank.max())],
                "log10_identity_errors": np.log10(np.maximum(ident.ravel(), 1e-300)).tolist(),
            }
    return out, bad


def _gram_verdicts(stats: dict) -> tuple[bool, bool]:
    ident_ok = all(s["max_identity_error"] <= GRAM_RTOL for s in stats.values())
    eig_ok = all(
        s["min_eigenvalue_gap"] >= -GRAM_RTOL
        and s["max_eigenvalue_excess"] <= 1.0 + GRAM_RTOL
        and s["max_projector_idempotence_error"] <= GRAM_RTOL
        and s["min_complement_eigenvalue_minus_one"] >= -GRAM_RTOL
        and s["max_complement_orthonormality_error"] <= GRAM_RTOL
        for s in stats.values()
    )
    return ident_ok, eig_ok


def _strip(stats: dict, drop=("log10_identity_errors",)) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk not in drop} for k, v in stats.items()}


# --------------------------------------------------------------------------------------
# Check 2: matching probability and geometric trial counts
# --------------------------------------------------------------------------------------


MATCHING_ROUNDS = (1, 10, 100, 1000)


def truncated_geometric_pmf(gamma: float, rho: int) -> np.ndarray:
    """P(trials = k), k = 1..ρ, of CAS with P(ã = 0) = γ stopped at ρ trials (check 2).

    Geometric(γ) on 1..ρ−1; trial ρ holds the rest, matched there or failed.

    >>> truncated_geometric_pmf(0.5, 3).tolist()
    [0.5, 0.25, 0.25]
    """
    k = np.arange(1, rho + 1)
    pmf = gamma * (1.0 - gamma) ** (k - 1)
    pmf[-1] = (1.0 - gamma) ** (rho - 1)  # trial ρ: matched there or failed
    return pmf


def _chisquare_truncated_geometric(trials: np.ndarray, gamma: float, rho: int):
    """Chi-square GOF of counts on {1..ρ}, tail bins pooled so every expected count >= 5."""
    from scipy import stats as sps

    n = trials.size
    pmf = truncated_geometric_pmf(gamma, rho)
    obs = np.bincount(trials, minlength=rho + 1)[1 : rho + 1].astype(float)
    exp = pmf * n
    o, e = [], []
    acc_o = acc_e = 0.0
    for oi, ei in zip(obs, exp, strict=True):
        acc_o += oi
        acc_e += ei
        if acc_e >= 5.0:
            o.append(acc_o)
            e.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 or acc_o > 0:
        if e:
            o[-1] += acc_o
            e[-1] += acc_e
        else:
            o.append(acc_o)
            e.append(acc_e)
    o, e = np.asarray(o), np.asarray(e)
    if o.size < 2:
        return float("nan"), 1.0, int(o.size)
    e = e * o.sum() / e.sum()
    res = sps.chisquare(o, e)
    return float(res.statistic), float(res.pvalue), int(o.size)


@jax.jit
def _cas_batch(keys, contexts, theta_hat, scale, gamma, rho):
    def one(k):
        k_ts, k_hyp = jax.random.split(k)
        res = coupled_arm_selection(
            k_ts, contexts, theta_hat, scale, gamma=gamma, rho=rho, hypothetical_key=k_hyp
        )
        replay = count_trials(k_hyp, gamma, rho)
        return res.trials, res.matched, (replay[0] == res.trials) & (replay[1] == res.matched)

    return jax.vmap(one)(keys)


def _run_cas(key, d: int, N: int, t: int, gamma: float, delta: float, sample_gamma, draws: int):
    k_ctx, k_theta, k_runs = jax.random.split(key, 3)
    contexts = jax.random.normal(k_ctx, (N, d)) / math.sqrt(d)
    theta_hat = jax.random.normal(k_theta, (d,)) / math.sqrt(d)
    scale = 0.3 * jnp.eye(d)
    rho = int(max_trials(t, gamma, delta))
    keys = jax.random.split(k_runs, draws)
    trials, matched, agree = _cas_batch(keys, contexts, theta_hat, scale, sample_gamma, rho)
    return rho, np.asarray(trials), np.asarray(matched), np.asarray(agree)


def _check_matching(key, d, N, gamma, delta, draws, *, sample_gamma):
    from scipy import stats as sps

    per_t = {}
    n_tests = len(MATCHING_ROUNDS)
    level = ALPHA / n_tests
    match_ok = geo_ok = bound_ok = replay_ok = True
    for i, t in enumerate(MATCHING_ROUNDS):
        rho, trials, matched, agree = _run_cas(
            jax.random.fold_in(key, i), d, N, t, gamma, delta, sample_gamma, draws
        )
        fails = int(draws - matched.sum())
        bound = delta / (t + 1) ** 2
        p_match = float(sps.binom.sf(fails - 1, draws, bound)) if fails > 0 else 1.0
        chi2, p_geo, bins = _chisquare_truncated_geometric(trials, gamma, rho)
        per_t[str(t)] = {
            "max_trials_bound": rho,
            "max_trials_observed": int(trials.max()),
            "mean_trials": float(trials.mean()),
            "expected_mean_trials": float(
                np.sum(np.arange(1, rho + 1) * truncated_geometric_pmf(gamma, rho))
            ),
            "failure_rate": fails / draws,
            "failure_bound": bound,
            "exact_failure_probability": (1.0 - gamma) ** rho,
            "p_value_failure_rate_le_bound": p_match,
            "chi2": chi2,
            "chi2_bins": bins,
            "p_value_geometric": p_geo,
            "replay_agreement": float(agree.mean()),
            "trial_counts": np.bincount(trials, minlength=rho + 1)[1:].tolist(),
        }
        match_ok &= p_match >= level
        geo_ok &= p_geo >= level
        bound_ok &= int(trials.max()) <= rho
        replay_ok &= bool(agree.all())
    return per_t, match_ok and bound_ok and replay_ok, geo_ok


# --------------------------------------------------------------------------------------
# Check 3: unbiasedness of the pseudo-rewards (eq. 11)
# --------------------------------------------------------------------------------------


UNBIASED_SCENARIOS = (
    ("random", False),
    ("random", True),
    ("masked", False),
    ("masked", True),
    ("low_rank", False),
    ("low_rank", True),
)


@partial(jax.jit, static_argnames=("draws", "reference"))
def _unbiased_mc(
    key,
    contexts,
    theta,
    ref_gram,
    ref_moment,
    action,
    augment,
    gamma,
    sample_gamma,
    noise_sd,
    *,
    draws,
    reference,
):
    """z-scores of the Monte Carlo mean of eq. (11) for every slot of one case."""
    d = theta.shape[0]
    hc = hypothetical_contexts(contexts, action, augment=augment)
    phi = hypothetical_action_probs(hc, gamma)
    ridge = ridge_reference(1.0)
    truth = hc.z @ theta
    ref_gram = serial_after(ref_gram, hc.z)  # LAPACK calls in sequence (hcsa.serial_after)

    def one(k):
        k_slot, k_eta = jax.random.split(k)
        slot = sample_hypothetical_action(k_slot, hc.num_slots, sample_gamma)
        rewards = truth + noise_sd * jax.random.normal(k_eta, ())  # η shared by the slots
        if reference == "leaky":  # refit including this round's hypothetical pair
            z = hc.z[slot] * hc.active[slot]
            theta_check = ridge(ref_gram + jnp.outer(z, z), ref_moment + z * rewards[slot])
        elif reference == "offset":  # biased but predictable: eq. (11) stays unbiased
            theta_check = ridge(ref_gram, ref_moment) + 1.0 / math.sqrt(d)
        else:
            theta_check = ridge(ref_gram, ref_moment)
        return dr_pseudo_rewards(hc, rewards, slot, theta_check, phi)

    y = jax.vmap(one)(jax.random.split(key, draws))
    mean, sd = jnp.mean(y, axis=0), jnp.std(y, axis=0, ddof=1)
    mcse = sd / math.sqrt(draws)
    zscore = jnp.where(mcse > 0, (mean - truth) / jnp.where(mcse > 0, mcse, 1.0), 0.0)
    return zscore, hc.active, mean - truth, mcse


def _unbiased_case(key, kind, augment, d, N, gamma, sample_gamma, noise_sd, draws, reference):
    k_x, k_th, k_hist, k_a, k_mc = jax.random.split(key, 5)
    contexts = _scenario_contexts(k_x, kind, N, d, 1)[0] / math.sqrt(d)
    theta = jax.random.normal(k_th, (d,)) / math.sqrt(d)
    # A short history of 5 played pairs gives a realistic, imperfect ridge reference.
    kh1, kh2 = jax.random.split(k_hist)
    hist_x = jax.random.normal(kh1, (5, d)) / math.sqrt(d)
    hist_y = hist_x @ theta + noise_sd * jax.random.normal(kh2, (5,))
    action = jax.random.randint(k_a, (), 0, contexts.shape[0])
    out = _unbiased_mc(
        k_mc,
        contexts,
        theta,
        hist_x.T @ hist_x,
        hist_x.T @ hist_y,
        action,
        augment,
        gamma,
        sample_gamma,
        noise_sd,
        draws=draws,
        reference=reference,
    )
    return tuple(np.asarray(o) for o in out)


def _check_unbiased(key, d, N, gamma, noise_sd, draws, *, sample_gamma, reference):
    from scipy import stats as sps

    zs, cases = [], {}
    for i, (kind, augment) in enumerate(UNBIASED_SCENARIOS):
        z, active, bias, mcse = _unbiased_case(
            jax.random.fold_in(key, i),
            kind,
            augment,
            d,
            N,
            gamma,
            sample_gamma,
            noise_sd,
            draws,
            reference,
        )
        z = z[active]
        zs.append(z)
        name = f"{kind}{'+augmentation' if augment else ''}"
        cases[name] = {
            "num_slots": int(active.sum()),
            "max_abs_z": float(np.max(np.abs(z))),
            "max_abs_bias": float(np.max(np.abs(bias[active]))),
            "median_mcse": float(np.median(mcse[active])),
        }
    allz = np.concatenate(zs)
    crit = float(sps.norm.isf(ALPHA / (2 * allz.size)))
    stats = {
        "draws_per_case": draws,
        "num_tests": int(allz.size),
        "z_critical_bonferroni": crit,
        "max_abs_z": float(np.max(np.abs(allz))),
        "cases": cases,
    }
    return stats, bool(np.max(np.abs(allz)) <= crit), allz


# --------------------------------------------------------------------------------------
# Check 4: coupling of the HCSA estimator with the hypothetical estimator (Lemma 2)
# --------------------------------------------------------------------------------------


class _HypState(NamedTuple):
    gram: jax.Array  # (d, d) V_t of the hypothetical estimator (every round)
    moment: jax.Array  # (d,) Σ z Y̆ with eq. (11)
    ref_gram: jax.Array  # (d, d) played contexts
    ref_moment: jax.Array  # (d,)
    num_augmented: jax.Array  # () int32
    round: jax.Array  # () int32


def _normalized_error(gram, moment, theta):
    """V^{1/2}(θ̂ − θ*) with the symmetric square root; θ̂ as in hcsa_estimate (one eigh)."""
    lam, Q = jnp.linalg.eigh(gram)
    pos = lam > rank_tolerance(lam)
    inv = jnp.where(pos, 1.0 / jnp.where(pos, lam, 1.0), 0.0)
    err = Q @ (inv * (Q.T @ moment)) - theta
    return Q @ (jnp.sqrt(jnp.maximum(lam, 0.0)) * (Q.T @ err))


def _error_stats(e):
    return jnp.stack([jnp.linalg.norm(e), e[0], e[1]])


COUPLING_STATS = ("norm", "coord0", "coord1")


def _run_hcsa_agent(key, env, agent, rounds: int, reps: int):
    def one(k):
        k_draw, k_init, k_loop = jax.random.split(k, 3)
        prior, params = env.draw(k_draw)
        state = agent.init(k_init, prior)

        def step(state, t):
            kc, ka, kr, ku = jax.random.split(jax.random.fold_in(k_loop, t), 4)
            x = env.contexts(kc, params)
            a = agent.act(ka, state, x)
            y = env.reward(kr, params, x, a)
            return agent.update(ku, state, x, a, y), None

        state, _ = jax.lax.scan(step, state, jnp.arange(rounds))
        stats = hcsa_statistics(state)
        e = _normalized_error(stats.gram, stats.moment, params.theta)
        return _error_stats(e), stats.num_matched == rounds

    stats, all_matched = jax.jit(jax.vmap(one))(jax.random.split(key, reps))
    return np.asarray(stats), np.asarray(all_matched)


def _run_hypothetical(key, env, rounds, reps, *, v, gamma, lam, aug_scale, null_precision):
    """Full-information hypothetical estimator (eq. 12) on the matching event ã = 0."""
    run = _hypothetical_runner(env, rounds, reps, v, lam, aug_scale, null_precision)
    return np.asarray(run(key, jnp.asarray(gamma)))


_HYP_CACHE: dict = {}


def _hypothetical_runner(env, rounds, reps, v, lam, aug_scale, null_precision):
    cache_key = (id(env), rounds, reps, v, lam, aug_scale, null_precision)
    if cache_key in _HYP_CACHE and _HYP_CACHE[cache_key][0] is env:
        return _HYP_CACHE[cache_key][1]
    ridge = ridge_reference(lam)

    def one(k, gamma):
        k_draw, k_loop = jax.random.split(k)
        _, params = env.draw(k_draw)
        d = params.theta.shape[0]
        dt = params.theta.dtype
        z2 = jnp.zeros((d, d), dt)
        s = _HypState(z2, jnp.zeros((d,), dt), z2, jnp.zeros((d,), dt), jnp.int32(0), jnp.int32(0))

        def step(s, t):
            kc, kts, keta = jax.random.split(jax.random.fold_in(k_loop, t), 3)
            x = env.contexts(kc, params)
            th, S = sampling_moments(s.gram, s.moment, v=v, null_precision=null_precision)
            theta_tilde = th + S @ jax.random.normal(kts, (d,), dt)
            a = jnp.argmax(x @ theta_tilde)
            r = s.round + 1
            in_aug = s.num_augmented < augmentation_budget(r, aug_scale)
            hc = hypothetical_contexts(x, a, augment=in_aug)
            rewards = hc.z @ params.theta + params.noise_sd * jax.random.normal(keta, (), dt)
            theta_check = ridge(serial_after(s.ref_gram, hc.z), s.ref_moment)
            phi = hypothetical_action_probs(hc, gamma)
            pseudo = dr_pseudo_rewards(hc, rewards, 0, theta_check, phi)
            gram, moment = hcsa_statistics_update(s.gram, s.moment, hc, pseudo, True)
            xa = x[a]
            return (
                _HypState(
                    gram,
                    moment,
                    s.ref_gram + jnp.outer(xa, xa),
                    s.ref_moment + rewards[0] * xa,
                    s.num_augmented + in_aug.astype(jnp.int32),
                    r,
                ),
                None,
            )

        s, _ = jax.lax.scan(step, s, jnp.arange(rounds))
        return _error_stats(_normalized_error(s.gram, s.moment, params.theta))

    @jax.jit
    def run(key, gamma):
        return jax.vmap(one, in_axes=(0, None))(jax.random.split(key, reps), gamma)

    _HYP_CACHE.clear()
    _HYP_CACHE[cache_key] = (env, run)
    return run


def _compare_chains(hcsa_stats, hcsa_matched, hyp_stats):
    """R̂, bulk and tail ESS, and a two-sample Kolmogorov–Smirnov test per statistic.

    Each statistic is one number per replication and the replications are independent,
    so the KS test applies without thinning. scipy is a dependency of the project (checks
    2 and 3 use it before this one), so there is no permutation fallback; the project's
    permutation test is :func:`validation.twosample.energy_test`.
    """
    import arviz as az
    from scipy.stats import ks_2samp

    a = hcsa_stats[hcsa_matched]
    n = min(a.shape[0], hyp_stats.shape[0])
    a, b = a[:n], hyp_stats[:n]
    per_stat = {}
    level = ALPHA / len(COUPLING_STATS)
    ok = True
    for j, name in enumerate(COUPLING_STATS):
        chains = np.stack([a[:, j], b[:, j]])
        rhat = float(az.rhat(chains, method="rank"))
        ess_bulk = float(az.ess(chains, method="bulk"))
        ess_tail = float(az.ess(chains, method="tail"))
        p = float(ks_2samp(a[:, j], b[:, j]).pvalue)
        per_stat[name] = {
            "rhat": rhat,
            "ess_bulk": ess_bulk,
            "ess_tail": ess_tail,
            "two_sample_test": "kolmogorov_smirnov",
            "p_value": p,
            "mean_hcsa": float(a[:, j].mean()),
            "mean_hypothetical": float(b[:, j].mean()),
            "sd_hcsa": float(a[:, j].std(ddof=1)),
            "sd_hypothetical": float(b[:, j].std(ddof=1)),
        }
        ok &= rhat <= RHAT_MAX and ess_bulk >= ESS_BULK_MIN and ess_tail >= ESS_TAIL_MIN
        ok &= p >= level
    stats = {
        "replications_compared": int(n),
        "hcsa_runs_all_matched": int(hcsa_matched.sum()),
        "hcsa_runs": int(hcsa_matched.size),
        "p_value_level": level,
        "statistics": per_stat,
    }
    return stats, bool(ok), (a[:, 0].tolist(), b[:, 0].tolist())


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


def run_coupling_checks(
    *,
    d: int = 10,
    N: int = 10,
    rounds: int = 50,
    replications: int = 500,
    seed: int = 0,
    gamma: float = 0.25,
    delta: float = 0.1,
    v: float = 1.0,
    lam: float = 1.0,
    aug_scale: float = 1.0,
    noise_sd: float = 0.5,
    mask_prob: float = 0.5,
    null_precision: float = 1.0,
    wrong_gamma: float = 0.5,
    reference_bias: float = 1.0,
    gram_draws: int = 50,
    cas_draws: int = 20_000,
    mc_draws: int = 20_000,
    progress: bool = False,
) -> dict:
    """Run the HCSA coupling checks and their negative controls.

    Parameters
    ----------
    d, N : int
        Dimension and number of arms (N >= 2, d >= 2).
    rounds : int
        Rounds of each replication of check 4.
    replications : int >= ESS_MIN
        Replications per estimator ("chain") in check 4; at least ``ESS_MIN`` so that the
        bulk and tail ESS of the pooled draws can reach their minima and R̂ is stable (with
        2 × 400 iid draws its 99th percentile is about 1.007).
    seed : int
    gamma, delta : float in (0, 1)
        φ(0) and the coupling failure budget.
    v, lam, aug_scale, null_precision : float
        HCSA+TS settings (:func:`ppl_bandits.linear_contextual.hcsa.hcsa_ts`).
    noise_sd, mask_prob : float
        Environment of check 4 (:func:`ppl_bandits.linear_contextual.environment.hcsa_environment`).
    wrong_gamma : float in (0, 1), != gamma
        Sampling probability of the wrong-φ controls.
    reference_bias : float > 0
        Offset of the biased-reference control of check 4, in prior sd per coordinate.
    gram_draws, cas_draws, mc_draws : int
        Context matrices per scenario (check 1), CAS runs per round index (check 2), Monte
        Carlo draws per case (check 3).
    progress : bool
        Print one line per stage on stderr.

    Returns
    -------
    dict (JSON-ready)
        ``{"checks": [{"name", "verdict", "statistics"}], "negative_controls": [{"name",
        "check", "rejected", "statistics"}], "verdict", "seed", "settings",
        "wall_seconds", "figure_data"}``; ``verdict`` is "pass" when every check passes and
        every negative control is rejected.

    Examples
    --------
    >>> run_coupling_checks(gamma=0.5)
    Traceback (most recent call last):
    ...
    ValueError: wrong_gamma is 0.5, equal to gamma; the wrong-φ controls would be vacuous
    """
    if int(N) != N or N < 2:
        raise ValueError(f"N is {N!r}; expected an integer >= 2")
    if int(d) != d or d < 2:
        raise ValueError(f"d is {d!r}; expected an integer >= 2")
    gamma = check_probability("gamma", gamma)
    delta = check_probability("delta", delta)
    wrong_gamma = check_probability("wrong_gamma", wrong_gamma)
    if wrong_gamma == gamma:
        raise ValueError(
            f"wrong_gamma is {wrong_gamma}, equal to gamma; the wrong-φ controls would be vacuous"
        )
    for name, value, low in (
        ("rounds", rounds, 1),
        ("replications", replications, ESS_MIN),
        ("gram_draws", gram_draws, 1),
        ("cas_draws", cas_draws, 10),
        ("mc_draws", mc_draws, 10),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} is {value!r}; expected an integer >= {low}")
    if not reference_bias > 0:
        raise ValueError(f"reference_bias is {reference_bias!r}; expected a positive number")
    start = time.perf_counter()
    log = _progress_logger(progress, start)
    key = jax.random.key(seed)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    checks, controls, figs = [], [], {}

    # 1. Lemma 1
    log("check 1: Lemma 1 Gram identity (float64)")
    gram, bad_gram = _check_gram(k1, d, N, gram_draws)
    ident_ok, eig_ok = _gram_verdicts(gram)
    checks.append(
        {
            "name": "gram_identity",
            "verdict": _verdict(ident_ok),
            "statistics": {"tolerance": GRAM_RTOL, "scenarios": _strip(gram)},
        }
    )
    checks.append(
        {
            "name": "augmentation_eigenvalues",
            "verdict": _verdict(eig_ok),
            "statistics": {"tolerance": GRAM_RTOL, "scenarios": _strip(gram)},
        }
    )
    bad_ok = all(s["max_identity_error"] <= GRAM_RTOL for s in bad_gram.values())
    controls.append(
        {
            "name": "unscaled_eigenvectors",
            "check": "gram_identity",
            "description": "z_j = u_j instead of sqrt(lambda_j) u_j",
            "rejected": not bad_ok,
            "statistics": {
                k: {"max_identity_error": s["max_identity_error"]} for k, s in bad_gram.items()
            },
        }
    )
    figs["gram"] = {
        "scenarios": list(GRAM_SCENARIOS),
        "log10_errors": [gram[k]["log10_identity_errors"] for k in GRAM_SCENARIOS],
        "log10_errors_control": [bad_gram[k]["log10_identity_errors"] for k in GRAM_SCENARIOS],
        "tolerance": GRAM_RTOL,
    }

    # 2. Matching
    log("check 2: matching probability and trial counts")
    match_stats, match_ok, geo_ok = _check_matching(
        k2, d, N, gamma, delta, cas_draws, sample_gamma=gamma
    )
    slim = {t: {k: v for k, v in s.items() if k != "trial_counts"} for t, s in match_stats.items()}
    checks.append(
        {
            "name": "matching_probability",
            "verdict": _verdict(match_ok),
            "statistics": {"gamma": gamma, "delta": delta, "level": ALPHA, "rounds": slim},
        }
    )
    checks.append(
        {
            "name": "trial_counts_geometric",
            "verdict": _verdict(geo_ok),
            "statistics": {"gamma": gamma, "level": ALPHA, "rounds": slim},
        }
    )
    wrong_match, _, wrong_geo = _check_matching(
        k2, d, N, gamma, delta, cas_draws, sample_gamma=wrong_gamma
    )
    controls.append(
        {
            "name": "wrong_phi",
            "check": "trial_counts_geometric",
            "description": f"CAS draws ã = 0 with probability {wrong_gamma} instead of γ = {gamma}",
            "rejected": not wrong_geo,
            "statistics": {
                t: {"p_value_geometric": s["p_value_geometric"]} for t, s in wrong_match.items()
            },
        }
    )
    figs["trials"] = {
        "gamma": gamma,
        "rounds": {
            t: {"counts": s["trial_counts"], "bound": s["max_trials_bound"]}
            for t, s in match_stats.items()
        },
        "control_counts": {t: s["trial_counts"] for t, s in wrong_match.items()},
    }

    # 3. Unbiasedness of eq. (11)
    log("check 3: unbiasedness of the pseudo-rewards (eq. 11)")
    args = (k3, d, N, gamma, noise_sd, mc_draws)
    unb, unb_ok, z_ok = _check_unbiased(*args, sample_gamma=gamma, reference="ridge")
    checks.append(
        {"name": "pseudo_reward_unbiasedness", "verdict": _verdict(unb_ok), "statistics": unb}
    )
    dr, dr_ok, z_dr = _check_unbiased(*args, sample_gamma=gamma, reference="offset")
    checks.append(
        {
            "name": "double_robustness",
            "verdict": _verdict(dr_ok),
            "statistics": {
                "description": "reference offset by 1/sqrt(d) per coordinate stays unbiased",
                **dr,
            },
        }
    )
    wphi, wphi_ok, z_wphi = _check_unbiased(*args, sample_gamma=wrong_gamma, reference="ridge")
    controls.append(
        {
            "name": "wrong_phi",
            "check": "pseudo_reward_unbiasedness",
            "description": f"weights use γ = {gamma}, ã sampled with φ(0) = {wrong_gamma}",
            "rejected": not wphi_ok,
            "statistics": {k: v for k, v in wphi.items() if k != "cases"},
        }
    )
    leak, leak_ok, z_leak = _check_unbiased(*args, sample_gamma=gamma, reference="leaky")
    controls.append(
        {
            "name": "biased_reference",
            "check": "pseudo_reward_unbiasedness",
            "description": "reference refit on the current round's hypothetical pair",
            "rejected": not leak_ok,
            "statistics": {k: v for k, v in leak.items() if k != "cases"},
        }
    )
    figs["unbiased"] = {
        "critical": unb["z_critical_bonferroni"],
        "z": {
            "correct": z_ok.tolist(),
            "offset reference (DR)": z_dr.tolist(),
            "wrong φ": z_wphi.tolist(),
            "leaky reference": z_leak.tolist(),
        },
    }

    # 4. Coupling
    log(f"check 4: coupling, {replications} replications x {rounds} rounds")
    env = hcsa_environment(d, N, mask_prob=mask_prob, noise_sd=noise_sd)
    common = {"v": v, "lam": lam, "aug_scale": aug_scale, "null_precision": null_precision}
    ka, kb, kc, kd, ke = jax.random.split(k4, 5)
    hyp = _run_hypothetical(kb, env, rounds, replications, gamma=gamma, **common)
    agent = hcsa_ts(v, gamma, delta, lam, aug_scale, null_precision=null_precision)
    a_stats, a_matched = _run_hcsa_agent(ka, env, agent, rounds, replications)
    coup, coup_ok, (ea, eb) = _compare_chains(a_stats, a_matched, hyp)
    checks.append({"name": "coupling_inequality", "verdict": _verdict(coup_ok), "statistics": coup})
    figs["coupling"] = {"correct": {"hcsa": ea, "hypothetical": eb}}

    log("check 4 control: wrong φ")
    wrong_agent = hcsa_ts(
        v, gamma, delta, lam, aug_scale, null_precision=null_precision, sampling_gamma=wrong_gamma
    )
    w_stats, w_matched = _run_hcsa_agent(kc, env, wrong_agent, rounds, replications)
    hyp_w = _run_hypothetical(kd, env, rounds, replications, gamma=wrong_gamma, **common)
    wc, wc_ok, (wa, wb) = _compare_chains(w_stats, w_matched, hyp_w)
    controls.append(
        {
            "name": "wrong_phi",
            "check": "coupling_inequality",
            "description": f"agent weights with γ = {gamma} but samples ã with {wrong_gamma}; "
            f"the hypothetical estimator uses φ(0) = {wrong_gamma}",
            "rejected": not wc_ok,
            "statistics": wc,
        }
    )
    figs["coupling"]["wrong φ"] = {"hcsa": wa, "hypothetical": wb}

    log("check 4 control: biased reference")
    offset = reference_bias * math.sqrt(1.0 / d)  # prior sd of θ* per coordinate is 1/√d
    ridge = ridge_reference(lam)

    def biased(ref_gram, ref_moment):
        return ridge(ref_gram, ref_moment) + offset

    biased_agent = hcsa_ts(
        v, gamma, delta, lam, aug_scale, null_precision=null_precision, reference=biased
    )
    b_stats, b_matched = _run_hcsa_agent(ke, env, biased_agent, rounds, replications)
    bc, bc_ok, (ba, bb) = _compare_chains(b_stats, b_matched, hyp)
    controls.append(
        {
            "name": "biased_reference",
            "check": "coupling_inequality",
            "description": f"reference θ̌ + {reference_bias} prior sd in every coordinate",
            "rejected": not bc_ok,
            "statistics": bc,
        }
    )
    figs["coupling"]["biased reference"] = {"hcsa": ba, "hypothetical": bb}

    overall = all(c["verdict"] == "pass" for c in checks) and all(c["rejected"] for c in controls)
    return {
        "verdict": _verdict(overall),
        "seed": seed,
        "settings": {
            "d": d,
            "N": N,
            "rounds": rounds,
            "replications": replications,
            "gamma": gamma,
            "delta": delta,
            "v": v,
            "lam": lam,
            "aug_scale": aug_scale,
            "noise_sd": noise_sd,
            "mask_prob": mask_prob,
            "null_precision": null_precision,
            "wrong_gamma": wrong_gamma,
            "reference_bias": reference_bias,
            "gram_draws": gram_draws,
            "cas_draws": cas_draws,
            "mc_draws": mc_draws,
            "alpha": ALPHA,
            "rhat_max": RHAT_MAX,
            "ess_min": ESS_MIN,
            "gram_rtol": GRAM_RTOL,
            "x64": bool(jax.config.jax_enable_x64),
        },
        "checks": checks,
        "negative_controls": controls,
        "wall_seconds": time.perf_counter() - start,
        "figure_data": figs,
    }
