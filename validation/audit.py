r"""The posterior audit: is the posterior an agent samples from the posterior of its model?

An audit runs an agent on a problem drawn from a NumPyro model, keeps the agent's state at
each checkpoint t (after t rounds), and compares the distribution the agent samples from
with a NUTS reference of the *exact* NumPyro model conditioned on the same t rounds:

- the **claimed posterior** is read from the agent's own state (the fast path itself, not
  a recomputation from the raw history);
- the **reference** is NUTS on the model of the audit's family, accepted only when every
  gate of :mod:`validation.diagnostics` holds (the family's parameterizations in turn;
  every attempt is recorded);
- an **exact** posterior gets a verdict from :func:`validation.compare.exact_comparison`
  at family-wise error ``alpha``; an approximate one gets the discrepancy report of
  :func:`validation.compare.discrepancy` and verdict ``"report"``;
- every audit also runs the family's **negative controls** (deliberately wrong
  posteriors) through the exact comparison against the same reference and records
  whether each was rejected.

Audit models are :class:`AuditFamily` objects in the registry :data:`AUDIT_FAMILIES`:

=========================  ===========================================  ===================
model                      agents (exact?)                              NumPyro reference
=========================  ===========================================  ===================
``mixed-effect-linear``    meTS-Lin, HierTS (exact); meTS-Lin-Fa        mixed_effect_model
``mixed-effect-logistic``  meTS-GLM, meTS-GLM-Fa (Laplace: report)      mixed_effect_model
``linear-bandit``          LinTS (exact)                                linear_bandit_model
``diffusion-linear``       dTS (exact: linear links, Gaussian rewards)  diffusion_model
``diffusion-neural``       dTS (the dTS approximation: report)          diffusion_model
=========================  ===========================================  ===================

The claimed posteriors:

- mixed effect: Ψ ~ N(Λ̄⁻¹η, Λ̄⁻¹) (or its factored version) and
  θ_i | Ψ ~ N(gain_i Ψ + shift_i, R_i R_iᵀ), one Gaussian over (Ψ, θ_1, ..., θ_K);
- linear bandit: θ* ~ N(G⁻¹B, G⁻¹) from LinTS's (precision, moment);
- linear diffusion: the joint Gaussian over (ψ_1, ..., ψ_L, θ_1, ..., θ_K) that the
  recursions define for the statistics (Ĝ_a, B̂_a) held in dTS's state
  (:func:`ppl_bandits.diffusion.recursive_joint_posterior`);
- neural diffusion: the dTS approximation is a distribution over (ψ, θ) that is Gaussian
  only conditionally (ψ_ℓ | ψ_{ℓ+1} has a mean f_ℓ(ψ_{ℓ+1}) that is nonlinear). The
  *claimed distribution* is defined as the law of one call of
  :func:`ppl_bandits.diffusion.sample_posterior` (``method="dts"``) on the state's
  statistics — exactly the draw dTS makes before its argmax. It is represented by
  ``posterior_samples`` independent draws (:class:`SampledPosterior`): its mean and
  covariance (the moment-matched Gaussian) enter the standardized mean error, the sd
  ratios and the Gaussian 2-Wasserstein distance, and the draws themselves enter the
  energy distance against the NUTS draws (the energy-distance floor is that of two
  disjoint halves of the claimed draws).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.mixed_effect import mixed_effect_model
from ppl_bandits.agents import MeTSState, hierts_prior, make_agent, resolve_agent_name
from ppl_bandits.environments import mixed_effect_environment
from ppl_bandits.runner import simulate
from ppl_bandits.spec import MixedEffectPrior
from validation.compare import (
    discrepancy,
    energy_distance,
    exact_comparison,
    gaussian_w2,
    stack_draws,
    stack_labels,
)
from validation.reference import Reference, build_reference, save_reference

__all__ = [
    "AUDIT_AGENTS",
    "AUDIT_FAMILIES",
    "AUDIT_MODELS",
    "NEGATIVE_CONTROLS",
    "AgentInfo",
    "AuditFamily",
    "AuditOutcome",
    "AuditSettings",
    "Gaussian64",
    "SampledPosterior",
    "claimed_posterior",
    "ddpm_environment",
    "diffusion_claimed_posterior",
    "diffusion_sem_posterior",
    "dts_posterior_samples",
    "list_audit_models",
    "negative_control",
    "pretrain_ddpm_prior",
    "run_audit",
]

#: The mixed-effect models, with (reward, likelihood); kept for validation.calibration.
#: Every audit model, with its family, is in :data:`AUDIT_FAMILIES`.
AUDIT_MODELS = {
    "mixed-effect-linear": ("linear", "gaussian"),
    "mixed-effect-logistic": ("logistic", "logistic"),
}

#: Mixed-effect agents whose posterior the audit can read, with (likelihood they assume,
#: factored variant).
AUDIT_AGENTS = {
    "meTS-Lin": ("gaussian", None),
    "meTS-Lin-Fa": ("gaussian", "mean-field"),
    "meTS-GLM": ("logistic", None),
    "meTS-GLM-Fa": ("logistic", "mean-field"),
    "HierTS": ("gaussian", None),
}

#: Deliberately wrong posteriors every mixed-effect audit must reject (validation.md).
NEGATIVE_CONTROLS = (
    "covariance-x1.3",
    "mean-shift-0.5sd",
    "coupling-dropped",
    "published-factored-mean",
)

VAR_NAMES = ("psi", "theta")
#: Priors of the diffusion-neural audit: a random 2-layer ReLU MLP link, or a DDPM.
NEURAL_PRIORS = ("random", "ddpm")


class Gaussian64(NamedTuple):
    mean: np.ndarray
    cov: np.ndarray


class SampledPosterior(NamedTuple):
    """A claimed posterior known through independent draws (not Gaussian in closed form)."""

    mean: np.ndarray
    """(p,) mean of the draws."""
    cov: np.ndarray
    """(p, p) covariance of the draws (the moment-matched Gaussian)."""
    samples: np.ndarray
    """(M, p) independent draws, float64."""


def _state_at(state, run: int = 0):
    return jax.tree.map(lambda a: np.asarray(a[run], np.float64), state)


def claimed_posterior(state: MeTSState, factored: str | None = None) -> Gaussian64:
    """The Gaussian over (Ψ, θ_1, ..., θ_K) that a meTS-family agent samples from.

    Read from one run's state (no leading run axis), in float64. ``factored`` is None for
    the joint effect posterior, or "mean-field" / "published" for the factored sampler.
    """
    prec = np.asarray(state.eff_prec, np.float64)
    nat = np.asarray(state.eff_nat, np.float64)
    gain = np.asarray(state.gain, np.float64)  # (K, d, Ld)
    shift = np.asarray(state.shift, np.float64)
    R = np.asarray(state.cond_sqrt, np.float64)
    K, d, Ld = gain.shape
    L = Ld // d
    cov_full = np.linalg.inv(prec)
    cov_full = 0.5 * (cov_full + cov_full.T)
    mean_full = np.linalg.solve(prec, nat)
    if factored is None:
        m_psi, C_psi = mean_full, cov_full
    else:
        blocks = prec.reshape(L, d, L, d)
        C_psi = np.zeros((Ld, Ld))
        m_psi = np.empty(Ld)
        for l in range(L):
            sl = slice(l * d, (l + 1) * d)
            C_l = np.linalg.inv(blocks[l, :, l, :])
            C_psi[sl, sl] = 0.5 * (C_l + C_l.T)
            m_psi[sl] = mean_full[sl] if factored == "mean-field" else C_l @ nat[sl]
    A = gain.reshape(K * d, Ld)
    m_theta = A @ m_psi + shift.reshape(-1)
    cond = np.zeros((K * d, K * d))
    for i in range(K):
        cond[i * d : (i + 1) * d, i * d : (i + 1) * d] = R[i] @ R[i].T
    cross = A @ C_psi
    cov = np.block([[C_psi, cross.T], [cross, cross @ A.T + cond]])
    return Gaussian64(np.concatenate([m_psi, m_theta]), 0.5 * (cov + cov.T))


def negative_control(
    name: str, claimed: Gaussian64, state: MeTSState, *, num_effects: int, dim: int
) -> Gaussian64:
    """A deliberately wrong version of the claimed posterior.

    - ``covariance-x1.3``: covariance times 1.3;
    - ``mean-shift-0.5sd``: every mean moved by half its marginal standard deviation;
    - ``coupling-dropped``: covariances between Ψ and θ and between actions set to 0;
    - ``published-factored-mean``: the effect means of the paper's eq. 43 (the factored
      mean that drops the coupling between effects), covariance unchanged.
    """
    if name == "covariance-x1.3":
        return Gaussian64(claimed.mean, 1.3 * claimed.cov)
    if name == "mean-shift-0.5sd":
        return Gaussian64(claimed.mean + 0.5 * np.sqrt(np.diag(claimed.cov)), claimed.cov)
    if name == "coupling-dropped":
        Ld = num_effects * dim
        p = claimed.mean.shape[0]
        mask = np.zeros((p, p), bool)
        mask[:Ld, :Ld] = True
        for start in range(Ld, p, dim):
            mask[start : start + dim, start : start + dim] = True
        return Gaussian64(claimed.mean, np.where(mask, claimed.cov, 0.0))
    if name == "published-factored-mean":
        # Only the mean is wrong: the paper's eq. 43 effect means, propagated to θ through
        # the agent's own conditional means, with the claimed covariance kept.
        return Gaussian64(claimed_posterior(state, "published").mean, claimed.cov)
    raise ValueError(f"negative control is {name!r}; expected one of {NEGATIVE_CONTROLS}")


# --------------------------------------------------------------------------- families


class AgentInfo(NamedTuple):
    """An agent an audit model can audit."""

    exact: bool
    """Whether its posterior is the exact posterior of the model (a verdict) or not (a report)."""
    description: str


class AuditSettings(NamedTuple):
    """The problem and agent settings of an audit (see :func:`run_audit`)."""

    num_actions: int
    num_effects: int
    dim: int
    num_arms: int
    rounds: int
    seed: int
    factored_variant: str
    prior: str
    prior_dir: str | None
    pretrain_samples: int
    pretrain_steps: int
    ddpm_steps: int
    posterior_samples: int
    data: str | None


@dataclass(frozen=True)
class AuditFamily:
    """One audit model: its environment, agents, claimed posteriors, reference and controls.

    Every callable takes the canonical agent name and the :class:`AuditSettings`.
    """

    name: str
    """Kebab-case model name (the ``--model`` of ``ppl-bandits audit``)."""
    description: str
    agents: Mapping[str, AgentInfo]
    """Agents it can audit, by canonical name."""
    prior_type: type
    """Type of the prior its environments draw (checked on an ``environment=`` override)."""
    var_names: tuple[str, ...]
    """Model sites compared, in the order of the claimed posterior's coordinates."""
    parameterizations: tuple[str, ...]
    """Parameterizations of the reference model, in the order ``"auto"`` tries them."""
    negative_controls: tuple[str, ...]
    """Names of the deliberately wrong posteriors every audit of this model runs."""
    environment: Callable[[AuditSettings], tuple[Any, dict]]
    """settings -> (Environment, JSON-ready description of how it was built)."""
    agent: Callable[[str, AuditSettings], Any]
    """(agent, settings) -> Agent."""
    agent_prior: Callable[[str, Any], Any]
    """(agent, problem prior) -> the prior the agent is told (and NUTS conditions on)."""
    claimed: Callable[[str, Any, AuditSettings], Gaussian64 | SampledPosterior]
    """(agent, state of one run, settings) -> the posterior the agent samples from."""
    reference_model: Callable[[Any, tuple, str], tuple[Callable, tuple, dict, str]]
    """(prior, (contexts, actions, rewards), parameterization) -> (model, args, kwargs, name)."""
    control: Callable[[str, Gaussian64, Any, Any, AuditSettings], Gaussian64]
    """(control, claimed, state, agent prior, settings) -> a deliberately wrong posterior."""
    likelihood: str = "gaussian"
    """Reward likelihood of the reference model."""


def _mean_shift(claimed) -> Gaussian64:
    return Gaussian64(claimed.mean + 0.5 * np.sqrt(np.diag(claimed.cov)), claimed.cov)


def _block_diagonal(cov: np.ndarray, block: int) -> np.ndarray:
    p = cov.shape[0]
    mask = np.zeros((p, p), bool)
    for start in range(0, p, block):
        mask[start : start + block, start : start + block] = True
    return np.where(mask, cov, 0.0)


# ------------------------------------------------------------------ mixed effect


def _mixed_environment(reward: str):
    def build(s: AuditSettings):
        if s.data is not None:
            try:
                from ppl_bandits.movielens import movielens_environment
            except ImportError as exc:  # pragma: no cover - depends on the tree
                raise ValueError(
                    f"data is {s.data!r}; real-data audits need ppl_bandits.movielens ({exc})"
                ) from None
            env = movielens_environment(
                s.data,
                reward=reward,
                num_actions=s.num_actions,
                num_effects=s.num_effects,
                dim=s.dim,
                seed=s.seed,
            )
            return env, {"environment": "movielens", "data": str(s.data)}
        env = mixed_effect_environment(s.num_actions, s.num_effects, s.dim, reward=reward)
        return env, {"environment": "mixed-effect (fig2_prior)"}

    return build


def _mixed_agent(agent: str, s: AuditSettings):
    return make_agent(agent, horizon=s.rounds, factored_variant=s.factored_variant)


def _mixed_agent_prior(agent: str, prior):
    return hierts_prior(prior) if agent == "HierTS" else prior


def _mixed_claimed(agent: str, state, s: AuditSettings) -> Gaussian64:
    factored = None if AUDIT_AGENTS[agent][1] is None else s.factored_variant
    return claimed_posterior(state, factored)


def _mixed_reference(likelihood: str):
    def build(prior, history, parameterization):
        return (
            mixed_effect_model,
            (prior, *history),
            {"likelihood": likelihood, "parameterization": parameterization},
            f"mixed-effect/{likelihood}/{parameterization}",
        )

    return build


def _mixed_control(name, claimed, state, agent_prior, s: AuditSettings) -> Gaussian64:
    L_agent = agent_prior.mixing.shape[1]
    return negative_control(name, claimed, state, num_effects=L_agent, dim=s.dim)


def _mixed_family(model: str, reward: str, likelihood: str, agents: dict) -> AuditFamily:
    return AuditFamily(
        name=model,
        description=f"mixed-effect bandit, {likelihood} rewards (Aouali et al. 2023)",
        agents=agents,
        prior_type=MixedEffectPrior,
        var_names=VAR_NAMES,
        parameterizations=("centered", "noncentered"),
        negative_controls=NEGATIVE_CONTROLS,
        environment=_mixed_environment(reward),
        agent=_mixed_agent,
        agent_prior=_mixed_agent_prior,
        claimed=_mixed_claimed,
        reference_model=_mixed_reference(likelihood),
        control=_mixed_control,
        likelihood=likelihood,
    )


# ------------------------------------------------------------------ linear bandit

#: Deliberately wrong LinTS posteriors: inflated covariance, shifted mean, and the
#: posterior of a LinTS that assumes twice the reward noise sd (data weighted by 1/4).
LINEAR_BANDIT_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd", "noise-sd-x2")


def _linear_bandit_environment(s: AuditSettings):
    from ppl_bandits.linear_contextual import hcsa_environment

    env = hcsa_environment(d=s.dim, N=s.num_arms)
    return env, {"environment": f"hcsa_environment(d={s.dim}, N={s.num_arms})"}


def _linear_bandit_agent(agent: str, s: AuditSettings):
    from ppl_bandits.linear_contextual import lin_ts

    return lin_ts()


def _lin_ts_gaussian(precision, moment) -> Gaussian64:
    prec = np.asarray(precision, np.float64)
    cov = np.linalg.inv(0.5 * (prec + prec.T))
    cov = 0.5 * (cov + cov.T)
    return Gaussian64(cov @ np.asarray(moment, np.float64), cov)


def _linear_bandit_claimed(agent: str, state, s: AuditSettings) -> Gaussian64:
    """θ* ~ N(G⁻¹B, G⁻¹) from LinTS's state (v = 1: exact Thompson sampling)."""
    return _lin_ts_gaussian(state.precision, state.moment)


def _linear_bandit_reference(prior, history, parameterization):
    from models.linear_bandit import linear_bandit_model

    contexts, _, rewards = history
    return linear_bandit_model, (prior, contexts, rewards), {}, "linear-bandit"


def _linear_bandit_control(name, claimed, state, agent_prior, s: AuditSettings) -> Gaussian64:
    if name == "covariance-x1.3":
        return Gaussian64(claimed.mean, 1.3 * claimed.cov)
    if name == "mean-shift-0.5sd":
        return _mean_shift(claimed)
    if name == "noise-sd-x2":
        sigma = np.asarray(agent_prior.sigma, np.float64)
        P0 = np.linalg.inv(sigma)
        b0 = P0 @ np.asarray(agent_prior.mu, np.float64)
        prec = np.asarray(state.precision, np.float64)
        moment = np.asarray(state.moment, np.float64)
        return _lin_ts_gaussian(P0 + (prec - P0) / 4.0, b0 + (moment - b0) / 4.0)
    raise ValueError(f"negative control is {name!r}; expected one of {LINEAR_BANDIT_CONTROLS}")


def _linear_bandit_family() -> AuditFamily:
    from models.linear_bandit import LinearBanditPrior

    return AuditFamily(
        name="linear-bandit",
        description="linear-Gaussian contextual bandit, one shared θ* (reference for LinTS)",
        agents={"LinTS": AgentInfo(True, "Bayesian LinTS, v = 1: the conjugate posterior")},
        prior_type=LinearBanditPrior,
        var_names=("theta",),
        parameterizations=("centered",),
        negative_controls=LINEAR_BANDIT_CONTROLS,
        environment=_linear_bandit_environment,
        agent=_linear_bandit_agent,
        agent_prior=lambda agent, prior: prior,
        claimed=_linear_bandit_claimed,
        reference_model=_linear_bandit_reference,
        control=_linear_bandit_control,
    )


# ------------------------------------------------------------------ diffusion

#: Deliberately wrong linear-diffusion posteriors: inflated covariance, shifted mean, every
#: covariance between different ψ_ℓ and θ_a dropped, and the dTS approximation (W_ℓ
#: dropped from the recursion) applied to linear links, which is wrong unless every W_ℓ = I.
DIFFUSION_LINEAR_CONTROLS = (
    "covariance-x1.3",
    "mean-shift-0.5sd",
    "coupling-dropped",
    "dts-approximation",
)
#: Controls of the neural audit, applied to the moment-matched Gaussian of the claim.
DIFFUSION_NEURAL_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd", "coupling-dropped")


def _sem_gaussian64(links, feed, shift, lat_cov, cond_feed, cond_shift, cond_cov) -> Gaussian64:
    r"""The Gaussian of the linear structural equations of a (linear) diffusion posterior.

    ψ_L = shift_L + e_L, ψ_ℓ = feed_ℓ W_{ℓ+1} ψ_{ℓ+1} + shift_ℓ + e_ℓ and
    θ_a = cond_feed_a W_1 ψ_1 + cond_shift_a + e_a, with independent
    e ~ N(0, lat_cov_ℓ or cond_cov_a): with z = A z + c + e,
    z ~ N((I − A)⁻¹c, (I − A)⁻¹ D (I − A)⁻ᵀ). Ordered (ψ_1, ..., ψ_L, θ_1, ..., θ_K), in float64.
    """
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    links, feed, shift, lat_cov = f64(links), f64(feed), f64(shift), f64(lat_cov)
    cond_feed, cond_shift, cond_cov = f64(cond_feed), f64(cond_shift), f64(cond_cov)
    L, d = shift.shape
    K = cond_shift.shape[0]
    N = (L + K) * d
    A = np.zeros((N, N))
    for level in range(1, L):
        r, c = (level - 1) * d, level * d
        A[r : r + d, c : c + d] = feed[level - 1] @ links[level]
    for a in range(K):
        r = (L + a) * d
        A[r : r + d, :d] = cond_feed[a] @ links[0]
    c = np.concatenate([shift.reshape(-1), cond_shift.reshape(-1)])
    D = np.zeros((N, N))
    for i, block in enumerate([*lat_cov, *cond_cov]):
        D[i * d : (i + 1) * d, i * d : (i + 1) * d] = 0.5 * (block + block.T)
    T = np.eye(N) - A
    mean = np.linalg.solve(T, c)
    left = np.linalg.solve(T, D)
    cov = np.linalg.solve(T, left.T).T
    return Gaussian64(mean, 0.5 * (cov + cov.T))


def diffusion_claimed_posterior(state) -> Gaussian64:
    r"""The Gaussian over (ψ_1, ..., ψ_L, θ_1, ..., θ_K) that dTS samples from (linear links).

    Read from the terms cached in one run's :class:`ppl_bandits.diffusion.DTSState`, the
    ones its ``act`` uses: the upward recursion ``latent`` (Σ̄_ℓ = R_ℓR_ℓᵀ, feed Σ̄_ℓΣ_{ℓ+1}⁻¹,
    shift Σ̄_ℓB̄_ℓ) and the action terms (Σ̂_aS_a, Σ̂_aB_a, Σ̂_a = R_aR_aᵀ), with the
    downward means through the links W_ℓ. With Gaussian rewards this is the exact posterior
    when the state was built with the exact recursion (:func:`diffusion_sem_posterior`).
    """
    if state.prior.neural is not None:
        raise ValueError(
            "state has neural links; its posterior is not Gaussian (use SampledPosterior draws)"
        )
    lat = state.latent
    sq = np.asarray(lat.sqrt, np.float64)
    csq = np.asarray(state.cond_sqrt, np.float64)
    return _sem_gaussian64(
        state.prior.links,
        lat.feed,
        lat.shift,
        sq @ np.swapaxes(sq, -1, -2),
        state.cond_feed,
        state.shift,
        csq @ np.swapaxes(csq, -1, -2),
    )


def diffusion_sem_posterior(prior, stats, method: str = "exact") -> Gaussian64:
    """The Gaussian a linear diffusion posterior recursion defines for statistics ``stats``.

    ``method="exact"`` is :func:`ppl_bandits.diffusion.recursive_joint_posterior` (in
    float64); ``method="dts"`` is the dTS approximation (W_ℓ dropped from the upward
    recursion, kept in the downward means), which for linear links is Gaussian too.
    """
    from ppl_bandits.diffusion import latent_terms
    from ppl_bandits.mixed_effect import chol_inverse

    act, lat = latent_terms(prior, stats, method)
    K = stats.G.shape[0]
    S = chol_inverse(prior.sigma_theta[:K])
    cond_feed = jnp.einsum("kij,kjl->kil", act.cond_cov, S)
    cond_shift = jnp.einsum("kij,kj->ki", act.cond_cov, stats.B)
    return _sem_gaussian64(
        prior.links, lat.feed, lat.shift, lat.cov, cond_feed, cond_shift, act.cond_cov
    )


def _state_stats(state):
    from ppl_bandits.mixed_effect import SufficientStats

    return SufficientStats(
        jnp.asarray(state.G), jnp.asarray(state.B), jnp.asarray(state.count, jnp.int32)
    )


def _as_prior(prior):
    """A DiffusionPrior whose leaves are JAX arrays of the default float dtype."""
    dtype = jnp.result_type(float)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), prior)


def dts_posterior_samples(state, num_samples: int, seed: int = 0) -> SampledPosterior:
    """``num_samples`` independent draws of one dTS posterior sample (ψ, θ), flattened.

    Each draw is one call of :func:`ppl_bandits.diffusion.sample_posterior` on the state's
    prior and statistics (``method="dts"`` for neural links, ``"exact"`` for linear
    ones), i.e. the (ψ_1..ψ_L, θ_1..θ_K) dTS draws before taking its argmax.
    """
    from ppl_bandits.diffusion import sample_posterior

    prior = _as_prior(state.prior)
    stats = _state_stats(state)
    stats = stats._replace(G=stats.G.astype(prior.sigma_psi.dtype))
    stats = stats._replace(B=stats.B.astype(prior.sigma_psi.dtype))
    method = "dts" if prior.neural is not None else "exact"
    keys = jax.random.split(jax.random.key(seed), int(num_samples))
    psi, theta = jax.jit(jax.vmap(lambda k: sample_posterior(k, prior, stats, method)))(keys)
    x = np.concatenate(
        [
            np.asarray(psi, np.float64).reshape(len(keys), -1),
            np.asarray(theta, np.float64).reshape(len(keys), -1),
        ],
        axis=1,
    )
    return SampledPosterior(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), x)


def ddpm_environment(prior, *, truth: Callable | None = None, name: str = "diffusion-ddpm"):
    """A bandit whose prior is a fixed (pre-trained) :class:`~models.diffusion.DiffusionPrior`:
    :func:`ppl_bandits.diffusion.fixed_prior_environment` with the prior's noise sd."""
    from ppl_bandits.diffusion import fixed_prior_environment

    return fixed_prior_environment(prior, truth=truth, name=name)


def pretrain_ddpm_prior(
    *,
    dim: int,
    num_actions: int,
    num_samples: int = 1000,
    num_steps: int = 10,
    train_steps: int = 3000,
    hidden: int = 32,
    training: str = "gaussian",
    prior_dir=None,
    seed: int = 0,
):
    """A DDPM diffusion prior: loaded from ``prior_dir``, or pre-trained here.

    Pre-training (:func:`ppl_bandits.ddpm.train_ddpm`) uses ``num_samples`` draws of the
    ``training`` set (default N(0, I_d), the paper's App. G.3) and
    ceil(train_steps / batches per epoch) epochs, so that every sample size gets about
    ``train_steps`` Adam steps. Returns (DiffusionPrior, JSON-ready description).
    """
    from ppl_bandits.ddpm import (
        MAX_BATCH,
        DDPMSettings,
        ddpm_prior,
        load_ddpm,
        train_ddpm,
        training_set,
    )

    t0 = time.perf_counter()
    if prior_dir is not None:
        params, settings = load_ddpm(prior_dir)
        if settings.dim != dim:
            raise ValueError(
                f"prior_dir {str(prior_dir)!r} holds a DDPM of dim {settings.dim}; expected dim "
                f"{dim} (the audit's d)"
            )
        info = {"prior": "ddpm", "prior_dir": str(prior_dir), "settings": settings._asdict()}
    else:
        for arg, value in (("num_samples", num_samples), ("train_steps", train_steps)):
            if int(value) != value or value < 1:
                raise ValueError(f"{arg} is {value!r}; expected an integer >= 1")
        settings = DDPMSettings(dim=dim, num_steps=int(num_steps), hidden=int(hidden))
        data = training_set(training, int(num_samples), jax.random.key(seed + 7919), dim=dim)
        batches = max(1, int(num_samples) // min(MAX_BATCH, int(num_samples)))
        epochs = math.ceil(int(train_steps) / batches)
        params, losses = train_ddpm(jax.random.key(seed + 104729), data, settings, epochs=epochs)
        info = {
            "prior": "ddpm",
            "training_set": training,
            "pretrain_samples": int(num_samples),
            "epochs": epochs,
            "adam_steps": epochs * batches,
            "final_loss": float(np.mean(np.asarray(losses)[-50:])),
            "settings": settings._asdict(),
        }
    info["pretrain_seconds"] = time.perf_counter() - t0
    return ddpm_prior(params, settings, num_actions), info


def _diffusion_environment(link: str):
    def build(s: AuditSettings):
        from ppl_bandits.diffusion import diffusion_environment

        if link == "linear" or s.prior == "random":
            env = diffusion_environment(s.num_actions, s.num_effects, s.dim, link=link)
            kind = "W ~ U[-1,1], columns zeroed w.p. 0.5" if link == "linear" else "random MLP"
            return env, {"environment": f"diffusion_environment(link={link!r})", "links": kind}
        prior, info = pretrain_ddpm_prior(
            dim=s.dim,
            num_actions=s.num_actions,
            num_samples=s.pretrain_samples,
            num_steps=s.ddpm_steps,
            train_steps=s.pretrain_steps,
            prior_dir=s.prior_dir,
            seed=s.seed,
        )
        return ddpm_environment(prior), {"environment": "ddpm_environment", **info}

    return build


def _diffusion_agent(agent: str, s: AuditSettings):
    from ppl_bandits.diffusion import dts

    return dts()


def _diffusion_linear_claimed(agent: str, state, s: AuditSettings) -> Gaussian64:
    return diffusion_claimed_posterior(state)


def _diffusion_neural_claimed(agent: str, state, s: AuditSettings) -> SampledPosterior:
    return dts_posterior_samples(state, s.posterior_samples, s.seed)


def _diffusion_reference(prior, history, parameterization):
    from models.diffusion import diffusion_model

    kind = "linear" if prior.neural is None else "neural"
    return (
        diffusion_model,
        (_as_prior(prior), *history),
        {"likelihood": "gaussian", "parameterization": parameterization},
        f"diffusion/{kind}/gaussian/{parameterization}",
    )


def _diffusion_control(name, claimed, state, agent_prior, s: AuditSettings) -> Gaussian64:
    if name == "covariance-x1.3":
        return Gaussian64(claimed.mean, 1.3 * claimed.cov)
    if name == "mean-shift-0.5sd":
        return _mean_shift(claimed)
    if name == "coupling-dropped":
        return Gaussian64(claimed.mean, _block_diagonal(claimed.cov, s.dim))
    if name == "dts-approximation" and state.prior.neural is None:
        return diffusion_sem_posterior(_as_prior(state.prior), _state_stats(state), "dts")
    raise ValueError(f"negative control is {name!r}; expected one of {DIFFUSION_LINEAR_CONTROLS}")


def _diffusion_family(link: str) -> AuditFamily:
    from models.diffusion import DiffusionPrior

    linear = link == "linear"
    return AuditFamily(
        name=f"diffusion-{link}",
        description=(
            "diffusion prior with linear links, Gaussian rewards (dTS is exact)"
            if linear
            else "diffusion prior with neural links (random MLP or DDPM), Gaussian rewards"
        ),
        agents={
            "dTS": AgentInfo(True, "dTS, exact recursions")
            if linear
            else AgentInfo(False, "dTS approximation (Aouali 2025, Sec. 3.2)")
        },
        prior_type=DiffusionPrior,
        var_names=VAR_NAMES,
        parameterizations=("centered", "noncentered") if linear else ("noncentered", "centered"),
        negative_controls=DIFFUSION_LINEAR_CONTROLS if linear else DIFFUSION_NEURAL_CONTROLS,
        environment=_diffusion_environment(link),
        agent=_diffusion_agent,
        agent_prior=lambda agent, prior: prior,
        claimed=_diffusion_linear_claimed if linear else _diffusion_neural_claimed,
        reference_model=_diffusion_reference,
        control=_diffusion_control,
    )


def _registry() -> dict[str, AuditFamily]:
    def mixed(likelihood):
        return {
            k: AgentInfo(k in ("meTS-Lin", "HierTS") and likelihood == "gaussian", k)
            for k in AUDIT_AGENTS
        }

    return {
        "mixed-effect-linear": _mixed_family(
            "mixed-effect-linear", "linear", "gaussian", mixed("gaussian")
        ),
        "mixed-effect-logistic": _mixed_family(
            "mixed-effect-logistic", "logistic", "logistic", mixed("logistic")
        ),
        "linear-bandit": _linear_bandit_family(),
        "diffusion-linear": _diffusion_family("linear"),
        "diffusion-neural": _diffusion_family("neural"),
    }


#: Every audit model by its kebab-case name (``ppl-bandits audit --model``).
AUDIT_FAMILIES: dict[str, AuditFamily] = _registry()


def list_audit_models() -> list[str]:
    """Names of the audit models, e.g. for ``--model`` help."""
    return list(AUDIT_FAMILIES)


# --------------------------------------------------------------------------- the audit


class AuditOutcome(NamedTuple):
    """Everything an audit produced (``record`` is what audit.json holds)."""

    record: dict
    references: dict
    panels: list
    histories: dict | None = None
    """(contexts, actions, rewards) of the first t rounds, per checkpoint t."""
    claims: dict | None = None
    """The claimed posterior (Gaussian64 or SampledPosterior), per checkpoint t."""


def _resolve(name: str, table, what: str, suffix: str = "") -> str:
    lookup = {k.lower(): k for k in table}
    key = str(name).lower()
    if key not in lookup:
        raise ValueError(f"{what} is {name!r}; expected one of {', '.join(table)}{suffix}")
    return lookup[key]


def _resolve_agent(agent: str, family: AuditFamily) -> str:
    try:
        agent = resolve_agent_name(agent)
    except ValueError:
        pass
    others = [
        m for m, f in AUDIT_FAMILIES.items() if str(agent).lower() in map(str.lower, f.agents)
    ]
    suffix = f" for model {family.name}"
    if others:
        suffix += f" ({agent} is audited with model {', '.join(others)})"
    return _resolve(agent, family.agents, "agent", suffix)


def _history(res, t: int):
    return (
        np.asarray(res.contexts[0, :t]),
        np.asarray(res.actions[0, :t]).astype(np.int32),
        np.asarray(res.rewards[0, :t]),
    )


def _reference(
    family: AuditFamily,
    prior,
    history,
    *,
    parameterization: str,
    nuts: dict,
    log: Callable[[str], None],
) -> tuple[Reference, list[dict]]:
    """NUTS on the exact model; try the parameterizations in turn until one is accepted."""
    order = family.parameterizations if parameterization == "auto" else (parameterization,)
    attempts = []
    ref = None
    for par in order:
        t0 = time.perf_counter()
        model, args, kwargs, model_name = family.reference_model(prior, history, par)
        ref = build_reference(
            model,
            *args,
            model_name=model_name,
            var_names=list(family.var_names),
            **kwargs,
            **nuts,
        )
        seconds = time.perf_counter() - t0
        failed = [g.name for g in ref.gate.gates if not g.passed]
        attempts.append(
            {
                "parameterization": par,
                "accepted": ref.accepted,
                "failed_gates": failed,
                "advice": list(ref.gate.advice),
                "seconds": seconds,
            }
        )
        log(
            f"    NUTS ({par}): {'accepted' if ref.accepted else 'refused'}"
            + ("" if ref.accepted else f" (failed: {', '.join(failed)})")
            + f" in {seconds:.1f} s"
        )
        if ref.accepted:
            break
    return ref, attempts


def _noise_floor(claimed, n: int, seed: int) -> dict:
    """W2 and energy distance of ``n`` iid draws from the claimed posterior itself.

    Both statistics are biased upwards by sampling noise (W2 through the fitted
    covariance); a discrepancy near this floor is indistinguishable from none. For a
    :class:`SampledPosterior` the energy-distance floor is that of two disjoint halves of
    its draws (at most 2000 each).
    """
    rng = np.random.default_rng(seed + 1)
    chol = np.linalg.cholesky(claimed.cov + 1e-300 * np.eye(claimed.cov.shape[0]))
    x = claimed.mean + rng.standard_normal((n, claimed.mean.shape[0])) @ chol.T
    w2 = gaussian_w2(claimed.mean, claimed.cov, x.mean(0), np.cov(x, rowvar=False))
    samples = getattr(claimed, "samples", None)
    if samples is not None and samples.shape[0] >= 4:
        half = min(samples.shape[0] // 2, 2000)
        energy = energy_distance(samples[:half], samples[half : 2 * half])
    else:
        y = claimed.mean + rng.standard_normal((min(n, 2000), claimed.mean.shape[0])) @ chol.T
        energy = energy_distance(x[: y.shape[0]], y)
    return {"w2_iid_floor": float(w2), "energy_distance_iid_floor": float(energy)}


def _discrepancy(draws, claimed, *, seed: int, labels) -> dict:
    """:func:`validation.compare.discrepancy`; a sampled claim's energy distance uses its draws."""
    disc = discrepancy(draws, claimed.mean, claimed.cov, seed=seed, labels=labels)
    samples = getattr(claimed, "samples", None)
    if samples is not None:
        flat = draws.reshape(-1, draws.shape[-1])
        m = min(2000, flat.shape[0], samples.shape[0])
        idx = np.round(np.linspace(0, flat.shape[0] - 1, m)).astype(int)
        disc["energy_distance_gaussian"] = disc["energy_distance"]
        disc["energy_distance"] = energy_distance(flat[idx], samples[-m:])
        disc["energy_points"] = int(m)
        disc["claim"] = f"{samples.shape[0]} independent draws (moment-matched mean and cov)"
    return disc


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def run_audit(
    model: str = "mixed-effect-linear",
    agent: str = "meTS-Lin",
    *,
    num_actions: int = 10,
    num_effects: int = 2,
    dim: int = 2,
    rounds: int = 200,
    checkpoints: Sequence[int] = (50, 200),
    seed: int = 0,
    alpha: float = 0.01,
    parameterization: str = "auto",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    target_accept: float = 0.9,
    negative_controls: bool = True,
    factored_variant: str = "mean-field",
    num_arms: int = 10,
    prior: str = "random",
    prior_dir=None,
    pretrain_samples: int = 1000,
    pretrain_steps: int = 3000,
    ddpm_steps: int = 10,
    posterior_samples: int = 20000,
    data=None,
    environment=None,
    out_dir=None,
    log: Callable[[str], None] | None = print,
) -> AuditOutcome:
    """Audit ``agent``'s posterior against NUTS on the exact ``model`` at each checkpoint.

    Parameters
    ----------
    model : one of :data:`AUDIT_FAMILIES` (case-insensitive)
        "mixed-effect-linear", "mixed-effect-logistic", "linear-bandit",
        "diffusion-linear" or "diffusion-neural".
    agent : an agent of the model's family (case-insensitive): the mixed-effect agents
        of :data:`AUDIT_AGENTS`, "LinTS" (linear-bandit) or "dTS" (diffusion).
    num_actions, num_effects, dim : K, L (effects, or diffusion levels), d of the problem.
    rounds : rounds the agent plays; checkpoints must lie in [0, rounds].
    checkpoints : rounds t at which the posterior is audited (t = 0 audits the prior).
    seed : the problem, the agent's randomness and the NUTS chains derive from it.
    alpha : family-wise error rate of each exact comparison (Bonferroni inside).
    parameterization : "auto" (the family's parameterizations in turn), "centered" or
        "noncentered" (one the family offers).
    num_chains, num_warmup, num_samples, target_accept : NUTS settings.
    negative_controls : also run the family's deliberately wrong posteriors.
    factored_variant : mean of the "-Fa" agents, "mean-field" or "published".
    num_arms : N, arms per round of the linear bandit.
    prior : diffusion-neural only: "random" (a random 2-layer ReLU MLP link per level,
        :func:`ppl_bandits.diffusion.diffusion_environment`) or "ddpm" (a DDPM prior,
        :func:`pretrain_ddpm_prior`; its ``ddpm_steps`` levels replace ``num_effects``).
    prior_dir : directory of a saved DDPM (:func:`ppl_bandits.ddpm.save_ddpm`); implies
        ``prior="ddpm"``.
    pretrain_samples, pretrain_steps, ddpm_steps : DDPM pre-training on N(0, I_d) samples.
    posterior_samples : draws that represent a sampled (non-Gaussian) claimed posterior.
    data : mixed-effect models only: path of a real data set (MovieLens,
        :func:`ppl_bandits.movielens.movielens_environment`).
    environment : an :class:`~ppl_bandits.types.Environment` to use instead of the
        family's own; its ``draw`` must return a prior of the family's type.
    out_dir : if given, each accepted reference is stored under out_dir/reference_t<t>/.
    log : where progress lines go (None for silence).

    Returns
    -------
    AuditOutcome
        ``record`` (JSON-ready: model, agent, settings, reference, checks,
        negative_controls, verdict), the references and the report panels.
    """
    log = log or (lambda _msg: None)
    model = _resolve(model, AUDIT_FAMILIES, "model")
    family = AUDIT_FAMILIES[model]
    agent = _resolve_agent(agent, family)
    if AUDIT_AGENTS.get(agent, (None, None))[1] is not None and model.startswith("mixed"):
        if factored_variant not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {factored_variant!r}; expected mean-field or published"
            )
    for name, value in (
        ("num_actions", num_actions),
        ("num_effects", num_effects),
        ("dim", dim),
        ("rounds", rounds),
        ("num_arms", num_arms),
        ("ddpm_steps", ddpm_steps),
        ("posterior_samples", posterior_samples),
        ("pretrain_samples", pretrain_samples),
        ("pretrain_steps", pretrain_steps),
    ):
        _check_int(name, value)
    checkpoints = sorted({int(c) for c in checkpoints})
    if not checkpoints or checkpoints[0] < 0 or checkpoints[-1] > rounds:
        raise ValueError(f"checkpoints are {checkpoints}; expected rounds in [0, {rounds}]")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is {alpha}; expected a number in (0, 1)")
    allowed = ("auto", *family.parameterizations)
    if parameterization not in allowed:
        raise ValueError(
            f"parameterization is {parameterization!r}; expected one of {', '.join(allowed)} "
            f"for model {model}"
        )
    if prior_dir is not None:
        prior = "ddpm"
    if prior not in NEURAL_PRIORS:
        raise ValueError(f"prior is {prior!r}; expected one of {', '.join(NEURAL_PRIORS)}")
    if prior == "ddpm" and model != "diffusion-neural":
        raise ValueError(
            f"prior is 'ddpm'; DDPM priors are audited with model diffusion-neural, not {model}"
        )
    if data is not None and not model.startswith("mixed-effect"):
        raise ValueError(f"data is {str(data)!r}; real data sets feed the mixed-effect models only")
    settings = AuditSettings(
        num_actions=int(num_actions),
        num_effects=int(num_effects),
        dim=int(dim),
        num_arms=int(num_arms),
        rounds=int(rounds),
        seed=int(seed),
        factored_variant=factored_variant,
        prior=prior,
        prior_dir=None if prior_dir is None else str(prior_dir),
        pretrain_samples=int(pretrain_samples),
        pretrain_steps=int(pretrain_steps),
        ddpm_steps=int(ddpm_steps),
        posterior_samples=int(posterior_samples),
        data=None if data is None else str(data),
    )
    exact = family.agents[agent].exact
    started = time.perf_counter()

    if environment is None:
        env, env_info = family.environment(settings)
    else:
        env, env_info = environment, {"environment": f"given ({environment.name})"}
    drawn_prior, _ = jax.eval_shape(env.draw, jax.random.key(seed))
    if not isinstance(drawn_prior, family.prior_type):
        raise ValueError(
            f"environment draws a {type(drawn_prior).__name__}; model {model} expects a "
            f"{family.prior_type.__name__}"
        )
    bandit = family.agent(agent, settings)
    levels = ddpm_steps if prior == "ddpm" and model == "diffusion-neural" else num_effects
    log(
        f"audit: {agent} on {model} (K={num_actions}, L={levels}, d={dim}), "
        f"{rounds} rounds, checkpoints {checkpoints}"
    )
    res = simulate(
        jax.random.key(seed),
        env,
        bandit,
        num_rounds=rounds,
        num_runs=1,
        checkpoints=[c for c in checkpoints if c > 0],
    )
    problem_prior = jax.tree.map(lambda a: a[0], res.prior)
    agent_prior = family.agent_prior(agent, problem_prior)
    init_state = bandit.init(jax.random.key(0), agent_prior)
    nuts = {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "seed": seed,
        "target_accept": target_accept,
    }

    checks, controls, ref_records, references, panels = [], [], [], {}, []
    histories, claims = {}, {}
    for t in checkpoints:
        log(f"  checkpoint t={t}")
        state = (
            jax.tree.map(lambda a: np.asarray(a), init_state)
            if t == 0
            else _state_at(res.checkpoint_states[t])
        )
        claimed = family.claimed(agent, state, settings)
        histories[t], claims[t] = _history(res, t), claimed
        ref, attempts = _reference(
            family,
            agent_prior,
            histories[t],
            parameterization=parameterization,
            nuts=nuts,
            log=log,
        )
        ref_records.append(
            {
                "checkpoint": t,
                "accepted": ref.accepted,
                "attempts": attempts,
                "diagnostics": ref.gate.to_dict(),
                "record": ref.record,
            }
        )
        references[t] = ref
        if out_dir is not None and ref.accepted:
            save_reference(ref, Path(out_dir) / f"reference_t{t}", overwrite=True)
        if not ref.accepted:
            checks.append(
                {
                    "name": "exact-comparison" if exact else "discrepancy",
                    "checkpoint": t,
                    "verdict": "fail",
                    "statistics": {
                        "reason": "the NUTS reference was refused by its gates",
                        "advice": list(ref.gate.advice),
                    },
                }
            )
            continue
        draws = stack_draws(ref.idata, list(family.var_names))
        labels = stack_labels(ref.idata, list(family.var_names))
        comparison = exact_comparison(draws, claimed.mean, claimed.cov, alpha=alpha, labels=labels)
        disc = _discrepancy(draws, claimed, seed=seed, labels=labels)
        disc.update(_noise_floor(claimed, draws.shape[0] * draws.shape[1], seed))
        if exact:
            cdict = comparison.to_dict()
            checks.append(
                {
                    "name": "exact-comparison",
                    "checkpoint": t,
                    "verdict": comparison.verdict,
                    "statistics": cdict,
                }
            )
            log(f"    exact comparison: {comparison.verdict}")
        else:
            checks.append(
                {"name": "discrepancy", "checkpoint": t, "verdict": "report", "statistics": disc}
            )
            log(
                "    discrepancy: max |standardized mean error| "
                f"{disc.get('max_abs_standardized_mean_error', float('nan')):.3g}, "
                f"W2 {disc.get('w2', float('nan')):.3g}"
            )
        panels.append(
            {
                "checkpoint": t,
                "labels": labels,
                "draws": draws,
                "mean": claimed.mean,
                "cov": claimed.cov,
                "comparison": comparison.to_dict() if exact else None,
                "discrepancy": disc,
                "gate": ref.gate.to_dict(),
            }
        )
        if negative_controls:
            for name in family.negative_controls:
                wrong = family.control(name, claimed, state, agent_prior, settings)
                if np.allclose(wrong.mean, claimed.mean, rtol=1e-10, atol=1e-12) and np.allclose(
                    wrong.cov, claimed.cov, rtol=1e-10, atol=1e-12
                ):
                    # e.g. the published factored mean with one effect: not wrong here.
                    controls.append(
                        {
                            "name": name,
                            "checkpoint": t,
                            "rejected": None,
                            "note": "identical to the claimed posterior here",
                        }
                    )
                    continue
                verdict = exact_comparison(draws, wrong.mean, wrong.cov, alpha=alpha, labels=labels)
                controls.append(
                    {
                        "name": name,
                        "checkpoint": t,
                        "rejected": verdict.verdict == "fail",
                        "failed_tests": len(verdict.to_dict().get("failed", [])),
                    }
                )
            rej = [c["rejected"] for c in controls if c["checkpoint"] == t]
            log(
                f"    negative controls rejected: {sum(bool(r) for r in rej)}/"
                f"{sum(r is not None for r in rej)}"
            )

    verdicts = [c["verdict"] for c in checks]
    if "fail" in verdicts:
        overall = "fail"
    elif exact:
        overall = "pass"
    else:
        overall = "report"
    record = {
        "model": model,
        "agent": agent,
        "exact": exact,
        "verdict": overall,
        "settings": _record_settings(
            family, agent, settings, checkpoints, alpha, parameterization, nuts
        ),
        "environment": env_info,
        "reference": {
            "accepted": all(r["accepted"] for r in ref_records),
            "checkpoints": ref_records,
        },
        "checks": checks,
        "negative_controls": controls,
        "wall_seconds": time.perf_counter() - started,
        "seed": seed,
    }
    return AuditOutcome(record, references, panels, histories, claims)


def _record_settings(family, agent, s: AuditSettings, checkpoints, alpha, parameterization, nuts):
    out = {
        "num_actions": s.num_actions,
        "num_effects": s.num_effects,
        "dim": s.dim,
        "rounds": s.rounds,
        "checkpoints": checkpoints,
        "alpha": alpha,
        "parameterization": parameterization,
        "likelihood": family.likelihood,
    }
    if family.name.startswith("mixed-effect"):
        agent_likelihood, factored = AUDIT_AGENTS[agent]
        out["agent_likelihood"] = agent_likelihood
        out["factored"] = None if factored is None else s.factored_variant
        if s.data is not None:
            out["data"] = s.data
    elif family.name == "linear-bandit":
        out["num_arms"] = s.num_arms
    elif family.name == "diffusion-neural":
        out["prior"] = s.prior
        out["posterior_samples"] = s.posterior_samples
        if s.prior == "ddpm":
            out["ddpm_steps"] = s.ddpm_steps
            out["prior_dir"] = s.prior_dir
            out["pretrain_samples"] = s.pretrain_samples
            out["pretrain_steps"] = s.pretrain_steps
    return out | nuts
