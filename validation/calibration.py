r"""Simulation-based calibration (SBC) of the agents' posteriors under adaptive data.

One replication of a study (Talts et al. 2018):

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
:func:`ppl_bandits.core.runner.simulate`, sharded over ``jax.devices()``.

Uniformity is tested column by column (each coordinate's PIT and each χ² PIT) with the
simultaneous ECDF band test of Säilynoja, Bürkner and Vehtari (2022): the statistic of a
column is the smallest two-sided binomial tail probability of its ECDF over an evaluation
grid, its p-value is read from the null distribution of that statistic, simulated once per
sample size with a fixed seed. The columns are combined with Bonferroni. Central-interval
coverage at 50, 80 and 95 % is reported with binomial standard errors.

Which posterior is calibrated:

- meTS agents (meTS-Lin, -Fa, -GLM, -GLM-Fa, HierTS): the Gaussian over (Ψ, θ_1..θ_K);
  one joint χ² PIT with p = Ld + Kd. HierTS is calibrated on its own one-effect model
  (problems drawn from :func:`ppl_bandits.mixed_effect.agents.hierts_prior`), where its posterior is
  exact; on a mixed-effect problem its ψ is not the model's Ψ.
- LinTS and GLM-TS: the per-action Gaussians over θ_i only (no posterior of Ψ exists).
  They claim nothing about the joint law of (θ_1..θ_K) (the product of per-action
  posteriors ignores the prior coupling through Ψ), so their χ² PITs are per action
  (χ²_d, K columns).

- dTS (Aouali 2025) on the diffusion prior (:mod:`models.diffusion`, problems from
  :func:`ppl_bandits.diffusion.environment.diffusion_environment`, the agent
  ``make_diffusion_agent("dTS")``), over (ψ_1..ψ_L, θ_1..θ_K) with L the diffusion levels:
  ``"dTS"`` has linear links, where the agent's recursion is the exact posterior, and is
  read out exactly (Gaussian marginals by the downward pass of
  :func:`ppl_bandits.diffusion.posterior.diffusion_posterior`, from the terms in the agent's state);
  ``"dTS-neural"`` has random neural (MLP) links, where the agent samples the dTS
  approximation, which is not Gaussian: each coordinate's PIT is the randomized rank
  (rank + V) / (S + 1) of the truth among S = ``DRAWS`` draws of the agent's own
  sampler (ψ_L, ψ_ℓ | ψ_{ℓ+1} down to ψ_1, θ_a | ψ_1), exactly uniform when the claimed
  posterior is the true one. For both the χ² PIT is the sum of the squared whitened
  innovations of that factorization, χ²_p with p = (L + K) d under the claimed
  posterior whatever the links (the Mahalanobis distance of the joint Gaussian for
  linear links).

A negative control ``"AGENT:CONTROL"`` (CONTROL one of
:data:`validation.audit.NEGATIVE_CONTROLS`, or for dTS one of :data:`DIFFUSION_CONTROLS`)
replaces the agent's posterior by a deliberately wrong one (for the meTS family that of
:func:`validation.audit.negative_control`); the study must reject it.
:data:`NEGATIVE_CONTROLS` lists the registered ones.

Cost. A study is one compiled program per (posterior, shapes, chunk size): the prior draw,
the agent's initialisation and the ``lax.scan`` over rounds fused and vmapped over a chunk
of replications (:data:`CHUNK` by default), sharded over the devices; larger studies loop
over chunks of the same compiled program. The null distribution of the band statistic is
read from a table of binomial tail probabilities (one per sample size).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from models.diffusion import apply_link
from models.mixed_effect import fig2_prior, mixed_effect_model
from ppl_bandits.core.likelihood import SufficientStats
from ppl_bandits.core.runner import name_salt, round_keys
from ppl_bandits.diffusion.agents import make_diffusion_agent
from ppl_bandits.diffusion.environment import diffusion_environment
from ppl_bandits.diffusion.posterior import latent_terms, sample_posterior
from ppl_bandits.mixed_effect.agents import hierts_prior
from ppl_bandits.mixed_effect.catalog import make_agent, resolve_agent_name
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from ppl_bandits.plotting import subplots
from ppl_bandits.results import collect_versions, command_line, write_json
from validation.audit import AUDIT_MODELS
from validation.audit import NEGATIVE_CONTROLS as CONTROL_KINDS
from validation.compare import stack_draws
from validation.reference import run_nuts

__all__ = [
    "ALPHA",
    "CALIBRATION_AGENTS",
    "CHUNK",
    "COVERAGE_LEVELS",
    "DIFFUSION_CONTROLS",
    "DIFFUSION_POSTERIORS",
    "DRAWS",
    "NEGATIVE_CONTROLS",
    "POSTERIORS",
    "calibrate_nuts",
    "calibration_table",
    "ecdf_uniformity_test",
    "power_curve",
    "run_calibration",
    "write_calibration",
    "write_calibration_table",
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
#: dTS posteriors on the diffusion prior: name -> (links, what the agent samples).
DIFFUSION_POSTERIORS = {
    "dTS": ("linear", "exact"),
    "dTS-neural": ("neural", "dts"),
}
#: Every posterior a study can calibrate, in the order of the table.
POSTERIORS = (*CALIBRATION_AGENTS, *DIFFUSION_POSTERIORS)
#: Negative controls of the dTS posteriors: the claimed posterior with every covariance
#: × 1.3 or every mean + 0.5 sd (both as maps of the claimed law: x -> m + √1.3 (x − m),
#: x -> x + 0.5 sd), and, for linear links, the dTS approximation (recursion without the
#: links, paper Sec. 3.2) in place of the exact posterior the agent holds.
DIFFUSION_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd", "dts-approximation")
#: Registered negative controls: deliberately wrong posteriors every study must reject.
NEGATIVE_CONTROLS = (
    "meTS-Lin:covariance-x1.3",
    "meTS-Lin:mean-shift-0.5sd",
    "meTS-Lin-Fa:published-factored-mean",
    "LinTS:mean-shift-0.5sd",
    "dTS:covariance-x1.3",
    "dTS:mean-shift-0.5sd",
    "dTS:dts-approximation",
    "dTS-neural:mean-shift-0.5sd",
)
#: Posterior draws per replication where PITs are ranks (the dTS approximation).
DRAWS = 99
#: Replications per compiled program; larger studies loop over chunks of this size.
CHUNK = 1000
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
        f"expected a posterior among {', '.join(POSTERIORS)} (any case), optionally "
        f"followed by ':CONTROL' with CONTROL in {', '.join(CONTROL_KINDS)} (meTS family) "
        f"or {', '.join(DIFFUSION_CONTROLS)} (dTS); "
        f"registered controls: {', '.join(NEGATIVE_CONTROLS)}"
    )
    diffusion = {n.lower(): n for n in DIFFUSION_POSTERIORS}
    if agent_part.lower() in diffusion:
        agent = diffusion[agent_part.lower()]
        if not control:
            return agent, None
        allowed = DIFFUSION_CONTROLS if agent == "dTS" else DIFFUSION_CONTROLS[:2]
        lookup = {c.lower(): c for c in allowed}
        if control.lower() not in lookup:
            raise ValueError(f"posterior is {posterior!r}; {expected}")
        return agent, lookup[control.lower()]
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
    if likelihood in ("linear", "neural"):  # a diffusion posterior: its own model
        if model is not None and str(model).lower() != f"diffusion-{likelihood}":
            raise ValueError(
                f"model is {model!r}; expected None or 'diffusion-{likelihood}' for this posterior"
            )
        return f"diffusion-{likelihood}"
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
    """Environment and agent, cached so repeated studies reuse the compiled program."""
    if agent in DIFFUSION_POSTERIORS:
        link = DIFFUSION_POSTERIORS[agent][0]
        return diffusion_environment(K, L, d, link=link), make_diffusion_agent("dTS")
    reward = AUDIT_MODELS[model][0]
    prior_fn = None
    if agent == "HierTS":

        def prior_fn(key):
            return hierts_prior(fig2_prior(key, K, L, d))

    env = mixed_effect_environment(K, L, d, reward=reward, prior_fn=prior_fn)
    bandit = make_agent(agent, horizon=rounds)
    return env, bandit


@functools.lru_cache(maxsize=32)
def _program(agent: str, model: str, K: int, L: int, d: int, rounds: int):
    """One compiled study: per run key, draw the problem, initialise, play ``rounds`` rounds.

    The prior draw, the agent's initialisation and the ``lax.scan`` over rounds are fused
    in one vmapped program (one compilation, no per-round outputs kept). Keys follow
    :func:`ppl_bandits.core.runner.simulate` exactly (the problem from ``fold_in(run_key, 0)``,
    the agent's initialisation from ``fold_in(run_key, 1)`` and the rounds from
    ``fold_in(run_key, 2)``, each salted with the agent's name), so a replication is the
    run the runner would simulate, with the final agent state and the true parameters
    as outputs.
    """
    env, bandit = _setup(agent, model, K, L, d, rounds)
    salt = name_salt(bandit.name)

    def one(run_key):
        prior, params = env.draw(jax.random.fold_in(run_key, 0))
        k_init = jax.random.fold_in(jax.random.fold_in(run_key, 1), salt)
        state = bandit.init(k_init, prior)
        loop_key = jax.random.fold_in(run_key, 2)

        def step(state, t):
            k_ctx, k_act, k_rew, k_upd = round_keys(loop_key, t)
            ctx = env.contexts(k_ctx, params, t)
            action = bandit.act(jax.random.fold_in(k_act, salt), state, ctx)
            reward = env.reward(k_rew, params, ctx, action)
            return bandit.update(jax.random.fold_in(k_upd, salt), state, ctx, action, reward), None

        state, _ = jax.lax.scan(step, state, jnp.arange(rounds))
        return state, params

    return jax.jit(jax.vmap(one))


def _chunk_size(replications: int, devices: int, chunk: int) -> int:
    """Replications per program call: a multiple of the device count, at most ~``chunk``."""
    per_device = -(-min(replications, chunk) // devices)
    return per_device * devices


def _simulate(agent, model, K, L, d, rounds, replications, seed, devices, chunk=CHUNK):
    """Final agent states and true parameters of ``replications`` runs (numpy, on host).

    Run r uses ``fold_in(key(seed), r)``. Replications are cut into chunks of one size (a
    multiple of the device count; the last chunk padded with extra runs that are dropped),
    each sharded on its run axis over ``devices``; so the result depends neither on the
    devices nor on the chunk size, and studies of any size reuse one compiled program.
    """
    program = _program(agent, model, K, L, d, rounds)
    size = _chunk_size(replications, len(devices), chunk)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("runs",)), PartitionSpec("runs"))
    key = jax.random.key(seed)
    make_keys = jax.jit(jax.vmap(lambda r: jax.random.fold_in(key, r)), out_shardings=sharding)
    pieces = []
    for start in range(0, replications, size):
        keys = make_keys(jnp.arange(start, start + size))
        pieces.append(jax.tree.map(np.asarray, program(keys)))
    state, params = jax.tree.map(lambda *a: np.concatenate(a)[:replications], *pieces)
    return state, params


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


# --------------------------------------------------------------------------- dTS PITs


def _stats_of(state):

    return SufficientStats(state.G, state.B, state.count)


@functools.lru_cache(maxsize=8)
def _links_program():
    """f_ℓ(ψ_ℓ) for every level, batched over replications: (R, L, d) -> (R, L, d)."""

    def links(prior, psi):
        L = psi.shape[0]
        return jnp.stack([apply_link(prior, level, psi[level - 1]) for level in range(1, L + 1)])

    return jax.jit(jax.vmap(links))


@functools.lru_cache(maxsize=8)
def _dts_terms_program():
    """The dTS approximation's recursion (links dropped) for the agent's statistics."""

    def terms(prior, stats):
        lat = latent_terms(prior, stats, "dts")[1]
        return lat.feed, lat.shift, lat.cov

    return jax.jit(jax.vmap(terms))


@functools.lru_cache(maxsize=8)
def _draws_program(method: str, draws: int):
    """``draws`` posterior draws per replication from the agent's sampler, flattened."""

    def one(key, prior, stats):
        def draw(k):
            psi, theta = sample_posterior(k, prior, stats, method)
            return jnp.concatenate([psi.ravel(), theta.ravel()])

        return jax.vmap(draw)(jax.random.split(key, draws))

    return jax.jit(jax.vmap(one))


class _Chain(NamedTuple):
    """The factorization the dTS agent samples from, float64, leading axis the replication.

    ψ_L ~ N(shift_L, cov_L), ψ_ℓ | ψ_{ℓ+1} ~ N(feed_ℓ f_{ℓ+1}(ψ_{ℓ+1}) + shift_ℓ, cov_ℓ) and
    θ_a | ψ_1 ~ N(cond_feed_a f_1(ψ_1) + cond_shift_a, cond_cov_a).
    """

    feed: np.ndarray  # (R, L, d, d)
    shift: np.ndarray  # (R, L, d)
    cov: np.ndarray  # (R, L, d, d)
    cond_feed: np.ndarray  # (R, K, d, d)
    cond_shift: np.ndarray  # (R, K, d)
    cond_cov: np.ndarray  # (R, K, d, d)


def _chain(state, method: str) -> _Chain:
    f64 = functools.partial(np.asarray, dtype=np.float64)
    if method == "dts-approximation":
        feed, shift, cov = _dts_terms_program()(state.prior, _stats_of(state))
    else:  # the terms in the agent's state
        feed, shift, cov = state.latent.feed, state.latent.shift, state.latent.cov
    R = f64(state.cond_sqrt)
    return _Chain(
        f64(feed),
        f64(shift),
        _sym(f64(cov)),
        f64(state.cond_feed),
        f64(state.shift),
        _sym(R @ np.swapaxes(R, -1, -2)),
    )


def _quad(cov, e):
    return np.einsum("...i,...i->...", e, np.linalg.solve(cov, e[..., None])[..., 0])


def _innovation_form(ch: _Chain, prior, x: np.ndarray, L: int, d: int) -> np.ndarray:
    r"""Σ of the squared whitened innovations of x = (ψ, θ) under the chain: (R,).

    .. math:: q = \sum_\ell |e_\ell|^2_{\bar\Sigma_\ell^{-1}} + \sum_a |e_a|^2_{\hat\Sigma_a^{-1}}

    with e the residuals of each conditional; χ²_{(L+K)d} when x is drawn from the chain,
    and the joint Mahalanobis distance when the links are linear.
    """
    R = x.shape[0]
    psi = x[:, : L * d].reshape(R, L, d)
    theta = x[:, L * d :].reshape(R, -1, d)
    dtype = np.asarray(prior.sigma_psi).dtype  # the agent's precision
    f = np.asarray(_links_program()(prior, psi.astype(dtype)), np.float64)
    q = _quad(ch.cov[:, L - 1], psi[:, L - 1] - ch.shift[:, L - 1])
    for level in range(1, L):
        loc = np.einsum("rij,rj->ri", ch.feed[:, level - 1], f[:, level]) + ch.shift[:, level - 1]
        q = q + _quad(ch.cov[:, level - 1], psi[:, level - 1] - loc)
    loc = np.einsum("rkij,rj->rki", ch.cond_feed, f[:, 0]) + ch.cond_shift
    return q + _quad(ch.cond_cov, theta - loc).sum(axis=1)


def _chain_marginals(ch: _Chain, links: np.ndarray):
    """Means and standard deviations (R, (L + K) d) of a linear chain (downward pass)."""
    R, L = ch.shift.shape[:2]
    means, covs = [None] * L, [None] * L
    means[L - 1], covs[L - 1] = ch.shift[:, L - 1], ch.cov[:, L - 1]
    for level in range(L - 1, 0, -1):
        A = ch.feed[:, level - 1] @ links[:, level]
        means[level - 1] = np.einsum("rij,rj->ri", A, means[level]) + ch.shift[:, level - 1]
        covs[level - 1] = A @ covs[level] @ np.swapaxes(A, -1, -2) + ch.cov[:, level - 1]
    A = ch.cond_feed @ links[:, None, 0]
    m_theta = np.einsum("rkij,rj->rki", A, means[0]) + ch.cond_shift
    c_theta = ch.cond_cov + A @ covs[0][:, None] @ np.swapaxes(A, -1, -2)
    mean = np.concatenate([np.stack(means, 1).reshape(R, -1), m_theta.reshape(R, -1)], 1)
    var = np.concatenate(
        [
            np.diagonal(np.stack(covs, 1), axis1=-2, axis2=-1).reshape(R, -1),
            np.diagonal(c_theta, axis1=-2, axis2=-1).reshape(R, -1),
        ],
        1,
    )
    return mean, np.sqrt(var)


def _control_truth(control, truth, mean, sd):
    """The truth mapped back through a control's map of the claimed law.

    A control claims the law of T(x), x from the posterior: T(x) = m + √1.3 (x − m)
    (covariance × 1.3) or x + 0.5 sd (mean shift). The rank or PIT of the truth under it is
    that of T⁻¹(truth) under the posterior, and so is the χ² innovation form.
    """
    if control == "covariance-x1.3":
        return mean + (truth - mean) / math.sqrt(1.3)
    if control == "mean-shift-0.5sd":
        return truth - 0.5 * sd
    return truth


def _diffusion_pits(state, params, agent, control, *, draws=DRAWS, seed=0):
    """Per-coordinate PITs (R, (L + K) d), the χ² PIT (R, 1) and labels for a dTS study."""
    links, method = DIFFUSION_POSTERIORS[agent]
    psi = np.asarray(params.psi, np.float64)
    R, L, d = psi.shape
    K = np.asarray(params.theta).shape[1]
    truth = np.concatenate(
        [psi.reshape(R, -1), np.asarray(params.theta, np.float64).reshape(R, -1)], 1
    )
    p = truth.shape[1]
    ch = _chain(state, "dts-approximation" if control == "dts-approximation" else method)
    if links == "linear":  # Gaussian chain: exact marginals
        mean, sd = _chain_marginals(ch, np.asarray(state.prior.links, np.float64))
        x = _control_truth(control, truth, mean, sd)
        u = stats.norm.cdf((x - mean) / sd)
    else:  # the dTS approximation with neural links: ranks among the agent's draws
        program = _draws_program(method, draws)
        keys = jax.random.split(jax.random.key(NULL_SEED + seed), R)
        ranks = np.empty((R, p))
        x = np.empty_like(truth)
        step = max(1, CHUNK)
        for lo in range(0, R, step):
            sl = slice(lo, min(R, lo + step))
            sub = jax.tree.map(lambda a, sl=sl: a[sl], (state.prior, _stats_of(state)))
            z = np.asarray(program(keys[sl], *sub), np.float64)  # (r, S, p)
            m, s = z.mean(axis=1), z.std(axis=1, ddof=1)
            x[sl] = _control_truth(control, truth[sl], m, s)
            ranks[sl] = np.sum(z < x[sl][:, None, :], axis=1)
        jitter = np.random.default_rng(NULL_SEED + seed).uniform(size=ranks.shape)
        u = (ranks + jitter) / (draws + 1)
    q = _innovation_form(ch, state.prior, x, L, d)
    chi2 = stats.chi2.cdf(q, df=p)[:, None]
    labels = [f"psi[{level}, {j}]" for level in range(1, L + 1) for j in range(d)] + [
        f"theta[{k}, {j}]" for k in range(K) for j in range(d)
    ]
    return u, chi2, labels, ["chi2(joint)"]


# --------------------------------------------------------------------------- uniformity


def _grid(n: int) -> np.ndarray:
    m = min(n, ECDF_POINTS_MAX)
    return np.arange(1, m) / m


@functools.lru_cache(maxsize=16)
def _tail_table(n: int) -> np.ndarray:
    r"""T[i, k]: two-sided binomial tail probability of k of n PITs below the grid point z_i.

    :math:`\min\{1, 2\min(B(k; n, z_i), 1 - B(k - 1; n, z_i))\}`, for every k in 0..n:
    one table per sample size, looked up for the data and for every null sample.
    """
    z = _grid(n)
    k = np.arange(n + 1)[None, :]
    lower = stats.binom.cdf(k, n, z[:, None])
    upper = stats.binom.sf(k - 1, n, z[:, None])
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


def _min_tail(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Smallest two-sided binomial tail probability of ECDF counts at the grid points z."""
    table = _tail_table(n)
    return table[np.arange(z.size), counts].min(axis=-1)


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


def _family(agent: str):
    """(likelihood or links, kind): kind "diffusion" for the dTS posteriors."""
    if agent in DIFFUSION_POSTERIORS:
        return DIFFUSION_POSTERIORS[agent][0], "diffusion"
    return CALIBRATION_AGENTS[agent]


def _study_pits(agent, kind, state, params, control, K, d, seed):
    if kind == "diffusion":
        return _diffusion_pits(state, params, agent, control, seed=seed)
    return _pits(state, params, kind, control, K=K, d=d)


def _block_tests(u, chi2, labels, alpha) -> dict:
    """The uniformity test on the ψ columns, the θ columns and the χ² columns apart."""
    out = {}
    for block in ("psi", "theta"):
        cols = [j for j, name in enumerate(labels) if name.startswith(block + "[")]
        if cols:
            out[block] = _brief(ecdf_uniformity_test(u[:, cols], alpha))
    out["chi2"] = _brief(ecdf_uniformity_test(chi2, alpha))
    return out


def _brief(test: dict) -> dict:
    return {k: test[k] for k in ("statistic", "p_value", "verdict")}


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
    chunk: int = CHUNK,
) -> dict:
    """SBC of an agent's posterior (or of a negative control) after adaptive data collection.

    Parameters
    ----------
    posterior : str
        One of :data:`POSTERIORS` (any case): an agent of :data:`CALIBRATION_AGENTS`, or
        ``"dTS"`` / ``"dTS-neural"`` (:data:`DIFFUSION_POSTERIORS`); or
        ``"POSTERIOR:CONTROL"`` for a deliberately wrong posterior (see
        :data:`NEGATIVE_CONTROLS`).
    replications : int (>= 1)
        Independent (prior draw, adaptive data, posterior) replications, vmapped.
    rounds : int (>= 1)
        Rounds the agent plays in each replication.
    num_actions, num_effects, dim : int (>= 1)
        K, L, d of the problem (the paper's Fig. 2 prior); for dTS, L is the number of
        diffusion levels.
    seed : int
        Replication r draws its problem and noise from ``fold_in(key(seed), r)``.
    model : {None, "mixed-effect-linear", "mixed-effect-logistic"}
        The model the problems are drawn from; None picks the one the agent assumes
        (dTS: the diffusion model with its links).
    devices : list of jax devices, optional
        Devices the replications are sharded over (default ``jax.devices()``); the result
        does not depend on them.
    alpha : float
        Family-wise level of the uniformity verdict.
    chunk : int (>= 1)
        Replications per compiled program call (rounded up to a multiple of the device
        count); the result does not depend on it.

    Returns
    -------
    dict
        ``posterior``, ``agent``, ``control``, ``model``, settings, ``labels`` and
        ``pit`` (R, p), ``chi2_labels`` and ``chi2_pit`` (R, c), ``uniformity``,
        ``uniformity_blocks`` (the same test on the ψ, θ and χ² columns separately),
        ``coverage``, ``negative_controls`` (for an agent: each registered control run on
        the same replications, with its uniformity and ``rejected``), ``wall_seconds``,
        ``timings`` (seconds spent simulating, reading the PITs, testing, on controls),
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
    chunk = _check_count("chunk", chunk)
    likelihood, kind = _family(agent)
    model = _resolve_model(model, likelihood)
    devices = _resolve_devices(devices)

    timings = {"setup": time.perf_counter() - started}
    t0 = time.perf_counter()
    state, params = _simulate(agent, model, K, L, d, rounds, replications, seed, devices, chunk)
    timings["simulate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    u, chi2, labels, chi2_labels = _study_pits(agent, kind, state, params, control, K, d, seed)
    timings["pits"] = time.perf_counter() - t0
    t0 = time.perf_counter()
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
        "uniformity_blocks": _block_tests(u, chi2, labels, alpha),
        "coverage": _coverage(u, chi2),
        "negative_controls": [],
        "devices": [str(dev) for dev in devices],
    }
    timings["uniformity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if getattr(state, "newton_failures", None) is not None:
        result["newton_failures"] = int(np.asarray(state.newton_failures).sum())
    if control is None:
        for name in _controls_for(agent):
            cu, cchi2, _, _ = _study_pits(
                agent, kind, state, params, name.split(":")[1], K, d, seed
            )
            test = ecdf_uniformity_test(np.concatenate([cu, cchi2], axis=1), alpha)
            result["negative_controls"].append(
                {"name": name, "rejected": test["verdict"] == "fail", "uniformity": test}
            )
    timings["controls"] = time.perf_counter() - t0
    result["timings"] = timings
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
    likelihood, kind = _family(agent)
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
    good = np.concatenate(_study_pits(agent, kind, state, params, None, K, d, seed)[:2], axis=1)
    bad = np.concatenate(_study_pits(agent, kind, state, params, kind_name, K, d, seed)[:2], axis=1)
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


# --------------------------------------------------------------------------- table

#: Columns of the table of verdicts.
TABLE_COLUMNS = (
    "posterior",
    "model",
    "replications",
    "rounds",
    "p_value",
    "verdict",
    "psi",
    "theta",
    "chi2",
    "coverage_50",
    "coverage_80",
    "coverage_95",
    "controls_rejected",
    "wall_seconds",
)


def _table_row(res: dict) -> dict:
    cov = res["coverage"]
    blocks = res["uniformity_blocks"]
    controls = res["negative_controls"]
    row = {
        "posterior": res["posterior"],
        "model": res["model"],
        "replications": res["replications"],
        "rounds": res["rounds"],
        "p_value": res["uniformity"]["p_value"],
        "verdict": res["uniformity"]["verdict"],
        **{b: blocks[b]["verdict"] if b in blocks else "" for b in ("psi", "theta", "chi2")},
        "controls_rejected": f"{sum(c['rejected'] for c in controls)}/{len(controls)}",
        "controls": [
            {
                "name": c["name"],
                "rejected": bool(c["rejected"]),
                "p_value": c["uniformity"]["p_value"],
            }
            for c in controls
        ],
        "wall_seconds": res["wall_seconds"],
    }
    for level in ("50", "80", "95"):
        row[f"coverage_{level}"] = cov[level]["rate"]
        row[f"coverage_{level}_se"] = cov[level]["se_replications"]
    return row


def calibration_table(
    posteriors: Sequence[str] | None = None,
    *,
    replications: int = 200,
    rounds: int = 100,
    num_actions: int = 10,
    num_effects: int = 2,
    dim: int = 2,
    seed: int = 0,
    devices=None,
    alpha: float = ALPHA,
    out_dir=None,
    progress: bool = False,
) -> list[dict]:
    """One SBC study per posterior (each with its registered controls); one row each.

    ``posteriors`` defaults to :data:`POSTERIORS`. Every posterior runs at the same size
    and seed (for dTS, ``num_effects`` is the number of diffusion levels). With
    ``out_dir``, each study's files go to ``out_dir/<posterior>/``
    (:func:`write_calibration`). A row holds ``posterior``, ``model``, ``replications``,
    ``rounds``, the family-wise ``p_value`` and ``verdict``, the verdicts of the ψ, θ and
    χ² blocks, the pooled central-interval coverage at 50, 80 and 95 % with the
    replication-level standard errors (``coverage_95_se``: valid under any dependence
    between a replication's coordinates), ``controls_rejected`` ("2/2"), ``controls`` and
    ``wall_seconds``.
    """
    names = [_parse_posterior(p) for p in (POSTERIORS if posteriors is None else posteriors)]
    if not names:
        raise ValueError("posteriors is empty; expected at least one posterior")
    rows = []
    iterator = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="calibration table", unit="posterior")
    for agent, control in iterator:
        name = agent if control is None else f"{agent}:{control}"
        res = run_calibration(
            name,
            replications=replications,
            rounds=rounds,
            num_actions=num_actions,
            num_effects=num_effects,
            dim=dim,
            seed=seed,
            devices=devices,
            alpha=alpha,
        )
        if out_dir is not None:
            write_calibration(res, Path(out_dir) / name.replace(":", "_"))
        rows.append(_table_row(res))
    return rows


def _markdown(rows: list[dict]) -> str:
    head = (
        "| posterior | model | R | rounds | p-value | verdict | ψ / θ / χ² | "
        "coverage 50 % | coverage 80 % | coverage 95 % | controls rejected |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cov = " | ".join(
            f"{r[f'coverage_{lv}']:.3f} ± {r[f'coverage_{lv}_se']:.3f}" for lv in ("50", "80", "95")
        )
        blocks = " / ".join(r[b] or "–" for b in ("psi", "theta", "chi2"))
        lines.append(
            f"| {r['posterior']} | {r['model']} | {r['replications']} | {r['rounds']} | "
            f"{r['p_value']:.3g} | **{r['verdict']}** | {blocks} | {cov} | "
            f"{r['controls_rejected']} |"
        )
    return "\n".join(lines) + "\n"


def write_calibration_table(rows: list[dict], out_dir, *, settings: dict | None = None) -> Path:
    """Write ``out_dir/table.csv``, ``table.md`` and ``table.json`` (with provenance).

    Returns the path of the JSON file.
    """
    import csv

    if not rows:
        raise ValueError("rows is empty; expected the rows of calibration_table")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        c
        for col in TABLE_COLUMNS
        for c in ((col, f"{col}_se") if col.startswith("coverage_") else (col,))
    ]
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(_markdown(rows))
    settings = dict(settings or {})
    return write_json(
        out / "table.json",
        {
            "rows": rows,
            "settings": settings,
            "alpha": settings.get("alpha", ALPHA),
            "command": settings.get("command") or command_line(),
            "seed": settings.get("seed"),
            "versions": collect_versions(),
        },
    )
