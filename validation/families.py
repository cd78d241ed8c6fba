r"""The audit families: one per built-in model, each with its environment, agents, the
reference model, the claim conversion and its negative controls.

A family reads its agents only through ``Agent.posterior(state)`` and the family's public
claim functions (:func:`ppl_bandits.mixed_effect.agents.mets_posterior`,
:func:`ppl_bandits.diffusion.agents.dts_posterior`, ...). Every negative control comes from
:mod:`validation.controls`, the generic ones and those the families register in
:data:`validation.controls.FAMILY_CONTROLS` (coupling dropped, the published factored mean,
the dTS approximation on linear links), which the calibration studies apply too; only the
linear bandit's LinTS-shared that assumes twice the noise sd, a map of the agent's prior,
is written here. :func:`validation.audit.run_audit` is the engine that runs a family.

=========================  ===========================================  ===================
model                      agents (exact?)                              NumPyro reference
=========================  ===========================================  ===================
``mixed-effect-linear``    meTS-Lin, HierTS (exact); meTS-Lin-Fa        mixed_effect_model
``mixed-effect-logistic``  meTS-GLM, meTS-GLM-Fa (Laplace: report)      mixed_effect_model
``linear-bandit``          LinTS-shared (exact)                         linear_bandit_model
``diffusion-linear``       dTS (exact: linear links, Gaussian rewards)  diffusion_model
``diffusion-neural``       dTS (the dTS approximation: report)          diffusion_model
=========================  ===========================================  ===================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.diffusion import DiffusionPrior, diffusion_model
from models.linear_bandit import LinearBanditPrior, linear_bandit_model
from models.mixed_effect import MixedEffectPrior, mixed_effect_model
from ppl_bandits.core.claims import GaussianClaim, SampledClaim
from ppl_bandits.diffusion.agents import diffusion_sites, dts, dts_posterior, dts_sampler
from ppl_bandits.diffusion.ddpm import (
    pretrain_ddpm_prior,
)
from ppl_bandits.diffusion.environment import diffusion_environment, fixed_prior_environment
from ppl_bandits.diffusion.posterior import recursion_gaussian
from ppl_bandits.experiments.movielens import movielens_environment
from ppl_bandits.linear_contextual.baselines import shared_lin_ts
from ppl_bandits.linear_contextual.environment import hcsa_environment
from ppl_bandits.mixed_effect.agents import MeTSState, hierts_prior, mets_posterior
from ppl_bandits.mixed_effect.catalog import make_agent
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from validation.controls import GENERIC_CONTROLS, family_controls, gaussian_control

__all__ = [
    "AUDIT_AGENTS",
    "AUDIT_FAMILIES",
    "AUDIT_MODELS",
    "NEGATIVE_CONTROLS",
    "AgentInfo",
    "AuditFamily",
    "AuditSettings",
    "Gaussian64",
    "SampledPosterior",
    "claim64",
    "claimed_posterior",
    "diffusion_claimed_posterior",
    "diffusion_sem_posterior",
    "dts_posterior_samples",
    "list_audit_models",
    "negative_control",
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

#: Deliberately wrong posteriors every mixed-effect audit must reject.
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


def claim64(claim, *, num_samples: int = 20000, seed: int = 0):
    """A claim of :mod:`ppl_bandits.core.claims` in the audit's float64 form.

    A :class:`~ppl_bandits.core.claims.GaussianClaim` becomes :class:`Gaussian64`; a
    :class:`~ppl_bandits.core.claims.SampledClaim` becomes :class:`SampledPosterior`, with
    ``num_samples`` independent draws (key ``seed``) and their moments.
    """
    if isinstance(claim, SampledClaim):
        x = np.asarray(claim.sample(jax.random.key(seed), int(num_samples)), np.float64)
        return SampledPosterior(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), x)
    mean = np.asarray(claim.mean, np.float64)
    cov = np.asarray(claim.cov, np.float64)
    return Gaussian64(mean, 0.5 * (cov + cov.T))


def claimed_posterior(state: MeTSState, factored: str | None = None) -> Gaussian64:
    """The Gaussian over (Ψ, θ_1, ..., θ_K) that a meTS-family agent samples from.

    One run's state (no leading run axis), through the family's own claim
    (:func:`ppl_bandits.mixed_effect.agents.mets_posterior`), in float64. ``factored`` is
    None for the joint effect posterior, or "mean-field" / "published".
    """
    return claim64(mets_posterior(state, factored))


def _generic(name: str, claimed) -> Gaussian64:
    """A generic control of :mod:`validation.controls` (one site: the flattened vector)."""
    sites = (("latent", (claimed.mean.shape[0],)),)
    return Gaussian64(*gaussian_control(name, claimed.mean, claimed.cov, sites))


def _family_control(family: str, name: str, claimed, state, sites) -> Gaussian64:
    """The control ``name`` of :func:`validation.controls.family_controls` applied to the
    float64 claim ``claimed`` (moments over ``sites``) of one run's ``state``."""
    claim = GaussianClaim(claimed.mean, claimed.cov, sites)
    return claim64(family_controls(family, state).apply(name, claim))


def negative_control(
    name: str, claimed: Gaussian64, state: MeTSState, *, num_effects: int, dim: int
) -> Gaussian64:
    """A deliberately wrong version of a meTS-family claim.

    The controls of :func:`validation.controls.family_controls` for the ``"mixed-effect"``
    family, applied to ``claimed`` over the sites of the family's claim
    (``psi`` (Ld,), ``theta`` (K, d)):

    - ``covariance-x1.3`` and ``mean-shift-0.5sd``: the generic controls (covariance times
      1.3; every mean moved by half its marginal standard deviation);
    - ``coupling-dropped``: covariances between Ψ and θ and between actions set to 0;
    - ``published-factored-mean``: the effect means of the paper's eq. 43 (the factored
      mean that drops the coupling between effects), covariance unchanged: the mean of the
      family's own "published" claim, :func:`ppl_bandits.mixed_effect.agents.mets_posterior`.

    ``num_effects`` (L) and ``dim`` (d) are checked against the state's claim; a name not
    in :data:`NEGATIVE_CONTROLS` is refused.
    """
    if name not in NEGATIVE_CONTROLS:
        raise ValueError(f"negative control is {name!r}; expected one of {NEGATIVE_CONTROLS}")
    sites = jax.eval_shape(mets_posterior, state).sites
    shapes = dict(sites)
    if shapes["psi"] != (num_effects * dim,) or shapes["theta"][1:] != (dim,):
        raise ValueError(
            f"num_effects is {num_effects} and dim {dim}; the state's claim has the sites "
            f"{sites}, expected psi of shape (num_effects * dim,) and theta (K, dim)"
        )
    return _family_control("mixed-effect", name, claimed, state, sites)


# --------------------------------------------------------------------------- families


class AgentInfo(NamedTuple):
    """An agent an audit model can audit."""

    exact: bool
    """Whether its posterior is the exact posterior of the model (a verdict) or not (a report)."""
    description: str


class AuditSettings(NamedTuple):
    """The problem and agent settings of an audit (the ``problem`` of
    :func:`validation.audit.run_audit`, which checks them); the defaults are the audit's.

    A field a family does not use is ignored (``num_arms`` outside the linear bandit, the
    DDPM fields outside ``diffusion-neural``, ``data`` outside the mixed-effect models).
    """

    num_actions: int = 10
    """K, the number of actions (arms of the mixed-effect and diffusion models)."""
    num_effects: int = 2
    """L, the number of effects (mixed effect) or diffusion levels (diffusion models)."""
    dim: int = 2
    """d, the dimension of contexts and action parameters."""
    num_arms: int = 10
    """N, arms offered per round by the linear bandit."""
    rounds: int = 200
    """Rounds the agent plays; a recorded history replaces it by its length."""
    seed: int = 0
    """Seed of the problem, of the agent's randomness and of the NUTS chains."""
    factored_variant: str = "mean-field"
    """Mean of the factored ("-Fa") mixed-effect agents: "mean-field" or "published"."""
    prior: str = "random"
    """diffusion-neural: "random" (random 2-layer ReLU MLP links) or "ddpm" (a DDPM prior)."""
    prior_dir: str | None = None
    """diffusion-neural: directory of a saved DDPM; implies ``prior="ddpm"``."""
    pretrain_samples: int = 1000
    """DDPM pre-training: N(0, I_d) samples it is trained on."""
    pretrain_steps: int = 3000
    """DDPM pre-training: optimiser steps."""
    ddpm_steps: int = 10
    """DDPM: diffusion steps, the levels that replace ``num_effects``."""
    posterior_samples: int = 20000
    """Draws that represent a sampled (non-Gaussian) claimed posterior."""
    data: str | None = None
    """Mixed-effect models: path of a real data set (MovieLens) instead of a simulated one."""


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
    reference_model: Callable[[Any, tuple, str], tuple[Callable, tuple, dict, str]]
    """(prior, (contexts, actions, rewards), parameterization) -> (model, args, kwargs, name)."""
    control: Callable[[str, Gaussian64, Any, Any, AuditSettings], Gaussian64]
    """(control, claimed, state, agent prior, settings) -> a deliberately wrong posterior."""
    likelihood: str = "gaussian"
    """Reward likelihood of the reference model."""


# ------------------------------------------------------------------ mixed effect


def _mixed_environment(reward: str):
    def build(s: AuditSettings):
        if s.data is not None:
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
        reference_model=_mixed_reference(likelihood),
        control=_mixed_control,
        likelihood=likelihood,
    )


# ------------------------------------------------------------------ linear bandit

#: Deliberately wrong LinTS-shared posteriors: inflated covariance, shifted mean, and the
#: posterior of a LinTS-shared that assumes twice the reward noise sd (data weighted by 1/4).
LINEAR_BANDIT_CONTROLS = ("covariance-x1.3", "mean-shift-0.5sd", "noise-sd-x2")


def _linear_bandit_environment(s: AuditSettings):

    env = hcsa_environment(d=s.dim, N=s.num_arms)
    return env, {"environment": f"hcsa_environment(d={s.dim}, N={s.num_arms})"}


def _linear_bandit_agent(agent: str, s: AuditSettings):

    return shared_lin_ts()


def _precision_claim(precision, moment) -> Gaussian64:
    prec = 0.5 * (precision + precision.T)
    cov = np.linalg.inv(prec)
    cov = 0.5 * (cov + cov.T)
    return Gaussian64(cov @ moment, cov)


def _linear_bandit_reference(prior, history, parameterization):

    contexts, _, rewards = history
    return linear_bandit_model, (prior, contexts, rewards), {}, "linear-bandit"


def _linear_bandit_control(name, claimed, state, agent_prior, s: AuditSettings) -> Gaussian64:
    if name in GENERIC_CONTROLS:
        return _generic(name, claimed)
    if name == "noise-sd-x2":
        # The claim's precision and natural mean minus the prior's are the data's; a LinTS-shared
        # that assumes twice the noise sd weights them by 1/4.
        sigma = np.asarray(agent_prior.sigma, np.float64)
        P0 = np.linalg.inv(sigma)
        b0 = P0 @ np.asarray(agent_prior.mu, np.float64)
        prec = np.linalg.inv(claimed.cov)
        moment = prec @ claimed.mean
        return _precision_claim(P0 + (prec - P0) / 4.0, b0 + (moment - b0) / 4.0)
    raise ValueError(f"negative control is {name!r}; expected one of {LINEAR_BANDIT_CONTROLS}")


def _linear_bandit_family() -> AuditFamily:

    return AuditFamily(
        name="linear-bandit",
        description="linear-Gaussian contextual bandit, one shared θ* (reference for LinTS-shared)",
        agents={
            "LinTS-shared": AgentInfo(True, "Bayesian LinTS-shared, v = 1: the conjugate posterior")
        },
        prior_type=LinearBanditPrior,
        var_names=("theta",),
        parameterizations=("centered",),
        negative_controls=LINEAR_BANDIT_CONTROLS,
        environment=_linear_bandit_environment,
        agent=_linear_bandit_agent,
        agent_prior=lambda agent, prior: prior,
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


def _as_prior(prior):
    """A DiffusionPrior whose leaves are JAX arrays of the default float dtype."""
    dtype = jnp.result_type(float)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), prior)


def diffusion_claimed_posterior(state) -> Gaussian64:
    r"""The Gaussian over (ψ_1, ..., ψ_L, θ_1, ..., θ_K) that dTS samples from (linear links).

    The family's own claim, :func:`ppl_bandits.diffusion.agents.dts_posterior`, in float64.
    """
    claim = dts_posterior(state)
    if isinstance(claim, SampledClaim):
        raise ValueError(
            "state has neural links; its posterior is not Gaussian (use SampledPosterior draws)"
        )
    return claim64(claim)


def diffusion_sem_posterior(prior, stats, method: str = "exact") -> Gaussian64:
    """The Gaussian a linear diffusion posterior recursion defines for statistics ``stats``.

    :func:`ppl_bandits.diffusion.posterior.recursion_gaussian`: ``method="exact"`` is the
    exact posterior, ``method="dts"`` the dTS approximation (W_ℓ dropped from the upward
    recursion, kept in the downward means), which for linear links is Gaussian too.
    """
    return claim64(recursion_gaussian(prior, stats, method))


def dts_posterior_samples(state, num_samples: int, seed: int = 0) -> SampledPosterior:
    """``num_samples`` independent draws of one dTS posterior sample (ψ, θ), flattened.

    The family's sampler claim (:func:`ppl_bandits.diffusion.agents.dts_sampler`:
    ``method="dts"`` for neural links, ``"exact"`` for linear ones), i.e. the
    (ψ_1..ψ_L, θ_1..θ_K) dTS draws before taking its argmax.
    """
    return claim64(dts_sampler(state), num_samples=num_samples, seed=seed)


def _diffusion_environment(link: str):
    def build(s: AuditSettings):

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
        env = fixed_prior_environment(prior, name="diffusion-ddpm")
        return env, {"environment": "fixed_prior_environment (DDPM)", **info}

    return build


def _diffusion_agent(agent: str, s: AuditSettings):

    return dts()


def _diffusion_reference(prior, history, parameterization):

    kind = "linear" if prior.neural is None else "neural"
    return (
        diffusion_model,
        (_as_prior(prior), *history),
        {"likelihood": "gaussian", "parameterization": parameterization},
        f"diffusion/{kind}/gaussian/{parameterization}",
    )


def _diffusion_control(name, claimed, state, agent_prior, s: AuditSettings) -> Gaussian64:
    """The ``"diffusion"`` controls of :func:`validation.controls.family_controls` over the
    dTS claim's sites (``psi`` (L, d), ``theta`` (K, d)); the moment-matched Gaussian of a
    sampled claim with neural links, which has no ``dts-approximation``."""
    allowed = DIFFUSION_LINEAR_CONTROLS if agent_prior.neural is None else DIFFUSION_NEURAL_CONTROLS
    if name not in allowed:
        links = "linear" if agent_prior.neural is None else "neural"
        raise ValueError(
            f"negative control is {name!r}; expected one of {allowed} with {links} links"
        )
    return _family_control("diffusion", name, claimed, state, diffusion_sites(state))


def _diffusion_family(link: str) -> AuditFamily:

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
