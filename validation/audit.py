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

Audit models are :class:`~validation.families.AuditFamily` objects in the registry
:data:`~validation.families.AUDIT_FAMILIES`; :mod:`validation.families` lists each model with
its agents and its NumPyro reference.

The claimed posteriors:

- mixed effect: Ψ ~ N(Λ̄⁻¹η, Λ̄⁻¹) (or its factored version) and
  θ_i | Ψ ~ N(gain_i Ψ + shift_i, R_i R_iᵀ), one Gaussian over (Ψ, θ_1, ..., θ_K);
- linear bandit: θ* ~ N(G⁻¹B, G⁻¹), the claim of LinTS-shared;
- linear diffusion: the joint Gaussian over (ψ_1, ..., ψ_L, θ_1, ..., θ_K) that the
  recursions define for the statistics (Ĝ_a, B̂_a) held in dTS's state
  (:func:`ppl_bandits.diffusion.posterior.recursive_joint_posterior`);
- neural diffusion: the dTS approximation is a distribution over (ψ, θ) that is Gaussian
  only conditionally (ψ_ℓ | ψ_{ℓ+1} has a mean f_ℓ(ψ_{ℓ+1}) that is nonlinear). The
  *claimed distribution* is defined as the law of one call of
  :func:`ppl_bandits.diffusion.posterior.sample_posterior` (``method="dts"``) on the state's
  statistics — exactly the draw dTS makes before its argmax. It is represented by
  ``posterior_samples`` independent draws (:class:`SampledPosterior`): its mean and
  covariance (the moment-matched Gaussian) enter the standardized mean error, the sd
  ratios and the Gaussian 2-Wasserstein distance, and the draws themselves enter the
  energy distance against the NUTS draws (the energy-distance floor is that of two
  disjoint halves of the claimed draws).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits.core.runner import draw_problems, replay, simulate
from ppl_bandits.mixed_effect.catalog import resolve_agent_name
from validation.compare import (
    discrepancy,
    energy_distance,
    exact_comparison,
    gaussian_w2,
    stack_draws,
    stack_labels,
)
from validation.families import (
    AUDIT_AGENTS,
    AUDIT_FAMILIES,
    NEURAL_PRIORS,
    AuditFamily,
    AuditSettings,
    claim64,
)
from validation.reference import (
    NUTSSettings,
    Reference,
    build_reference,
    checked_nuts_settings,
    save_reference,
)

__all__ = [
    "AuditOutcome",
    "run_audit",
]

# --------------------------------------------------------------------------- the audit


def _state_at(state, run: int = 0):
    return jax.tree.map(lambda a: a[run], state)


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


def _history_prefix(history, t: int):
    contexts, actions, rewards = history
    return contexts[:t], actions[:t].astype(np.int32), rewards[:t]


def _check_history(history, model: str, num_actions: int, num_arms: int, dim: int):
    """A recorded history as float64/int32 arrays, checked against the audit's problem."""
    try:
        contexts, actions, rewards = (np.asarray(a) for a in history)
    except (TypeError, ValueError):
        raise ValueError(
            "history is not (contexts, actions, rewards); expected three arrays"
        ) from None
    width = num_arms if model == "linear-bandit" else num_actions
    what = "--N arms" if model == "linear-bandit" else "--K actions"
    if contexts.ndim != 2 or contexts.shape[1] != dim:
        raise ValueError(
            f"history has contexts of shape {contexts.shape}; expected (n, {dim}) for d={dim}"
        )
    n = contexts.shape[0]
    if actions.shape != (n,) or rewards.shape != (n,):
        raise ValueError(
            f"history has actions {actions.shape} and rewards {rewards.shape}; expected ({n},)"
        )
    if n and (actions.min() < 0 or actions.max() >= width):
        raise ValueError(
            f"history has actions in [{actions.min()}, {actions.max()}]; expected actions in "
            f"[0, {width - 1}] for {width} {what.split()[1]} ({what})"
        )
    for name, arr in (("contexts", contexts), ("rewards", rewards)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"history has non-finite {name}; expected finite values")
    if model == "mixed-effect-logistic" and not np.all(np.isin(rewards, (0.0, 1.0))):
        raise ValueError("history has rewards other than 0 and 1; logistic models need 0/1 rewards")
    dtype = jnp.result_type(float)
    return (
        np.asarray(contexts, dtype),
        np.asarray(actions, np.int32),
        np.asarray(rewards, dtype),
    )


def _reference(
    family: AuditFamily,
    prior,
    history,
    *,
    parameterization: str,
    nuts: NUTSSettings,
    seed: int,
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
            nuts=nuts,
            seed=seed,
            **kwargs,
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
    problem: AuditSettings | None = None,
    nuts: NUTSSettings | None = None,
    checkpoints: Sequence[int] = (50, 200),
    alpha: float = 0.01,
    parameterization: str = "auto",
    negative_controls: bool = True,
    history=None,
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
        of :data:`AUDIT_AGENTS`, "LinTS-shared" (linear-bandit) or "dTS" (diffusion).
    problem : :class:`~validation.families.AuditSettings`, optional
        The problem and the agent: K, L (effects, or diffusion levels), d, N arms, the
        rounds played (checkpoints must lie in [0, rounds]), the seed (the problem, the
        agent's randomness and the NUTS chains derive from it), the factored variant of
        the "-Fa" agents, the diffusion-neural prior ("random" MLP links,
        :func:`ppl_bandits.diffusion.environment.diffusion_environment`, or "ddpm",
        :func:`ppl_bandits.diffusion.ddpm.pretrain_ddpm_prior`, whose ``ddpm_steps``
        levels replace ``num_effects``; a ``prior_dir`` of a saved DDPM implies "ddpm"),
        the DDPM pre-training, the draws that represent a sampled claimed posterior and
        a real data set of the mixed-effect models
        (:func:`ppl_bandits.experiments.movielens.movielens_environment`). ``None`` for
        the defaults. Every field is checked before anything runs.
    nuts : :class:`~validation.reference.NUTSSettings`, optional
        Settings of the NUTS references (``None`` for the defaults); the chains are
        seeded with ``problem.seed``.
    checkpoints : rounds t at which the posterior is audited (t = 0 audits the prior).
    alpha : family-wise error rate of each exact comparison (Bonferroni inside).
    parameterization : "auto" (the family's parameterizations in turn), "centered" or
        "noncentered" (one the family offers).
    negative_controls : also run the family's deliberately wrong posteriors.
    history : (contexts (n, d), actions (n,), rewards (n,)), optional
        A recorded history to audit instead of a simulated one
        (:func:`ppl_bandits.data.history.load_history`): the problem's prior is the one the
        family's environment draws with ``problem.seed`` (as a simulation would), the
        agent's state after t rounds is its update replayed over the first t recorded
        rounds (:func:`ppl_bandits.core.runner.replay`), and NUTS conditions on the same
        rounds. ``problem.rounds`` becomes n; checkpoints must lie in [0, n].
    environment : an :class:`~ppl_bandits.core.types.Environment` to use instead of the
        family's own; its ``draw`` must return a prior of the family's type.
    out_dir : if given, each accepted reference is stored under out_dir/reference_t<t>/.
    log : where progress lines go (None for silence).

    Returns
    -------
    AuditOutcome
        ``record`` (JSON-ready: model, agent, settings, reference, checks,
        negative_controls, verdict), the references and the report panels.

    Examples
    --------
    >>> from validation.families import AuditSettings
    >>> from validation.reference import NUTSSettings
    >>> outcome = run_audit(
    ...     "mixed-effect-linear", "meTS-Lin",
    ...     problem=AuditSettings(num_actions=4, rounds=60),
    ...     nuts=NUTSSettings(num_warmup=400, num_samples=600),
    ...     checkpoints=[20, 60], log=None,
    ... )  # doctest: +SKIP
    >>> outcome.record["verdict"]  # doctest: +SKIP
    'pass'
    """
    log = log or (lambda _msg: None)
    model = _resolve(model, AUDIT_FAMILIES, "model")
    family = AUDIT_FAMILIES[model]
    agent = _resolve_agent(agent, family)
    if problem is None:
        problem = AuditSettings()
    elif not isinstance(problem, AuditSettings):
        raise ValueError(
            f"problem is {type(problem).__name__}; expected a validation.families.AuditSettings"
        )
    nuts = checked_nuts_settings(nuts)
    if AUDIT_AGENTS.get(agent, (None, None))[1] is not None and model.startswith("mixed"):
        if problem.factored_variant not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {problem.factored_variant!r}; expected mean-field or "
                "published"
            )
    for name in (
        "num_actions",
        "num_effects",
        "dim",
        "rounds",
        "num_arms",
        "ddpm_steps",
        "posterior_samples",
        "pretrain_samples",
        "pretrain_steps",
    ):
        _check_int(name, getattr(problem, name))
    _check_int("seed", problem.seed, 0)
    rounds = problem.rounds
    if history is not None:
        history = _check_history(history, model, problem.num_actions, problem.num_arms, problem.dim)
        rounds = int(history[0].shape[0])
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
    prior = "ddpm" if problem.prior_dir is not None else problem.prior
    if prior not in NEURAL_PRIORS:
        raise ValueError(f"prior is {prior!r}; expected one of {', '.join(NEURAL_PRIORS)}")
    if prior == "ddpm" and model != "diffusion-neural":
        raise ValueError(
            f"prior is 'ddpm'; DDPM priors are audited with model diffusion-neural, not {model}"
        )
    data = problem.data
    if data is not None and not model.startswith("mixed-effect"):
        raise ValueError(f"data is {str(data)!r}; real data sets feed the mixed-effect models only")
    settings = AuditSettings(
        num_actions=int(problem.num_actions),
        num_effects=int(problem.num_effects),
        dim=int(problem.dim),
        num_arms=int(problem.num_arms),
        rounds=int(rounds),
        seed=int(problem.seed),
        factored_variant=problem.factored_variant,
        prior=prior,
        prior_dir=None if problem.prior_dir is None else str(problem.prior_dir),
        pretrain_samples=int(problem.pretrain_samples),
        pretrain_steps=int(problem.pretrain_steps),
        ddpm_steps=int(problem.ddpm_steps),
        posterior_samples=int(problem.posterior_samples),
        data=None if data is None else str(data),
    )
    seed = settings.seed
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
    levels = (
        settings.ddpm_steps
        if prior == "ddpm" and model == "diffusion-neural"
        else settings.num_effects
    )
    log(
        f"audit: {agent} on {model} (K={settings.num_actions}, L={levels}, d={settings.dim}), "
        f"{rounds} rounds, checkpoints {checkpoints}"
    )
    if history is None:
        res = simulate(
            jax.random.key(seed),
            env,
            bandit,
            num_rounds=rounds,
            num_runs=1,
            checkpoints=[c for c in checkpoints if c > 0],
        )
        run_prior = res.prior
    else:
        run_prior = draw_problems(jax.random.key(seed), env, 1).prior
    problem_prior = jax.tree.map(lambda a: a[0], run_prior)
    agent_prior = family.agent_prior(agent, problem_prior)
    init_state = bandit.init(jax.random.key(0), agent_prior)
    if history is not None:
        width = settings.num_arms if model == "linear-bandit" else settings.num_actions
        replayed = replay(jax.random.key(0), bandit, agent_prior, history, width, checkpoints)

    checks, controls, ref_records, references, panels = [], [], [], {}, []
    histories, claims = {}, {}
    for t in checkpoints:
        log(f"  checkpoint t={t}")
        if history is not None:
            state = replayed[t]
        else:
            state = init_state if t == 0 else _state_at(res.checkpoint_states[t])
        claimed = claim64(
            bandit.posterior(state), num_samples=settings.posterior_samples, seed=settings.seed
        )
        histories[t] = _history(res, t) if history is None else _history_prefix(history, t)
        claims[t] = claimed
        ref, attempts = _reference(
            family,
            agent_prior,
            histories[t],
            parameterization=parameterization,
            nuts=nuts,
            seed=seed,
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
        "history": None if history is None else {"source": "recorded", "rounds": rounds},
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


def _record_settings(
    family, agent, s: AuditSettings, checkpoints, alpha, parameterization, nuts: NUTSSettings
):
    """The ``settings`` of audit.json: the problem, the audit's options and the NUTS run."""
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
    return out | {
        "num_chains": nuts.num_chains,
        "num_warmup": nuts.num_warmup,
        "num_samples": nuts.num_samples,
        "seed": s.seed,
        "target_accept": nuts.target_accept,
    }
