r"""The posterior audit: is the posterior an agent samples from the posterior of its model?

An audit runs an agent on a problem drawn from a NumPyro model, keeps the agent's state at
each checkpoint t (after t rounds), and compares the Gaussian the agent samples from with a
NUTS reference of the *exact* NumPyro model conditioned on the same t rounds:

- the **claimed posterior** is read from the agent's own state (the fast path itself, not
  a recomputation): for the meTS agents Ψ ~ N(Λ̄⁻¹η, Λ̄⁻¹) (or its factored version) and
  θ_i | Ψ ~ N(gain_i Ψ + shift_i, R_i R_iᵀ), which together are one Gaussian over
  (Ψ, θ_1, ..., θ_K);
- the **reference** is NUTS on :func:`models.mixed_effect.mixed_effect_model`, accepted only
  when every gate of :mod:`validation.diagnostics` holds (centred parameterization first,
  then the non-centred one; both attempts are recorded);
- an **exact** posterior (meTS-Lin or HierTS with Gaussian rewards) gets a verdict from
  :func:`validation.compare.exact_comparison` at family-wise error ``alpha``; an
  approximate one (Laplace, factored, or a likelihood that differs from the model's)
  gets the discrepancy report of :func:`validation.compare.discrepancy` and verdict
  ``"report"``;
- every audit also runs the **negative controls** of :data:`NEGATIVE_CONTROLS` through
  the exact comparison against the same reference and records whether each was rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from models.mixed_effect import mixed_effect_model
from ppl_bandits.agents import MeTSState, hierts_prior, make_agent, resolve_agent_name
from ppl_bandits.environments import mixed_effect_environment
from ppl_bandits.runner import simulate
from ppl_bandits.spec import MixedEffectPrior
from validation.compare import discrepancy, exact_comparison, stack_draws, stack_labels
from validation.reference import Reference, build_reference, save_reference

__all__ = [
    "AUDIT_AGENTS",
    "AUDIT_MODELS",
    "NEGATIVE_CONTROLS",
    "AuditOutcome",
    "claimed_posterior",
    "negative_control",
    "run_audit",
]

#: Models the audit command knows, by their kebab-case names.
AUDIT_MODELS = {
    "mixed-effect-linear": ("linear", "gaussian"),
    "mixed-effect-logistic": ("logistic", "logistic"),
}

#: Agents whose posterior the audit can read, with (likelihood they assume, factored variant).
AUDIT_AGENTS = {
    "meTS-Lin": ("gaussian", None),
    "meTS-Lin-Fa": ("gaussian", "mean-field"),
    "meTS-GLM": ("logistic", None),
    "meTS-GLM-Fa": ("logistic", "mean-field"),
    "HierTS": ("gaussian", None),
}

#: Deliberately wrong posteriors every audit must reject (validation.md, negative controls).
NEGATIVE_CONTROLS = (
    "covariance-x1.3",
    "mean-shift-0.5sd",
    "coupling-dropped",
    "published-factored-mean",
)

VAR_NAMES = ("psi", "theta")


class Gaussian64(NamedTuple):
    mean: np.ndarray
    cov: np.ndarray


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


class AuditOutcome(NamedTuple):
    """Everything an audit produced (``record`` is what audit.json holds)."""

    record: dict
    references: dict
    panels: list


def _resolve(name: str, table: dict, what: str) -> str:
    lookup = {k.lower(): k for k in table}
    key = str(name).lower()
    if key not in lookup:
        raise ValueError(f"{what} is {name!r}; expected one of {', '.join(table)}")
    return lookup[key]


def _history(res, t: int):
    return (
        np.asarray(res.contexts[0, :t]),
        np.asarray(res.actions[0, :t]).astype(np.int32),
        np.asarray(res.rewards[0, :t]),
    )


def _reference(
    prior: MixedEffectPrior,
    history,
    *,
    likelihood: str,
    parameterization: str,
    nuts: dict,
    log: Callable[[str], None],
) -> tuple[Reference, list[dict]]:
    """NUTS on the exact model; try the parameterizations in turn until one is accepted."""
    order = ("centered", "noncentered") if parameterization == "auto" else (parameterization,)
    attempts = []
    ref = None
    for par in order:
        t0 = time.perf_counter()
        ref = build_reference(
            mixed_effect_model,
            prior,
            *history,
            model_name=f"mixed-effect/{likelihood}/{par}",
            var_names=list(VAR_NAMES),
            likelihood=likelihood,
            parameterization=par,
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


def _noise_floor(claimed: Gaussian64, n: int, seed: int) -> dict:
    """W2 and energy distance of ``n`` iid draws from the claimed Gaussian itself.

    Both statistics are biased upwards by sampling noise (W2 through the fitted
    covariance); a discrepancy near this floor is indistinguishable from none.
    """
    from validation.compare import energy_distance, gaussian_w2

    rng = np.random.default_rng(seed + 1)
    chol = np.linalg.cholesky(claimed.cov + 1e-300 * np.eye(claimed.cov.shape[0]))
    x = claimed.mean + rng.standard_normal((n, claimed.mean.shape[0])) @ chol.T
    y = claimed.mean + rng.standard_normal((min(n, 2000), claimed.mean.shape[0])) @ chol.T
    w2 = gaussian_w2(claimed.mean, claimed.cov, x.mean(0), np.cov(x, rowvar=False))
    return {
        "w2_iid_floor": float(w2),
        "energy_distance_iid_floor": float(energy_distance(x[: y.shape[0]], y)),
    }


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
    out_dir=None,
    log: Callable[[str], None] | None = print,
) -> AuditOutcome:
    """Audit ``agent``'s posterior against NUTS on the exact ``model`` at each checkpoint.

    Parameters
    ----------
    model : {"mixed-effect-linear", "mixed-effect-logistic"}
    agent : one of :data:`AUDIT_AGENTS` (case-insensitive)
    num_actions, num_effects, dim : K, L, d of the problem (the paper's Fig. 2 prior).
    rounds : rounds the agent plays; checkpoints must lie in [0, rounds].
    checkpoints : rounds t at which the posterior is audited (t = 0 audits the prior).
    seed : the problem, the agent's randomness and the NUTS chains derive from it.
    alpha : family-wise error rate of each exact comparison (Bonferroni inside).
    parameterization : "auto" (centred, then non-centred), "centered" or "noncentered".
    num_chains, num_warmup, num_samples, target_accept : NUTS settings.
    negative_controls : also run the deliberately wrong posteriors.
    factored_variant : mean of the "-Fa" agents, "mean-field" or "published".
    out_dir : if given, each accepted reference is stored under out_dir/reference_t<t>/.
    log : where progress lines go (None for silence).

    Returns
    -------
    AuditOutcome
        ``record`` (JSON-ready: model, agent, settings, reference, checks,
        negative_controls, verdict), the references and the report panels.
    """
    log = log or (lambda _msg: None)
    model = _resolve(model, AUDIT_MODELS, "model")
    try:
        agent = resolve_agent_name(agent)
    except ValueError:
        pass
    agent = _resolve(agent, AUDIT_AGENTS, "agent")
    reward, likelihood = AUDIT_MODELS[model]
    agent_likelihood, factored = AUDIT_AGENTS[agent]
    if factored is not None:
        if factored_variant not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {factored_variant!r}; expected mean-field or published"
            )
        factored = factored_variant
    for name, value in (
        ("num_actions", num_actions),
        ("num_effects", num_effects),
        ("dim", dim),
        ("rounds", rounds),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    checkpoints = sorted({int(c) for c in checkpoints})
    if not checkpoints or checkpoints[0] < 0 or checkpoints[-1] > rounds:
        raise ValueError(f"checkpoints are {checkpoints}; expected rounds in [0, {rounds}]")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is {alpha}; expected a number in (0, 1)")
    if parameterization not in ("auto", "centered", "noncentered"):
        raise ValueError(
            f"parameterization is {parameterization!r}; expected auto, centered or noncentered"
        )
    exact = agent in ("meTS-Lin", "HierTS") and likelihood == "gaussian"
    started = time.perf_counter()

    env = mixed_effect_environment(num_actions, num_effects, dim, reward=reward)
    bandit = make_agent(agent, horizon=rounds, factored_variant=factored_variant)
    log(
        f"audit: {agent} on {model} (K={num_actions}, L={num_effects}, d={dim}), "
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
    agent_prior = hierts_prior(problem_prior) if agent == "HierTS" else problem_prior
    init_state = bandit.init(jax.random.key(0), agent_prior)
    L_agent = agent_prior.mixing.shape[1]
    nuts = {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "seed": seed,
        "target_accept": target_accept,
    }

    checks, controls, ref_records, references, panels = [], [], [], {}, []
    for t in checkpoints:
        log(f"  checkpoint t={t}")
        state = (
            jax.tree.map(lambda a: np.asarray(a), init_state)
            if t == 0
            else _state_at(res.checkpoint_states[t])
        )
        claimed = claimed_posterior(state, factored)
        ref, attempts = _reference(
            agent_prior,
            _history(res, t),
            likelihood=likelihood,
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
        draws = stack_draws(ref.idata, list(VAR_NAMES))
        labels = stack_labels(ref.idata, list(VAR_NAMES))
        comparison = exact_comparison(draws, claimed.mean, claimed.cov, alpha=alpha, labels=labels)
        disc = discrepancy(draws, claimed.mean, claimed.cov, seed=seed, labels=labels)
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
            for name in NEGATIVE_CONTROLS:
                wrong = negative_control(name, claimed, state, num_effects=L_agent, dim=dim)
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
        "settings": {
            "num_actions": num_actions,
            "num_effects": num_effects,
            "dim": dim,
            "rounds": rounds,
            "checkpoints": checkpoints,
            "alpha": alpha,
            "parameterization": parameterization,
            "likelihood": likelihood,
            "agent_likelihood": agent_likelihood,
            "factored": factored,
            **nuts,
        },
        "reference": {
            "accepted": all(r["accepted"] for r in ref_records),
            "checkpoints": ref_records,
        },
        "checks": checks,
        "negative_controls": controls,
        "wall_seconds": time.perf_counter() - started,
        "seed": seed,
    }
    return AuditOutcome(record, references, panels)
