r"""How far the dTS approximation (neural links) is from the exact posterior: the dTS audit studies.

dTS with neural links (Aouali 2025, Sec. 3.2) replaces the posterior of the nonlinear
diffusion model by the linear recursions with :math:`W_\ell` dropped. This module measures
that error, which the paper does not quantify, in three ways, all with a DDPM prior
pre-trained on samples of a known "true" prior :math:`\mathcal{N}(0, I_d)`
(:func:`ppl_bandits.diffusion.ddpm.pretrain_ddpm_prior`) and true action parameters drawn from that
true prior (:func:`ppl_bandits.diffusion.environment.fixed_prior_environment` with ``truth``):

1. **against the number of rounds** (one pre-trained prior, one run, checkpoints
   ``rounds``);
2. **against the pre-training sample size** (a prior pre-trained on each of
   ``pretrain_sizes`` samples, ``quality_rounds`` rounds each);
3. **the paper's posterior-quality check** (App. G.3, shown there only as a picture): true
   prior :math:`\mathcal{N}(0, I_2)`, DDPM pre-trained on 10³ of its samples, 100 rounds;
   it is the row of study 2 with 1000 samples (run on its own when that size is absent).

Each row compares three distributions:

- **dTS**: the claimed dTS posterior, represented by independent draws of
  :func:`ppl_bandits.diffusion.posterior.sample_posterior` (see :mod:`validation.audit`);
- **NUTS**: an accepted NUTS reference of the exact NumPyro diffusion model with the same
  DDPM links (the posterior dTS approximates);
- **exact**: the closed-form Gaussian posterior of θ under the *true* prior
  :math:`\mathcal{N}(0, I_d)` (each action independent:
  :math:`\Sigma = (I + \sigma^{-2}\sum_s x_s x_s^\top)^{-1}`,
  :math:`\mu = \Sigma\,\sigma^{-2}\sum_s x_s y_s`), the posterior a perfectly pre-trained
  prior would give.

"dTS vs NUTS" uses every coordinate (ψ_1..ψ_L, θ); "vs exact" uses the θ coordinates
only. Statistics: standardized mean error (in reference sds), sd ratio, Gaussian
2-Wasserstein distance of the moment-matched Gaussians, and the energy distance, each
with the floor that iid sampling alone would give.

Writes ``diffusion_study.csv``, ``diffusion_study.json``, ``quality.json`` and the plots
``discrepancy_rounds.png`` and ``discrepancy_pretrain.png``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits.diffusion.ddpm import pretrain_ddpm_prior
from ppl_bandits.diffusion.environment import fixed_prior_environment
from ppl_bandits.plotting import subplots
from ppl_bandits.results import provenance, write_json
from validation.audit import run_audit
from validation.compare import energy_distance, gaussian_w2
from validation.families import AuditSettings
from validation.reference import NUTSSettings

__all__ = [
    "COLUMNS",
    "exact_gaussian_posterior",
    "run_diffusion_study",
    "sample_discrepancy",
    "write_diffusion_study",
]

#: Columns of diffusion_study.csv.
COLUMNS = (
    "study",
    "pretrain_samples",
    "rounds",
    "reference_accepted",
    "max_abs_standardized_mean_error",
    "min_sd_ratio",
    "max_sd_ratio",
    "w2",
    "w2_iid_floor",
    "energy_distance",
    "energy_distance_iid_floor",
    "dts_vs_exact_max_abs_sme",
    "dts_vs_exact_w2",
    "dts_vs_exact_energy",
    "nuts_vs_exact_max_abs_sme",
    "nuts_vs_exact_w2",
    "nuts_vs_exact_energy",
    "exact_w2_iid_floor",
    "exact_energy_iid_floor",
    "pretrain_seconds",
    "audit_seconds",
)


def exact_gaussian_posterior(
    contexts,
    actions,
    rewards,
    *,
    num_actions: int,
    dim: int,
    noise_sd: float = 1.0,
    prior_var: float = 1.0,
):
    r"""Closed-form posterior of (θ_1, ..., θ_K) under θ_a ~ N(0, prior_var I_d) iid.

    Per action :math:`\Sigma_a = (I/v + \sigma^{-2}\sum_{s: A_s = a} x_s x_s^\top)^{-1}` and
    :math:`\mu_a = \Sigma_a\sigma^{-2}\sum_{s: A_s = a} x_s y_s`; returns the mean (K d,)
    and the block-diagonal covariance (K d, K d), float64.

    >>> m, C = exact_gaussian_posterior(np.eye(2), np.array([0, 0]), np.array([1.0, 0.0]),
    ...                                 num_actions=1, dim=2)
    >>> m.round(3).tolist(), np.diag(C).round(3).tolist()
    ([0.5, 0.0], [0.5, 0.5])
    """
    X = np.asarray(contexts, np.float64).reshape(-1, dim)
    a = np.asarray(actions, np.int64).reshape(-1)
    y = np.asarray(rewards, np.float64).reshape(-1)
    if not (X.shape[0] == a.shape[0] == y.shape[0]):
        raise ValueError(
            f"contexts, actions, rewards have {X.shape[0]}, {a.shape[0]}, {y.shape[0]} rows; "
            "expected the same number"
        )
    mean = np.zeros(num_actions * dim)
    cov = np.zeros((num_actions * dim, num_actions * dim))
    for k in range(num_actions):
        sel = a == k
        prec = np.eye(dim) / prior_var + X[sel].T @ X[sel] / noise_sd**2
        C = np.linalg.inv(prec)
        C = 0.5 * (C + C.T)
        blk = slice(k * dim, (k + 1) * dim)
        cov[blk, blk] = C
        mean[blk] = C @ (X[sel].T @ y[sel]) / noise_sd**2
    return mean, cov


def sample_discrepancy(samples, mean, cov, *, seed: int = 0, max_points: int = 2000) -> dict:
    """Discrepancy of independent ``samples`` (n, p) from a Gaussian N(mean, cov).

    Standardized mean error (sample mean − mean)/sd, sd ratio sample sd / sd, W2 between the
    moment-matched Gaussian and N(mean, cov), energy distance against as many iid draws of
    N(mean, cov) (at most ``max_points``), and the floors of the two distances for iid draws
    of N(mean, cov) of the same size.
    """
    x = np.asarray(samples, np.float64)
    mu = np.asarray(mean, np.float64)
    S = np.asarray(cov, np.float64)
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(S)
    sd = np.sqrt(np.diag(S))
    m = min(max_points, x.shape[0])
    idx = np.round(np.linspace(0, x.shape[0] - 1, m)).astype(int)
    ref = mu + rng.standard_normal((m, mu.shape[0])) @ chol.T
    ref2 = mu + rng.standard_normal((x.shape[0], mu.shape[0])) @ chol.T
    ref3 = mu + rng.standard_normal((m, mu.shape[0])) @ chol.T
    sme = (x.mean(0) - mu) / sd
    return {
        "standardized_mean_error": sme.tolist(),
        "max_abs_standardized_mean_error": float(np.max(np.abs(sme))),
        "sd_ratio": (x.std(0, ddof=1) / sd).tolist(),
        "w2": gaussian_w2(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), mu, S),
        "energy_distance": energy_distance(x[idx], ref),
        "w2_iid_floor": gaussian_w2(ref2.mean(0), np.atleast_2d(np.cov(ref2, rowvar=False)), mu, S),
        "energy_distance_iid_floor": energy_distance(ref3, ref),
        "num_samples": int(x.shape[0]),
    }


def _theta_columns(labels: Sequence[str]) -> np.ndarray:
    return np.array([i for i, lab in enumerate(labels) if lab.startswith("theta")])


def _row(
    study: str,
    n: int,
    t: int,
    outcome,
    prior_info: dict,
    audit_seconds: float,
    num_actions: int,
    dim: int,
    noise_sd: float,
    seed: int,
) -> dict:
    rec = outcome.record
    check = next(c for c in rec["checks"] if c["checkpoint"] == t)
    s = check["statistics"]
    row = {
        "study": study,
        "pretrain_samples": n,
        "rounds": t,
        "pretrain_seconds": prior_info.get("pretrain_seconds"),
        "audit_seconds": audit_seconds,
    }
    row["reference_accepted"] = "w2" in s
    claim = outcome.claims[t]
    panel = (
        next(p for p in outcome.panels if p["checkpoint"] == t)
        if row["reference_accepted"]
        else None
    )
    labels = panel["labels"] if panel is not None else None
    mean, cov = exact_gaussian_posterior(
        *outcome.histories[t], num_actions=num_actions, dim=dim, noise_sd=noise_sd
    )
    # the claim's coordinates are (ψ_1..ψ_L, θ_1..θ_K): θ is the last K d
    dts_theta = claim.samples[:, -num_actions * dim :]
    vs = sample_discrepancy(dts_theta, mean, cov, seed=seed)
    row.update(
        dts_vs_exact_max_abs_sme=vs["max_abs_standardized_mean_error"],
        dts_vs_exact_w2=vs["w2"],
        dts_vs_exact_energy=vs["energy_distance"],
        exact_w2_iid_floor=vs["w2_iid_floor"],
        exact_energy_iid_floor=vs["energy_distance_iid_floor"],
    )
    detail = {"dts_vs_exact": vs}
    if panel is not None:
        sme = np.abs(np.asarray(s["standardized_mean_error"], float))
        ratio = np.asarray(s["sd_ratio"], float)
        row.update(
            max_abs_standardized_mean_error=float(sme.max()),
            min_sd_ratio=float(ratio.min()),
            max_sd_ratio=float(ratio.max()),
            w2=float(s["w2"]),
            w2_iid_floor=float(s["w2_iid_floor"]),
            energy_distance=float(s["energy_distance"]),
            energy_distance_iid_floor=float(s["energy_distance_iid_floor"]),
        )
        cols = _theta_columns(labels)
        nuts_theta = panel["draws"].reshape(-1, len(labels))[:, cols]
        nv = sample_discrepancy(nuts_theta, mean, cov, seed=seed + 1)
        row.update(
            nuts_vs_exact_max_abs_sme=nv["max_abs_standardized_mean_error"],
            nuts_vs_exact_w2=nv["w2"],
            nuts_vs_exact_energy=nv["energy_distance"],
        )
        detail["nuts_vs_exact"] = nv
        # dTS against NUTS on the θ coordinates alone (the ones the bandit acts on)
        detail["dts_vs_nuts_theta"] = {
            "standardized_mean_error": np.asarray(s["standardized_mean_error"])[cols].tolist(),
            "sd_ratio": ratio[cols].tolist(),
        }
        detail["dts_vs_nuts"] = {
            k: s[k]
            for k in (
                "max_abs_standardized_mean_error",
                "w2",
                "w2_iid_floor",
                "energy_distance",
                "energy_distance_iid_floor",
            )
        }
    row["detail"] = detail
    return row


def run_diffusion_study(
    *,
    rounds: Sequence[int] = (0, 10, 100, 1000),
    pretrain_sizes: Sequence[int] = (10, 100, 1000, 10000),
    pretrain_samples: int = 1000,
    quality_rounds: int = 100,
    num_actions: int = 1,
    dim: int = 2,
    ddpm_steps: int = 10,
    pretrain_steps: int = 3000,
    posterior_samples: int = 20000,
    seed: int = 0,
    nuts: NUTSSettings | None = None,
    prior_dir=None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Run the three dTS audit studies; returns ``{"rows": [...], "quality": {...}}``.

    ``rounds`` are the checkpoints of study 1 (prior pre-trained on ``pretrain_samples``
    samples, or loaded from ``prior_dir``); ``pretrain_sizes`` the sample sizes of study 2
    (``quality_rounds`` rounds each; empty to skip, and skipped with ``prior_dir``);
    the quality check is study 2's row with 1000 samples (K = ``num_actions``, d = ``dim``:
    the paper's check is K = 1, d = 2, 100 rounds). ``nuts`` sets the NUTS references of
    every audit (``None`` for the defaults).
    """
    log = log or (lambda _msg: None)
    rounds = sorted({int(r) for r in rounds})
    sizes = sorted({int(n) for n in pretrain_sizes})
    if not rounds or rounds[0] < 0:
        raise ValueError(f"rounds are {rounds}; expected round numbers >= 0")
    if sizes and sizes[0] < 1:
        raise ValueError(f"pretrain_sizes are {sizes}; expected sample sizes >= 1")
    if int(quality_rounds) != quality_rounds or quality_rounds < 1:
        raise ValueError(f"quality_rounds is {quality_rounds!r}; expected an integer >= 1")
    noise_sd = 1.0

    def truth(key):
        return jax.random.normal(key, (num_actions, dim), jnp.result_type(float))

    def audit(n: int, checkpoints, study: str):
        prior, info = pretrain_ddpm_prior(
            dim=dim,
            num_actions=num_actions,
            num_samples=n,
            num_steps=ddpm_steps,
            train_steps=pretrain_steps,
            prior_dir=prior_dir,
            seed=seed,
        )
        log(
            f"{study}: DDPM prior {'loaded' if prior_dir else f'pre-trained on {n} samples'} "
            f"in {info['pretrain_seconds']:.1f} s"
        )
        env = fixed_prior_environment(prior, truth=truth, name=f"ddpm-{n}-true-N(0,I)")
        t0 = time.perf_counter()
        problem = AuditSettings(
            num_actions=num_actions,
            num_effects=ddpm_steps,
            dim=dim,
            rounds=max(max(checkpoints), 1),
            seed=seed,
            prior="ddpm",
            posterior_samples=posterior_samples,
        )
        outcome = run_audit(
            "diffusion-neural",
            "dTS",
            problem=problem,
            nuts=nuts,
            checkpoints=checkpoints,
            negative_controls=False,
            environment=env,
            log=log,
        )
        seconds = time.perf_counter() - t0
        return [
            _row(study, n, t, outcome, info, seconds, num_actions, dim, noise_sd, seed)
            for t in checkpoints
        ], info

    rows, infos = [], {}
    r1, infos["rounds"] = audit(pretrain_samples, rounds, "rounds")
    rows += r1
    if prior_dir is None:
        for n in sizes:
            r2, infos[f"pretrain-{n}"] = audit(n, [int(quality_rounds)], "pretrain")
            rows += r2
    quality = next(
        (
            r
            for r in rows
            if r["study"] == "pretrain"
            and r["pretrain_samples"] == 1000
            and r["rounds"] == quality_rounds
        ),
        None,
    )
    if quality is None:
        quality = next((r for r in rows if r["rounds"] == quality_rounds), None)
    if quality is None:
        qrows, _ = audit(pretrain_samples, [int(quality_rounds)], "quality")
        quality = qrows[0]
    return {"rows": rows, "quality": quality, "priors": infos}


def _plot(rows, key_x: str, study: str, path: Path, xlabel: str) -> None:

    sel = [r for r in rows if r["study"] == study]
    if not sel:
        return
    series = (
        (
            "dTS vs NUTS (exact model, all coordinates)",
            "max_abs_standardized_mean_error",
            "w2",
            "energy_distance",
            "w2_iid_floor",
            "energy_distance_iid_floor",
        ),
        (
            "dTS vs exact Gaussian (true prior, θ)",
            "dts_vs_exact_max_abs_sme",
            "dts_vs_exact_w2",
            "dts_vs_exact_energy",
            "exact_w2_iid_floor",
            "exact_energy_iid_floor",
        ),
        (
            "NUTS vs exact Gaussian (true prior, θ)",
            "nuts_vs_exact_max_abs_sme",
            "nuts_vs_exact_w2",
            "nuts_vs_exact_energy",
            None,
            None,
        ),
    )
    fig, axes = subplots(1, 3, figsize=(13, 3.8))
    titles = ("max |standardized mean error|", "Gaussian 2-Wasserstein", "energy distance")
    for label, k_sme, k_w2, k_e, f_w2, f_e in series:
        for ax, key, floor in zip(axes, (k_sme, k_w2, k_e), (None, f_w2, f_e), strict=True):
            pts = [(r[key_x], r.get(key)) for r in sel if r.get(key) is not None]
            if not pts:
                continue
            x, y = zip(*pts, strict=True)
            x = np.asarray(x, float) + (1 if key_x == "rounds" else 0)
            (line,) = ax.plot(x, y, marker="o", label=label)
            if floor is not None:
                fl = [r.get(floor) for r in sel if r.get(key) is not None]
                ax.plot(x, fl, ls=":", color=line.get_color(), lw=1)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "dTS (neural links, DDPM prior) vs NUTS and vs the exact posterior; dotted: iid floor",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_diffusion_study(
    result: dict, out_dir, *, command: str, seed: int, settings: dict, wall_seconds: float
) -> Path:
    """Write diffusion_study.csv/.json, quality.json and the two plots under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    with open(out / "diffusion_study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    meta = {
        "settings": settings,
        **provenance(seed=seed, wall_seconds=wall_seconds, command=command),
    }
    write_json(out / "diffusion_study.json", {"rows": rows, "priors": result["priors"], **meta})
    write_json(out / "quality.json", {"quality": result["quality"], **meta})
    _plot(rows, "rounds", "rounds", out / "discrepancy_rounds.png", "rounds + 1")
    _plot(
        rows,
        "pretrain_samples",
        "pretrain",
        out / "discrepancy_pretrain.png",
        "pre-training samples",
    )
    return out / "diffusion_study.csv"
