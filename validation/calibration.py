r"""Simulation-based calibration (SBC) of the agents' posteriors under adaptive data.

One replication of a study (Talts et al. 2018; validation.md §4):

1. the environment draws a problem, i.e. the prior and the true (Ψ, θ), from the NumPyro
   model (:func:`models.mixed_effect.sample_mixed_effect_parameters`): the SBC prior draw;
2. the agent's own policy plays ``rounds`` rounds on rewards simulated from those
   parameters, so the data are collected adaptively;
3. the Gaussian the agent samples from after the last round (read from its state, as
   :func:`validation.audit.claimed_posterior` reads it) gives, per coordinate x_j, the PIT

   .. math:: u_j = \Phi\big((x_j^{\rm true} - \mu_j) / \sigma_j\big),

   and jointly the χ² PIT :math:`F_{\chi^2_p}\big((x-\mu)^\top\Sigma^{-1}(x-\mu)\big)`.

Under the exact posterior every PIT is uniform on (0, 1) although the policy chose the data
adaptively: the policy depends only on observed data, so the likelihood of the design does
not involve the parameters. Replications are the vmapped runs of
:func:`ppl_bandits.runner.simulate`, sharded over ``jax.devices()``.

Uniformity is tested column by column (each coordinate's PIT and each χ² PIT) with the
simultaneous ECDF band test of Säilynoja, Bürkner and Vehtari (2022): the statistic of a
column is the smallest two-sided binomial tail probability of its ECDF over an evaluation
grid, its p-value is read from the null distribution of that statistic, simulated once per
sample size with a fixed seed. The columns are combined with Bonferroni. Central-interval
coverage at 50, 80 and 95 % is reported with binomial standard errors.

Which posterior is calibrated:

- meTS agents (meTS-Lin, -Fa, -GLM, -GLM-Fa, HierTS): the Gaussian over (Ψ, θ_1..θ_K);
  one joint χ² PIT with p = Ld + Kd. HierTS is calibrated on its own one-effect model
  (problems drawn from :func:`ppl_bandits.agents.hierts_prior`), where its posterior is
  exact; on a mixed-effect problem its ψ is not the model's Ψ.
- LinTS and GLM-TS: the per-action Gaussians over θ_i only (no posterior of Ψ exists).
  They claim nothing about the joint law of (θ_1..θ_K) (the product of per-action
  posteriors ignores the prior coupling through Ψ), so their χ² PITs are per action
  (χ²_d, K columns).

A negative control ``"AGENT:CONTROL"`` (CONTROL one of
:data:`validation.audit.NEGATIVE_CONTROLS`) replaces the agent's posterior by the
deliberately wrong one of :func:`validation.audit.negative_control`; the study must reject
it. :data:`NEGATIVE_CONTROLS` lists the registered ones.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from ppl_bandits.agents import (
    hierts_prior,
    make_agent,
    resolve_agent_name,
)
from ppl_bandits.environments import mixed_effect_environment
from ppl_bandits.runner import draw_problems, simulate
from ppl_bandits.spec import fig2_prior
from validation.audit import AUDIT_MODELS
from validation.audit import NEGATIVE_CONTROLS as CONTROL_KINDS

__all__ = [
    "ALPHA",
    "CALIBRATION_AGENTS",
    "COVERAGE_LEVELS",
    "NEGATIVE_CONTROLS",
    "calibrate_nuts",
    "ecdf_uniformity_test",
    "power_curve",
    "run_calibration",
    "write_calibration",
]

#: Default family-wise level of the uniformity test.
ALPHA = 0.01
#: Central-interval levels whose coverage is reported.
COVERAGE_LEVELS = (0.5, 0.8, 0.95)
#: At most this many evaluation points of the ECDF (Säilynoja et al. 2022 use a grid).
ECDF_POINTS_MAX = 100
#: Simulated samples of the null distribution of the band statistic (fixed seed); more
#: when there are so many columns that the Bonferroni floor c / (B + 1) nears alpha.
NULL_SIMULATIONS = 20_000
NULL_SEED = 20220
#: Agents whose posterior can be calibrated: (likelihood, kind) with kind the factored
#: variant of a meTS agent (None for the joint one) or "independent".
CALIBRATION_AGENTS = {
    "meTS-Lin": ("gaussian", None),
    "meTS-Lin-Fa": ("gaussian", "mean-field"),
    "meTS-GLM": ("logistic", None),
    "meTS-GLM-Fa": ("logistic", "mean-field"),
    "HierTS": ("gaussian", None),
    "LinTS": ("gaussian", "independent"),
    "GLM-TS": ("logistic", "independent"),
}
#: Registered negative controls: deliberately wrong posteriors every study must reject.
NEGATIVE_CONTROLS = (
    "meTS-Lin:covariance-x1.3",
    "meTS-Lin:mean-shift-0.5sd",
    "meTS-Lin-Fa:published-factored-mean",
    "LinTS:mean-shift-0.5sd",
)
# Valid but not registered (too little power at 200 replications; see power_curve):
# "meTS-Lin:coupling-dropped" leaves every marginal PIT unchanged and only the joint χ²
# PIT can see it; "LinTS:covariance-x1.3" is spread over K per-action χ²_d columns.
_INDEPENDENT_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd")


# --------------------------------------------------------------------------- arguments


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def _check_alpha(alpha) -> float:
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ValueError(f"alpha is {alpha!r}; expected a number in (0, 1)")
    return float(alpha)


def _parse_posterior(posterior) -> tuple[str, str | None]:
    """``"meTS-Lin"`` -> ("meTS-Lin", None); ``"mets-lin:covariance-x1.3"`` -> (agent, control)."""
    text = str(posterior)
    agent_part, _, control = text.partition(":")
    expected = (
        f"expected an agent among {', '.join(CALIBRATION_AGENTS)} (any case), optionally "
        f"followed by ':CONTROL' with CONTROL in {', '.join(CONTROL_KINDS)}; "
        f"registered controls: {', '.join(NEGATIVE_CONTROLS)}"
    )
    try:
        agent = resolve_agent_name(agent_part)
    except ValueError:
        raise ValueError(f"posterior is {posterior!r}; {expected}") from None
    if agent not in CALIBRATION_AGENTS:
        raise ValueError(f"posterior is {posterior!r}; {expected}")
    if not control:
        return agent, None
    lookup = {c.lower(): c for c in CONTROL_KINDS}
    control = lookup.get(control.lower())
    independent = CALIBRATION_AGENTS[agent][1] == "independent"
    if control is None or (independent and control not in _INDEPENDENT_CONTROLS):
        raise ValueError(f"posterior is {posterior!r}; {expected}")
    return agent, control


def _controls_for(agent: str) -> list[str]:
    return [c for c in NEGATIVE_CONTROLS if c.split(":")[0] == agent]


def _resolve_model(model, likelihood: str) -> str:
    if model is None:
        return "mixed-effect-linear" if likelihood == "gaussian" else "mixed-effect-logistic"
    lookup = {m.lower(): m for m in AUDIT_MODELS}
    if str(model).lower() not in lookup:
        raise ValueError(f"model is {model!r}; expected None or one of {', '.join(AUDIT_MODELS)}")
    return lookup[str(model).lower()]


def _resolve_devices(devices) -> list:
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; expected None or a non-empty list of jax devices")
    return devices


# --------------------------------------------------------------------------- simulation


@functools.lru_cache(maxsize=32)
def _setup(agent: str, model: str, K: int, L: int, d: int, rounds: int):
    """Environment and agent, cached so repeated studies reuse the compiled runner."""
    reward = AUDIT_MODELS[model][0]
    prior_fn = None
    if agent == "HierTS":

        def prior_fn(key):
            return hierts_prior(fig2_prior(key, K, L, d))

    env = mixed_effect_environment(K, L, d, reward=reward, prior_fn=prior_fn)
    bandit = make_agent(agent, horizon=rounds)
    return env, bandit


def _simulate(agent, model, K, L, d, rounds, replications, seed, devices):
    """Final agent states and true parameters of ``replications`` runs (numpy, on host).

    The problems are padded to a multiple of the device count and sharded on their run
    axis; the vmapped simulation follows the data. Run r draws its problem from
    ``fold_in(key, r)``, so padding adds runs without changing the first ``replications``.
    """
    env, bandit = _setup(agent, model, K, L, d, rounds)
    n = len(devices)
    padded = -(-replications // n) * n
    key = jax.random.key(seed)
    problems = draw_problems(key, env, padded)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("runs",)), PartitionSpec("runs"))
    problems = jax.device_put(problems, sharding)
    res = simulate(key, env, bandit, num_rounds=rounds, num_runs=padded, problems=problems)
    jax.block_until_ready(res.state)

    def host(a):
        return np.asarray(a)[:replications]

    return jax.tree.map(host, res.state), jax.tree.map(host, res.params)


# --------------------------------------------------------------------------- PITs


class _Posterior(NamedTuple):
    """A batch of Gaussians over (ψ, θ_1..θ_K) in the form the agents sample them.

    ψ ~ N(m_psi, C_psi) and θ_i | ψ ~ N(gain_i ψ + shift_i, R_i R_iᵀ); the joint mean of
    θ_i is gain_i m_psi + shift_i. Leading axis: the replication. Lp = 0 for LinTS.
    """

    m_psi: np.ndarray  # (R, Lp)
    prec_psi: np.ndarray  # (R, Lp, Lp) inverse of C_psi
    cov_psi: np.ndarray  # (R, Lp, Lp)
    gain: np.ndarray  # (R, K, d, Lp)
    shift: np.ndarray  # (R, K, d)
    cond_sqrt: np.ndarray  # (R, K, d, d)


def _sym(A):
    return 0.5 * (A + np.swapaxes(A, -1, -2))


def _claimed_batch(state, kind: str | None) -> _Posterior:
    """The Gaussians of :func:`validation.audit.claimed_posterior`, for every replication."""
    f64 = functools.partial(np.asarray, dtype=np.float64)
    if kind == "independent":
        mean, sqrt = f64(state.mean), f64(state.sqrt)
        R, K, d = mean.shape
        empty = np.zeros((R, 0, 0))
        return _Posterior(np.zeros((R, 0)), empty, empty, np.zeros((R, K, d, 0)), mean, sqrt)
    prec, nat = f64(state.eff_prec), f64(state.eff_nat)
    gain = f64(state.gain)
    K, d, Ld = gain.shape[1:]
    m_full = np.linalg.solve(prec, nat[..., None])[..., 0]
    if kind is None:
        prec_psi, cov_psi, m_psi = _sym(prec), _sym(np.linalg.inv(prec)), m_full
    else:
        L = Ld // d
        blocks = prec.reshape(-1, L, d, L, d)
        diag = np.stack([blocks[:, l, :, l, :] for l in range(L)], axis=1)  # (R, L, d, d)
        inv = _sym(np.linalg.inv(diag))
        prec_psi = np.zeros_like(prec)
        cov_psi = np.zeros_like(prec)
        for l in range(L):
            sl = slice(l * d, (l + 1) * d)
            prec_psi[:, sl, sl] = _sym(diag[:, l])
            cov_psi[:, sl, sl] = inv[:, l]
        if kind == "mean-field":
            m_psi = m_full
        else:  # "published": C_l η_l per effect (the paper's eq. 43)
            m_psi = np.einsum("rlij,rlj->rli", inv, nat.reshape(-1, L, d)).reshape(-1, Ld)
    return _Posterior(m_psi, prec_psi, cov_psi, gain, f64(state.shift), f64(state.cond_sqrt))


def _moments(g: _Posterior):
    """Joint means and marginal standard deviations, each (R, Lp + K d)."""
    m_theta = np.einsum("rkde,re->rkd", g.gain, g.m_psi) + g.shift
    var_psi = np.diagonal(g.cov_psi, axis1=-2, axis2=-1)
    var_theta = np.einsum("rkde,ref,rkdf->rkd", g.gain, g.cov_psi, g.gain) + np.sum(
        g.cond_sqrt**2, axis=-1
    )
    R = m_theta.shape[0]
    mean = np.concatenate([g.m_psi, m_theta.reshape(R, -1)], axis=1)
    sd = np.sqrt(np.concatenate([var_psi, var_theta.reshape(R, -1)], axis=1))
    return mean, sd


def _quadratic_forms(g: _Posterior, truth: np.ndarray, mean: np.ndarray):
    """(x−μ)ᵀΣ⁻¹(x−μ) split into the ψ part (R,) and the θ_i parts (R, K).

    The joint covariance of (ψ, θ) is the one of ``g``; ``mean`` may differ from g's own
    (a shifted control). With ψ ~ N(m, C) and θ_i | ψ ~ N(t_i + A_i(ψ − m), R_i R_iᵀ), the
    joint quadratic form is (ψ−m)ᵀC⁻¹(ψ−m) + Σ_i |R_i⁻¹(θ_i − t_i − A_i(ψ − m))|².
    """
    Lp = g.m_psi.shape[1]
    R, K, d = g.shift.shape
    e_psi = truth[:, :Lp] - mean[:, :Lp]
    q_psi = np.einsum("ri,rij,rj->r", e_psi, g.prec_psi, e_psi)
    resid = (truth[:, Lp:] - mean[:, Lp:]).reshape(R, K, d) - np.einsum(
        "rkde,re->rkd", g.gain, e_psi
    )
    white = np.linalg.solve(g.cond_sqrt, resid[..., None])[..., 0]
    return q_psi, np.sum(white**2, axis=-1)


def _pits(state, params, kind, control, *, K, d):
    """Per-coordinate PITs (R, p), χ² PITs (R, c) and their column labels."""
    g = _claimed_batch(state, kind)
    Lp = g.m_psi.shape[1]
    R = g.shift.shape[0]
    theta = np.asarray(params.theta, np.float64).reshape(R, -1)
    psi = np.asarray(params.psi, np.float64)[:, :Lp]
    truth = np.concatenate([psi, theta], axis=1)
    mean, sd = _moments(g)
    scale = 1.0
    if control == "covariance-x1.3":
        scale = 1.3
    elif control == "mean-shift-0.5sd":
        mean = mean + 0.5 * sd
    elif control == "published-factored-mean":
        mean = _moments(_claimed_batch(state, "published"))[0]
    q_psi, q_theta = _quadratic_forms(g, truth, mean)
    if control == "coupling-dropped":
        # Σ with the Ψ–θ and θ_i–θ_j blocks set to zero: θ_i ~ N(t_i, A_i C A_iᵀ + R_i R_iᵀ).
        V = np.einsum("rkde,ref,rkgf->rkdg", g.gain, g.cov_psi, g.gain) + np.einsum(
            "rkde,rkge->rkdg", g.cond_sqrt, g.cond_sqrt
        )
        e = (truth[:, Lp:] - mean[:, Lp:]).reshape(R, K, d)
        q_theta = np.einsum("rki,rki->rk", e, np.linalg.solve(_sym(V), e[..., None])[..., 0])
    u = stats.norm.cdf((truth - mean) / (np.sqrt(scale) * sd))
    labels = [f"psi[{j}]" for j in range(Lp)] + [
        f"theta[{k}, {j}]" for k in range(K) for j in range(d)
    ]
    if kind == "independent":
        chi2 = stats.chi2.cdf(q_theta / scale, df=d)
        chi2_labels = [f"chi2(theta[{k}])" for k in range(K)]
    else:
        p = truth.shape[1]
        chi2 = stats.chi2.cdf((q_psi + q_theta.sum(axis=1))[:, None] / scale, df=p)
        chi2_labels = ["chi2(joint)"]
    return u, chi2, labels, chi2_labels


# --------------------------------------------------------------------------- uniformity


def _grid(n: int) -> np.ndarray:
    m = min(n, ECDF_POINTS_MAX)
    return np.arange(1, m) / m


def _min_tail(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Smallest two-sided binomial tail probability of ECDF counts at the points z."""
    lower = stats.binom.cdf(counts, n, z)
    upper = stats.binom.sf(counts - 1, n, z)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper)).min(axis=-1)


def _num_null(columns: int = 1, alpha: float = ALPHA) -> int:
    """Null samples so that the smallest Bonferroni p-value is at most alpha / 20."""
    need = math.ceil(20 * columns / alpha / 10_000) * 10_000
    return max(NULL_SIMULATIONS, need)


@functools.lru_cache(maxsize=64)
def _null_statistics(n: int, num: int = NULL_SIMULATIONS) -> np.ndarray:
    """Sorted null draws of the band statistic for n uniform PITs (fixed seed)."""
    z = _grid(n)
    if z.size == 0:
        return np.ones(num)
    m = z.size + 1
    rng = np.random.default_rng(NULL_SEED)
    counts = rng.multinomial(n, np.full(m, 1.0 / m), size=num)
    cum = np.cumsum(counts, axis=1)[:, :-1]
    return np.sort(_min_tail(cum, n, z))


def _band(n: int, alpha: float):
    """Simultaneous (1 − alpha) ECDF band at the grid points: (z, lower, upper)."""
    z = _grid(n)
    null = _null_statistics(n)
    gamma = null[max(0, math.floor(alpha * (null.size + 1)) - 1)]
    lower = stats.binom.ppf(gamma / 2, n, z) / n
    upper = stats.binom.isf(gamma / 2, n, z) / n
    return z, lower, upper


def ecdf_uniformity_test(pits, alpha: float = ALPHA) -> dict:
    r"""Simultaneous ECDF band test of uniformity, one column at a time, Bonferroni combined.

    For a column of n PITs with ECDF :math:`\hat F`, evaluated on the grid
    :math:`z_i = i/m` (m = min(n, 100)), the statistic is

    .. math:: s = \min_i 2\min\{B(n\hat F(z_i); n, z_i),\ 1 - B(n\hat F(z_i) - 1; n, z_i)\}

    with B the binomial CDF (Säilynoja, Bürkner, Vehtari 2022): the ECDF leaves the
    simultaneous band of level 1 − α exactly when s falls below the α-quantile of its null
    distribution. The p-value of a column is :math:`(1 + \#\{s_b \le s\}) / (B + 1)` over
    B null samples drawn once with a fixed seed (B = ``NULL_SIMULATIONS``, or more when
    c / (B + 1) would exceed α / 20); over c columns the
    family-wise p-value is :math:`\min(1, c\,\min_j p_j)` (Bonferroni).

    Parameters
    ----------
    pits : array (n,) or (n, c)
        PITs, uniform on (0, 1) under the null; columns are tested separately.
    alpha : float
        Family-wise level of the verdict.

    Returns
    -------
    dict
        ``statistic`` (smallest s over columns), ``p_value`` (Bonferroni), ``verdict``
        ("pass" or "fail" at ``alpha``), ``alpha``, ``method``, ``column_p_values``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ecdf_uniformity_test(rng.uniform(size=(300, 3)))["verdict"]
    'pass'
    >>> ecdf_uniformity_test(rng.uniform(size=300) ** 1.5)["verdict"]
    'fail'
    """
    alpha = _check_alpha(alpha)
    u = np.asarray(pits, np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2 or u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"pits has shape {np.shape(pits)}; expected (n,) or (n, c) with n >= 1")
    if not np.all((u >= 0) & (u <= 1)):
        raise ValueError("pits has values outside [0, 1]; expected probability integral transforms")
    n, c = u.shape
    z = _grid(n)
    null = _null_statistics(n, _num_null(c, alpha))
    if z.size:
        counts = np.stack([np.searchsorted(np.sort(col), z, side="right") for col in u.T])
        s = _min_tail(counts, n, z)
    else:
        s = np.ones(c)
    p_cols = (1.0 + np.searchsorted(null, s, side="right")) / (null.size + 1.0)
    p_value = float(min(1.0, c * p_cols.min()))
    return {
        "statistic": float(s.min()),
        "p_value": p_value,
        "verdict": "pass" if p_value >= alpha else "fail",
        "alpha": alpha,
        "method": (
            "simultaneous ECDF band (Säilynoja, Bürkner, Vehtari 2022), null simulated with "
            f"{null.size} samples (seed {NULL_SEED}); Bonferroni over {c} columns"
        ),
        "column_p_values": p_cols,
    }


def _coverage(u: np.ndarray, chi2: np.ndarray) -> dict:
    """Central-interval coverage per level with binomial standard errors.

    ``rate`` pools every coordinate of every replication (``n`` intervals); ``se`` is the
    binomial standard error sqrt(rate (1 − rate) / n), which treats coordinates of one
    replication as independent; ``se_replications`` is the standard error of the
    per-replication coverage (valid under any dependence between coordinates);
    ``region_rate`` is the coverage of the joint credible ellipsoid (one per replication
    and χ² column) with its binomial ``region_se``.
    """
    out = {}
    for level in COVERAGE_LEVELS:
        inside = np.abs(u - 0.5) <= level / 2
        rate = float(inside.mean())
        per_rep = inside.mean(axis=1)
        region = chi2 <= level
        region_rate = float(region.mean())
        out[f"{round(100 * level)}"] = {
            "rate": rate,
            "se": math.sqrt(rate * (1 - rate) / inside.size),
            "se_replications": float(per_rep.std(ddof=1) / math.sqrt(len(per_rep)))
            if len(per_rep) > 1
            else float("nan"),
            "nominal": level,
            "n": int(inside.size),
            "region_rate": region_rate,
            "region_se": math.sqrt(region_rate * (1 - region_rate) / region.size),
        }
    return out


# --------------------------------------------------------------------------- studies


def run_calibration(
    posterior: str,
    *,
    replications: int = 200,
    rounds: int = 100,
    num_actions: int = 10,
    num_effects: int = 2,
    dim: int = 2,
    seed: int = 0,
    model: str | None = None,
    devices=None,
    alpha: float = ALPHA,
) -> dict:
    """SBC of an agent's posterior (or of a negative control) after adaptive data collection.

    Parameters
    ----------
    posterior : str
        An agent of :data:`CALIBRATION_AGENTS` (any case), or ``"AGENT:CONTROL"`` for a
        deliberately wrong posterior (see :data:`NEGATIVE_CONTROLS`).
    replications : int (>= 1)
        Independent (prior draw, adaptive data, posterior) replications, vmapped.
    rounds : int (>= 1)
        Rounds the agent plays in each replication.
    num_actions, num_effects, dim : int (>= 1)
        K, L, d of the problem (the paper's Fig. 2 prior).
    seed : int
        Replication r draws its problem and noise from ``fold_in(key(seed), r)``.
    model : {None, "mixed-effect-linear", "mixed-effect-logistic"}
        The model the problems are drawn from; None picks the one the agent assumes.
    devices : list of jax devices, optional
        Devices the replications are sharded over (default ``jax.devices()``); the result
        does not depend on them.
    alpha : float
        Family-wise level of the uniformity verdict.

    Returns
    -------
    dict
        ``posterior``, ``agent``, ``control``, ``model``, settings, ``labels`` and
        ``pit`` (R, p), ``chi2_labels`` and ``chi2_pit`` (R, c), ``uniformity``,
        ``coverage``, ``negative_controls`` (for an agent: each registered control run on
        the same replications, with its uniformity and ``rejected``), ``wall_seconds``,
        ``devices``.

    Examples
    --------
    >>> res = run_calibration("meTS-Lin", replications=40, rounds=10, num_actions=3,
    ...                       num_effects=1, dim=1)
    >>> res["pit"].shape, res["chi2_pit"].shape, res["uniformity"]["verdict"]
    ((40, 4), (40, 1), 'pass')
    """
    started = time.perf_counter()
    agent, control = _parse_posterior(posterior)
    replications = _check_count("replications", replications)
    rounds = _check_count("rounds", rounds)
    K = _check_count("num_actions", num_actions)
    L = _check_count("num_effects", num_effects)
    d = _check_count("dim", dim)
    seed = _check_count("seed", seed, 0)
    alpha = _check_alpha(alpha)
    likelihood, kind = CALIBRATION_AGENTS[agent]
    model = _resolve_model(model, likelihood)
    devices = _resolve_devices(devices)

    state, params = _simulate(agent, model, K, L, d, rounds, replications, seed, devices)
    u, chi2, labels, chi2_labels = _pits(state, params, kind, control, K=K, d=d)
    result = {
        "posterior": agent if control is None else f"{agent}:{control}",
        "agent": agent,
        "control": control,
        "model": model,
        "replications": replications,
        "rounds": rounds,
        "num_actions": K,
        "num_effects": L,
        "dim": d,
        "seed": seed,
        "labels": labels,
        "pit": u,
        "chi2_labels": chi2_labels,
        "chi2_pit": chi2,
        "uniformity": ecdf_uniformity_test(np.concatenate([u, chi2], axis=1), alpha),
        "coverage": _coverage(u, chi2),
        "negative_controls": [],
        "devices": [str(dev) for dev in devices],
    }
    if getattr(state, "newton_failures", None) is not None:
        result["newton_failures"] = int(np.asarray(state.newton_failures).sum())
    if control is None:
        for name in _controls_for(agent):
            cu, cchi2, _, _ = _pits(state, params, kind, name.split(":")[1], K=K, d=d)
            test = ecdf_uniformity_test(np.concatenate([cu, cchi2], axis=1), alpha)
            result["negative_controls"].append(
                {"name": name, "rejected": test["verdict"] == "fail", "uniformity": test}
            )
    result["wall_seconds"] = time.perf_counter() - started
    return result


def power_curve(
    control: str,
    *,
    replications: Sequence[int] = (50, 100, 200, 400),
    studies: int = 20,
    rounds: int = 100,
    num_actions: int = 10,
    num_effects: int = 2,
    dim: int = 2,
    seed: int = 0,
    model: str | None = None,
    devices=None,
    alpha: float = ALPHA,
) -> dict:
    """Rejection rate of a negative control against the number of replications.

    One simulation of ``studies * max(replications)`` replications is cut into
    ``studies`` disjoint blocks per study size; each block is one SBC study. The agent's
    own posterior is tested on the same blocks, which gives the false-rejection rate
    (``size``, nominally at most ``alpha``) next to the ``power``.

    Returns
    -------
    dict
        ``control``, ``replications``, ``studies``, ``power`` and ``size`` (one per study
        size) with binomial standard errors ``power_se`` and ``size_se``.
    """
    agent, kind_name = _parse_posterior(control)
    if kind_name is None:
        raise ValueError(f"control is {control!r}; expected 'AGENT:CONTROL'")
    sizes = [_check_count("replications", r) for r in replications]
    if not sizes:
        raise ValueError("replications is empty; expected study sizes >= 1")
    studies = _check_count("studies", studies)
    alpha = _check_alpha(alpha)
    likelihood, kind = CALIBRATION_AGENTS[agent]
    model = _resolve_model(model, likelihood)
    K, L, d = (
        _check_count(n, v)
        for n, v in (("num_actions", num_actions), ("num_effects", num_effects), ("dim", dim))
    )
    devices = _resolve_devices(devices)
    started = time.perf_counter()
    total = studies * max(sizes)
    state, params = _simulate(
        agent,
        model,
        K,
        L,
        d,
        _check_count("rounds", rounds),
        total,
        _check_count("seed", seed, 0),
        devices,
    )
    good = np.concatenate(_pits(state, params, kind, None, K=K, d=d)[:2], axis=1)
    bad = np.concatenate(_pits(state, params, kind, kind_name, K=K, d=d)[:2], axis=1)
    power, size = [], []
    for n in sizes:
        blocks = [slice(s * n, (s + 1) * n) for s in range(studies)]
        power.append(
            np.mean([ecdf_uniformity_test(bad[b], alpha)["verdict"] == "fail" for b in blocks])
        )
        size.append(
            np.mean([ecdf_uniformity_test(good[b], alpha)["verdict"] == "fail" for b in blocks])
        )

    def se(p):
        return [math.sqrt(x * (1 - x) / studies) for x in p]

    return {
        "control": f"{agent}:{kind_name}",
        "replications": sizes,
        "studies": studies,
        "alpha": alpha,
        "power": [float(p) for p in power],
        "power_se": se(power),
        "size": [float(s) for s in size],
        "size_se": se(size),
        "rounds": int(rounds),
        "wall_seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- NUTS SBC


def calibrate_nuts(
    replications: int = 40,
    *,
    num_actions: int = 3,
    num_effects: int = 1,
    dim: int = 2,
    rounds: int = 20,
    num_warmup: int = 300,
    num_samples: int = 300,
    thin: int = 15,
    num_chains: int = 1,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict:
    """SBC of the NUTS reference itself (Talts et al. 2018): validating the validator.

    Each replication draws a prior (Fig. 2 setting), (Ψ, θ) and ``rounds`` rewards from
    :func:`models.mixed_effect.mixed_effect_model` (actions uniform at random, contexts
    U[-1, 1]^d), runs :func:`validation.reference.run_nuts` on the same model conditioned on
    those rewards, keeps every ``thin``-th draw, and records the rank of the truth among the
    kept draws of each coordinate (0..N). Ranks are uniform on {0..N} under a correct
    sampler; they are tested with :func:`ecdf_uniformity_test` after the randomized PIT
    (rank + V) / (N + 1), V ~ U(0, 1) with a fixed seed, which is exactly uniform then.

    Returns
    -------
    dict
        ``ranks`` (R, p), ``num_ranks`` (N + 1), ``labels``, ``uniformity``, ``coverage``
        (of the central intervals formed by the kept draws) and the settings.
    """
    from numpyro import handlers

    from models.mixed_effect import mixed_effect_model
    from validation.compare import stack_draws
    from validation.reference import run_nuts

    replications = _check_count("replications", replications)
    K, L, d = (
        _check_count(n, v)
        for n, v in (("num_actions", num_actions), ("num_effects", num_effects), ("dim", dim))
    )
    rounds = _check_count("rounds", rounds)
    thin = _check_count("thin", thin)
    num_samples = _check_count("num_samples", num_samples)
    seed = _check_count("seed", seed, 0)
    alpha = _check_alpha(alpha)
    started = time.perf_counter()
    key = jax.random.key(seed)
    ranks = []
    for r in range(replications):  # one NUTS run per replication
        k_prior, k_act, k_ctx, k_model = jax.random.split(jax.random.fold_in(key, r), 4)
        prior = fig2_prior(k_prior, K, L, d)
        actions = np.asarray(jax.random.randint(k_act, (rounds,), 0, K), np.int32)
        contexts = np.asarray(jax.random.uniform(k_ctx, (rounds, d), minval=-1.0, maxval=1.0))
        tr = handlers.trace(handlers.seed(mixed_effect_model, k_model)).get_trace(
            prior, contexts, actions
        )
        truth = np.concatenate(
            [np.ravel(tr["psi"]["value"]), np.ravel(tr["theta"]["value"])]
        ).astype(np.float64)
        rewards = np.asarray(tr["y"]["value"])
        idata = run_nuts(
            mixed_effect_model,
            prior,
            contexts,
            actions,
            rewards,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            seed=seed + r,
            chain_method="sequential",
        )
        draws = stack_draws(idata, ["psi", "theta"])[:, ::thin].reshape(-1, truth.size)
        ranks.append(np.sum(draws < truth, axis=0))
    ranks = np.asarray(ranks)
    n_draws = draws.shape[0]
    jitter = np.random.default_rng(NULL_SEED).uniform(size=ranks.shape)
    u = (ranks + jitter) / (n_draws + 1)
    labels = [f"psi[{j}]" for j in range(L * d)] + [
        f"theta[{k}, {j}]" for k in range(K) for j in range(d)
    ]
    return {
        "posterior": "NUTS",
        "replications": replications,
        "rounds": rounds,
        "labels": labels,
        "ranks": ranks,
        "num_ranks": n_draws + 1,
        "uniformity": ecdf_uniformity_test(u, alpha),
        "coverage": _coverage(u, np.full((replications, 1), np.nan)),
        "settings": {
            "num_actions": K,
            "num_effects": L,
            "dim": d,
            "num_chains": num_chains,
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "thin": thin,
            "seed": seed,
        },
        "wall_seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- report


def _plot_ecdf(ax, u: np.ndarray, alpha: float, title: str) -> None:
    n = u.size
    z, lower, upper = _band(n, alpha)
    ecdf = np.searchsorted(np.sort(u), z, side="right") / n
    ax.fill_between(
        z,
        lower - z,
        upper - z,
        color="0.85",
        step="mid",
        label=f"{100 * (1 - alpha):g}% simultaneous band",
    )
    ax.plot(z, ecdf - z, drawstyle="steps-mid", color="C0")
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PIT")
    ax.set_xlim(0, 1)


def write_calibration(result: dict, out_dir) -> Path:
    """Write ``out_dir/calibration.json``, ``calibration.png`` and ``pit.csv``.

    The JSON holds ``posterior``, ``replications``, ``rounds``, ``uniformity``
    (statistic, p_value, verdict, ...), ``coverage`` ({"50": {rate, se, ...}, "80", "95"}),
    ``negative_controls`` ([{name, rejected}]), ``wall_seconds``, ``command``, ``seed``,
    ``versions`` and the settings. The figure shows the ECDF difference F̂(u) − u with its
    simultaneous band for the χ² PIT and the three worst coordinates, and the coverage.
    Returns the path of the JSON file.
    """
    from ppl_bandits.plotting import subplots
    from ppl_bandits.provenance import collect_versions, command_line, write_json

    for key in ("posterior", "pit", "chi2_pit", "uniformity", "coverage", "labels"):
        if key not in result:
            raise ValueError(f"result lacks {key!r}; expected the dict of run_calibration")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uni = dict(result["uniformity"])
    record = {
        "posterior": result["posterior"],
        "model": result.get("model"),
        "replications": result["replications"],
        "rounds": result["rounds"],
        "num_actions": result.get("num_actions"),
        "num_effects": result.get("num_effects"),
        "dim": result.get("dim"),
        "uniformity": uni,
        "coverage": result["coverage"],
        "negative_controls": [
            {
                "name": c["name"],
                "rejected": bool(c["rejected"]),
                "p_value": c["uniformity"]["p_value"],
            }
            for c in result.get("negative_controls", [])
        ],
        "labels": list(result["labels"]) + list(result["chi2_labels"]),
        "wall_seconds": result.get("wall_seconds"),
        "devices": result.get("devices"),
        "command": result.get("command") or command_line(),
        "seed": result.get("seed"),
        "versions": collect_versions(),
    }
    path = write_json(out / "calibration.json", record)
    header = ",".join(list(result["labels"]) + list(result["chi2_labels"]))
    np.savetxt(
        out / "pit.csv",
        np.concatenate([result["pit"], result["chi2_pit"]], axis=1),
        delimiter=",",
        header=header,
        comments="",
        fmt="%.8g",
    )

    alpha = uni.get("alpha", ALPHA)
    p_cols = np.asarray(uni["column_p_values"])[: result["pit"].shape[1]]
    worst = list(np.argsort(p_cols, kind="stable")[:3])
    fig, axes = subplots(
        1, 2 + len(worst), figsize=(4.0 * (2 + len(worst)), 3.4), layout="constrained"
    )
    _plot_ecdf(axes[0], result["chi2_pit"][:, 0], alpha, result["chi2_labels"][0])
    axes[0].set_ylabel("ECDF − uniform")
    for ax, j in zip(axes[1:], worst, strict=False):
        _plot_ecdf(ax, result["pit"][:, j], alpha, result["labels"][j])
    axes[0].legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    levels = [f"{round(100 * lv)}" for lv in COVERAGE_LEVELS]
    rates = [result["coverage"][k]["rate"] for k in levels]
    errs = [2 * result["coverage"][k]["se"] for k in levels]
    x = np.arange(len(levels))
    ax.bar(x, rates, yerr=errs, color="C0", capsize=4, label="central intervals (±2 se)")
    ax.scatter(x, COVERAGE_LEVELS, color="k", marker="_", s=400, zorder=3, label="nominal")
    ax.set_xticks(x, [f"{k}%" for k in levels])
    ax.set_ylim(0, 1)
    ax.set_title("coverage", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"SBC of {result['posterior']}: {result['replications']} replications, "
        f"{result['rounds']} rounds; uniformity {uni['verdict']} (p = {uni['p_value']:.3g})",
        fontsize=10,
    )
    fig.savefig(out / "calibration.png", dpi=110)
    return path
