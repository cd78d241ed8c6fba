r"""Simulation-based calibration (SBC) of the agents' posteriors under adaptive data.

One replication of a study (Talts et al. 2018):

1. the environment draws a problem, i.e. the prior and the true (Ψ, θ), from the NumPyro
   model (:func:`models.mixed_effect.sample_mixed_effect_parameters`): the SBC prior draw;
2. the agent's own policy plays ``rounds`` rounds on rewards simulated from those
   parameters, so the data are collected adaptively;
3. the claim the agent makes after the last round, ``Agent.posterior(state)``
   (:mod:`ppl_bandits.core.claims`; ``jax.vmap`` over the replications), and the truth
   flattened as the claim's ``sites`` give, for a Gaussian claim N(μ, Σ) and per
   coordinate x_j, the PIT

   .. math:: u_j = \Phi\big((x_j^{\rm true} - \mu_j) / \sigma_j\big),

   and jointly the χ² PIT :math:`F_{\chi^2_p}\big((x-\mu)^\top\Sigma^{-1}(x-\mu)\big)`.

The study reads an agent only through its claim and the family's public functions, never
a state's fields.

Under the exact posterior every PIT is uniform on (0, 1) although the policy chose the data
adaptively: the policy depends only on observed data, so the likelihood of the design does
not involve the parameters. Replications are the vmapped runs of
:func:`ppl_bandits.core.runner.simulate`, sharded over ``jax.devices()``.

Uniformity is tested column by column (each coordinate's PIT and each χ² PIT) with the
simultaneous ECDF band test of Säilynoja, Bürkner and Vehtari (2022)
(:func:`validation.ecdf.ecdf_uniformity_test`), the columns combined with Bonferroni.
Central-interval coverage at 50, 80 and 95 % is reported with binomial standard errors.
The files, figures and tables of a study are written by :mod:`validation.calibration_report`.

Which posterior is calibrated (:data:`CALIBRATION_AGENTS`, :data:`DIFFUSION_POSTERIORS`):

- meTS agents (meTS-Lin, -Fa, -GLM, -GLM-Fa, HierTS): the Gaussian over (Ψ, θ_1..θ_K) of
  :func:`ppl_bandits.mixed_effect.agents.mets_posterior`; one joint χ² PIT with
  p = Ld + Kd. HierTS is calibrated on its own one-effect model (problems drawn from
  :func:`ppl_bandits.mixed_effect.agents.hierts_prior`), where its posterior is exact; on a
  mixed-effect problem its ψ is not the model's Ψ.
- LinTS and GLM-TS: the per-action Gaussians over θ_i only
  (:func:`ppl_bandits.mixed_effect.baselines.independent_posterior`; no posterior of Ψ
  exists). They claim nothing about the joint law of (θ_1..θ_K) (the product of per-action
  posteriors ignores the prior coupling through Ψ), so their χ² PITs are per action
  (χ²_d, K columns): the entry's ``chi2 = "per-action"``.
- dTS (Aouali 2025) on the diffusion prior (:mod:`models.diffusion`, problems from
  :func:`ppl_bandits.diffusion.environment.diffusion_environment`, the agent
  ``make_diffusion_agent("dTS")``), over (ψ_1..ψ_L, θ_1..θ_K) with L the diffusion levels,
  through :func:`ppl_bandits.diffusion.agents.dts_posterior`: ``"dTS"`` has linear links,
  where the agent's recursion is the exact posterior and its claim a Gaussian;
  ``"dTS-neural"`` has random neural (MLP) links, where the agent samples the dTS
  approximation, which is not Gaussian: its claim is a
  :class:`~ppl_bandits.core.claims.SampledClaim`, each coordinate's PIT is the randomized
  rank (rank + V) / (S + 1) of the truth among S = ``DRAWS`` draws of ``claim.sample``
  (ψ_L, ψ_ℓ | ψ_{ℓ+1} down to ψ_1, θ_a | ψ_1), exactly uniform when the claimed posterior
  is the true one, and the χ² PIT is the squared norm of ``claim.whitened(x)``, the
  whitened innovations of that factorization: χ²_p with p = (L + K) d under the claimed
  posterior whatever the links.

A negative control ``"AGENT:CONTROL"`` (CONTROL one of
:data:`validation.families.NEGATIVE_CONTROLS` for the meTS family, or for dTS one of
:data:`DIFFUSION_CONTROLS`) replaces the agent's claim by a deliberately wrong one, a
transformation of the batched claim by the very functions the audits apply,
:func:`validation.controls.family_controls` of the posterior's family: the generic
``covariance-x1.3`` and ``mean-shift-0.5sd``; ``coupling-dropped``, ``blocks-decoupled``
with every action's θ_i a site of its own; ``published-factored-mean``, the mean of
``mets_posterior(state, "published")`` with the claimed covariance; ``dts-approximation``,
:func:`ppl_bandits.diffusion.agents.dts_approximation_claim` (the family controls of
:data:`validation.controls.FAMILY_CONTROLS`). On a sampled claim the first two are maps of
the claimed law, x -> m + √1.3 (x − m) and x -> x + 0.5 sd with m and sd
the mean and standard deviation (ddof 1) of the replication's ``DRAWS`` draws: the rank of
the truth among the mapped draws is that of the truth mapped back among the draws. The
study must reject a control; :data:`NEGATIVE_CONTROLS` lists the registered ones.

Cost. A study is one compiled program per (posterior, shapes, chunk size): the prior draw,
the agent's initialisation and the ``lax.scan`` over rounds fused and vmapped over a chunk
of replications (:data:`CHUNK` by default), sharded over the devices; larger studies loop
over chunks of the same compiled program. The claims are read op by op, batched over the
replications; the draws and whitening of a sampled claim are compiled programs.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from models.mixed_effect import fig2_prior, mixed_effect_model
from ppl_bandits.core.claims import (
    Claim,
    GaussianClaim,
    SampledClaim,
    Sites,
    flatten_sites,
    site_slices,
)
from ppl_bandits.core.runner import name_salt, round_keys
from ppl_bandits.diffusion.agents import dts_newton_failures, make_diffusion_agent
from ppl_bandits.diffusion.environment import diffusion_environment
from ppl_bandits.mixed_effect.agents import hierts_prior, mets_newton_failures
from ppl_bandits.mixed_effect.baselines import independent_newton_failures
from ppl_bandits.mixed_effect.catalog import make_agent, resolve_agent_name
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from validation.calibration_report import table_row, write_calibration
from validation.compare import stack_draws
from validation.controls import COVARIANCE_FACTOR, MEAN_SHIFT_SD, family_controls, read_claim
from validation.ecdf import ALPHA, NULL_SEED, check_alpha, ecdf_uniformity_test
from validation.families import AUDIT_MODELS
from validation.families import NEGATIVE_CONTROLS as CONTROL_KINDS
from validation.reference import NUTSSettings, run_nuts

__all__ = [
    "CALIBRATION_AGENTS",
    "CHUNK",
    "COVERAGE_LEVELS",
    "DIFFUSION_CONTROLS",
    "DIFFUSION_POSTERIORS",
    "DRAWS",
    "NEGATIVE_CONTROLS",
    "POSTERIORS",
    "CalibrationEntry",
    "calibrate_nuts",
    "calibration_table",
    "power_curve",
    "replication_claim",
    "replication_pits",
    "run_calibration",
    "simulate_replications",
    "study_setup",
]

#: Central-interval levels whose coverage is reported.
COVERAGE_LEVELS = (0.5, 0.8, 0.95)
#: Negative controls of the dTS posteriors: the claimed posterior with every covariance
#: × 1.3 or every mean + 0.5 sd (on the sampled claim of neural links, as maps of the
#: claimed law: x -> m + √1.3 (x − m), x -> x + 0.5 sd), and, for linear links, the dTS
#: approximation (recursion without the links, paper Sec. 3.2) in place of the exact
#: posterior the agent holds.
DIFFUSION_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd", "dts-approximation")
# The controls a per-action posterior (LinTS, GLM-TS) accepts.
_INDEPENDENT_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd")


class CalibrationEntry(NamedTuple):
    """How a study reads one posterior, besides the agent's own ``Agent.posterior``."""

    likelihood: str
    """The likelihood the agent assumes ("gaussian", "logistic"), or for dTS the diffusion
    links ("linear", "neural"): it picks the model the problems are drawn from."""
    chi2: str
    """``"joint"``: one χ²_p PIT over the whole claim; ``"per-action"``: one χ²_d PIT per
    action (per row of the claim's ``theta`` site), for a claim that is block-diagonal per
    action and so says nothing about the joint law of θ_1..θ_K."""
    controls: tuple[str, ...]
    """The negative controls ``"POSTERIOR:CONTROL"`` accepts."""
    newton_failures: Callable[[Any], Any]
    """The family's public count of the Newton iterations of one state that did not
    converge (recorded as the study's ``newton_failures``)."""
    one_based: tuple[str, ...] = ()
    """Sites whose leading index counts from 1 in the labels (diffusion levels ψ_1..ψ_L)."""
    family: str = "mixed-effect"
    """The family whose controls apply (a key of :data:`validation.controls.FAMILY_CONTROLS`)."""


#: Agents whose posterior can be calibrated, by name.
CALIBRATION_AGENTS = {
    "meTS-Lin": CalibrationEntry("gaussian", "joint", CONTROL_KINDS, mets_newton_failures),
    "meTS-Lin-Fa": CalibrationEntry("gaussian", "joint", CONTROL_KINDS, mets_newton_failures),
    "meTS-GLM": CalibrationEntry("logistic", "joint", CONTROL_KINDS, mets_newton_failures),
    "meTS-GLM-Fa": CalibrationEntry("logistic", "joint", CONTROL_KINDS, mets_newton_failures),
    "HierTS": CalibrationEntry("gaussian", "joint", CONTROL_KINDS, mets_newton_failures),
    "LinTS": CalibrationEntry(
        "gaussian", "per-action", _INDEPENDENT_CONTROLS, independent_newton_failures
    ),
    "GLM-TS": CalibrationEntry(
        "logistic", "per-action", _INDEPENDENT_CONTROLS, independent_newton_failures
    ),
}
#: dTS posteriors on the diffusion prior: linear links (exact, a Gaussian claim) and
#: neural links (the dTS approximation, a sampled claim).
DIFFUSION_POSTERIORS = {
    "dTS": CalibrationEntry(
        "linear", "joint", DIFFUSION_CONTROLS, dts_newton_failures, ("psi",), "diffusion"
    ),
    "dTS-neural": CalibrationEntry(
        "neural", "joint", DIFFUSION_CONTROLS[:2], dts_newton_failures, ("psi",), "diffusion"
    ),
}
#: Every posterior a study can calibrate, in the order of the table.
POSTERIORS = (*CALIBRATION_AGENTS, *DIFFUSION_POSTERIORS)
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
#: Posterior draws per replication where PITs are ranks (a sampled claim).
DRAWS = 99
#: Replications per compiled program; larger studies loop over chunks of this size.
CHUNK = 1000
# Valid but not registered (too little power at 200 replications; see power_curve):
# "meTS-Lin:coupling-dropped" leaves every marginal PIT unchanged and only the joint χ²
# PIT can see it; "LinTS:covariance-x1.3" is spread over K per-action χ²_d columns.


# --------------------------------------------------------------------------- arguments


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def _entry(agent: str) -> CalibrationEntry:
    if agent in DIFFUSION_POSTERIORS:
        return DIFFUSION_POSTERIORS[agent]
    return CALIBRATION_AGENTS[agent]


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
    else:
        try:
            agent = resolve_agent_name(agent_part)
        except ValueError:
            raise ValueError(f"posterior is {posterior!r}; {expected}") from None
        if agent not in CALIBRATION_AGENTS:
            raise ValueError(f"posterior is {posterior!r}; {expected}")
    if not control:
        return agent, None
    lookup = {c.lower(): c for c in _entry(agent).controls}
    if control.lower() not in lookup:
        raise ValueError(f"posterior is {posterior!r}; {expected}")
    return agent, lookup[control.lower()]


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
def _agent(agent: str, rounds: int):
    """The agent a study of ``agent`` runs for ``rounds`` rounds (its history's horizon)."""
    if agent in DIFFUSION_POSTERIORS:
        return make_diffusion_agent("dTS")
    return make_agent(agent, horizon=rounds)


@functools.lru_cache(maxsize=32)
def study_setup(agent: str, model: str, K: int, L: int, d: int, rounds: int):
    """Environment and agent, cached so repeated studies reuse the compiled program."""
    bandit = _agent(agent, rounds)
    if agent in DIFFUSION_POSTERIORS:
        link = DIFFUSION_POSTERIORS[agent].likelihood
        return diffusion_environment(K, L, d, link=link), bandit
    reward = AUDIT_MODELS[model][0]
    prior_fn = None
    if agent == "HierTS":

        def prior_fn(key):
            return hierts_prior(fig2_prior(key, K, L, d))

    env = mixed_effect_environment(K, L, d, reward=reward, prior_fn=prior_fn)
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
    env, bandit = study_setup(agent, model, K, L, d, rounds)
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


def simulate_replications(agent, model, K, L, d, rounds, replications, seed, devices, chunk=CHUNK):
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


# --------------------------------------------------------------------------- claims


class _Replications(NamedTuple):
    """What a study reads of its replications."""

    entry: CalibrationEntry
    claim: Claim
    """The agents' claims, batched (a Gaussian one in float64)."""
    truth: np.ndarray
    """(R, p) the true parameters flattened as the claim's sites."""
    state: Any
    """The final states, for the family functions of the controls (never read here)."""


def _read(agent: str, rounds: int, state, params) -> _Replications:
    """The claims of the final states of a study of ``agent`` and the truth beside them.

    The claims are :func:`validation.controls.read_claim` of the batch: the claims of every
    replication, leading axis R, each the one the agent gives for that run's state alone.
    """
    claim = read_claim(_agent(agent, rounds).posterior, state, batched=True)
    values = {name: np.asarray(getattr(params, name), np.float64) for name, _ in claim.sites}
    truth = flatten_sites(values, claim.sites, batch_dims=1)
    return _Replications(_entry(agent), claim, truth, state)


def _labels(sites: Sites, entry: CalibrationEntry) -> list[str]:
    """One label per coordinate of the flattened vector: ``psi[0]``, ``theta[2, 1]``, ..."""
    labels = []
    for name, shape in sites:
        base = 1 if name in entry.one_based else 0
        for index in np.ndindex(*shape):
            first = [index[0] + base] if index else []
            labels.append(f"{name}[{', '.join(str(i) for i in (*first, *index[1:]))}]")
    return labels


def _action_blocks(sites: Sites) -> list[slice]:
    """The coordinates of each action's θ_i (a row of the ``theta`` site)."""
    start = site_slices(sites)["theta"].start
    K, d = dict(sites)["theta"]
    return [slice(start + k * d, start + (k + 1) * d) for k in range(K)]


def _chi2_labels(sites: Sites, entry: CalibrationEntry) -> list[str]:
    if entry.chi2 == "per-action":
        return [f"chi2(theta[{k}])" for k in range(len(_action_blocks(sites)))]
    return ["chi2(joint)"]


# --------------------------------------------------------------------------- controls


def _control_claim(entry: CalibrationEntry, claim: GaussianClaim, state, control: str):
    """The claim of the negative control ``control`` for the batched Gaussian ``claim``."""
    return family_controls(entry.family, state).apply(control, claim)


def _mapped_back(control: str | None, truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The truth mapped back through a control's map of a sampled claim's law.

    A control claims the law of T(x), x from the claim: T(x) = m + √1.3 (x − m)
    (covariance × 1.3) or x + 0.5 sd (mean shift), m and sd the mean and standard deviation
    (ddof 1) of the replication's draws (R, S, p). The rank of the truth among the mapped
    draws is that of T⁻¹(truth) among the draws, and its whitened innovations are those of
    T⁻¹(truth) under the claim.
    """
    if control is None:
        return truth
    if control == "covariance-x1.3":
        m = draws.mean(axis=1)
        return m + (truth - m) / math.sqrt(COVARIANCE_FACTOR)
    if control == "mean-shift-0.5sd":
        return truth - MEAN_SHIFT_SD * draws.std(axis=1, ddof=1)
    raise ValueError(
        f"control is {control!r}; a sampled claim accepts covariance-x1.3 or mean-shift-0.5sd"
    )


# --------------------------------------------------------------------------- PITs


def _mahalanobis(cov: np.ndarray, e: np.ndarray) -> np.ndarray:
    """eᵀΣ⁻¹e for a batch of covariances (R, p, p) and residuals (R, p), float64."""
    return np.einsum("ri,ri->r", e, np.linalg.solve(cov, e[..., None])[..., 0])


def _gaussian_pits(claim: GaussianClaim, truth: np.ndarray, entry: CalibrationEntry):
    """Per-coordinate PITs (R, p) and χ² PITs (R, c) of the truth under a batched Gaussian."""
    cov = claim.cov
    e = truth - claim.mean
    u = stats.norm.cdf(e / np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)))
    if entry.chi2 == "per-action":
        blocks = _action_blocks(claim.sites)
        q = np.stack([_mahalanobis(cov[:, b, b], e[:, b]) for b in blocks], axis=1)
        return u, stats.chi2.cdf(q, df=blocks[0].stop - blocks[0].start)
    return u, stats.chi2.cdf(_mahalanobis(cov, e)[:, None], df=e.shape[1])


@functools.lru_cache(maxsize=8)
def _draws_program(draws: int):
    """``draws`` draws of every replication's sampled claim: (R, draws, p)."""
    return jax.jit(jax.vmap(lambda claim, key: claim.sample(key, draws)))


@functools.lru_cache(maxsize=1)
def _whiten_program():
    """The whitened innovations of every replication's point under its sampled claim."""
    return jax.jit(jax.vmap(lambda claim, x: claim.whitened(x)))


def _sampled_pits(claim: SampledClaim, truth: np.ndarray, control: str | None, seed: int):
    """Randomized-rank PITs (R, p) among ``DRAWS`` draws and the χ² PIT (R, 1) of a sampled
    claim, for the claim itself or a control's map of its law."""
    R, p = truth.shape
    program = _draws_program(DRAWS)
    keys = jax.random.split(jax.random.key(NULL_SEED + seed), R)
    ranks = np.empty((R, p))
    x = np.empty_like(truth)
    dtype = None
    for lo in range(0, R, CHUNK):
        sl = slice(lo, min(R, lo + CHUNK))
        z = program(jax.tree.map(lambda a, sl=sl: a[sl], claim), keys[sl])
        dtype = z.dtype  # the agent's precision
        z = np.asarray(z, np.float64)  # (r, S, p)
        x[sl] = _mapped_back(control, truth[sl], z)
        ranks[sl] = np.sum(z < x[sl][:, None, :], axis=1)
    jitter = np.random.default_rng(NULL_SEED + seed).uniform(size=ranks.shape)
    u = (ranks + jitter) / (DRAWS + 1)
    white = np.asarray(_whiten_program()(claim, jnp.asarray(x, dtype)), np.float64)
    return u, stats.chi2.cdf(np.sum(white**2, axis=1), df=p)[:, None]


def _replication_pits(reps: _Replications, control: str | None, seed: int = 0):
    """Per-coordinate PITs (R, p), χ² PITs (R, c) and their column labels."""
    claim = reps.claim
    if isinstance(claim, SampledClaim):
        u, chi2 = _sampled_pits(claim, reps.truth, control, seed)
    else:
        if control is not None:
            claim = _control_claim(reps.entry, claim, reps.state, control)
        u, chi2 = _gaussian_pits(claim, reps.truth, reps.entry)
    return u, chi2, _labels(claim.sites, reps.entry), _chi2_labels(claim.sites, reps.entry)


def replication_claim(agent: str, state, control: str | None = None, *, rounds: int) -> Claim:
    """The batched claim of a study of ``agent`` (``rounds`` rounds) from its final states.

    The agents' claims (leading axis R; a Gaussian one in float64), or with ``control`` the
    claims of that negative control (Gaussian claims only), as the study tests them.
    """
    claim = read_claim(_agent(agent, rounds).posterior, state, batched=True)
    if control is None:
        return claim
    return _control_claim(_entry(agent), claim, state, control)


def replication_pits(
    agent: str, state, params, control: str | None = None, *, rounds: int, seed: int = 0
):
    """The PITs of a study of ``agent`` (``rounds`` rounds) from its final states and truth."""
    return _replication_pits(_read(agent, rounds, state, params), control, seed)


# --------------------------------------------------------------------------- studies


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
    alpha = check_alpha(alpha)
    chunk = _check_count("chunk", chunk)
    entry = _entry(agent)
    model = _resolve_model(model, entry.likelihood)
    devices = _resolve_devices(devices)

    timings = {"setup": time.perf_counter() - started}
    t0 = time.perf_counter()
    state, params = simulate_replications(
        agent, model, K, L, d, rounds, replications, seed, devices, chunk
    )
    timings["simulate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reps = _read(agent, rounds, state, params)
    u, chi2, labels, chi2_labels = _replication_pits(reps, control, seed)
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
    result["newton_failures"] = int(np.asarray(jax.vmap(entry.newton_failures)(state)).sum())
    if control is None:
        for name in _controls_for(agent):
            cu, cchi2, _, _ = _replication_pits(reps, name.split(":")[1], seed)
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
    alpha = check_alpha(alpha)
    model = _resolve_model(model, _entry(agent).likelihood)
    K, L, d = (
        _check_count(n, v)
        for n, v in (("num_actions", num_actions), ("num_effects", num_effects), ("dim", dim))
    )
    devices = _resolve_devices(devices)
    started = time.perf_counter()
    total = studies * max(sizes)
    state, params = simulate_replications(
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
    reps = _read(agent, rounds, state, params)
    good = np.concatenate(_replication_pits(reps, None, seed)[:2], axis=1)
    bad = np.concatenate(_replication_pits(reps, kind_name, seed)[:2], axis=1)
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
    sampler; they are tested with :func:`validation.ecdf.ecdf_uniformity_test` after the
    randomized PIT (rank + V) / (N + 1), V ~ U(0, 1) with a fixed seed, which is exactly
    uniform then.

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
    alpha = check_alpha(alpha)
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
            nuts=NUTSSettings(
                num_chains=num_chains,
                num_warmup=num_warmup,
                num_samples=num_samples,
                chain_method="sequential",
            ),
            seed=seed + r,
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


# --------------------------------------------------------------------------- table


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
    (:func:`validation.calibration_report.write_calibration`). A row
    (:func:`validation.calibration_report.table_row`) holds ``posterior``, ``model``,
    ``replications``, ``rounds``, the family-wise ``p_value`` and ``verdict``, the verdicts
    of the ψ, θ and χ² blocks, the pooled central-interval coverage at 50, 80 and 95 % with
    the replication-level standard errors (``coverage_95_se``: valid under any dependence
    between a replication's coordinates), ``controls_rejected`` ("2/2"), ``controls`` and
    ``wall_seconds``. The table's files are written by
    :func:`validation.calibration_report.write_calibration_table`.
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
        rows.append(table_row(res))
    return rows
