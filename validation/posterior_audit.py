r"""Audit any claimed posterior of any NumPyro model against gated NUTS ground truth.

:func:`audit_posterior` is the public entry point: give it a NumPyro model, the data it is
conditioned on and the posterior you claim for its latent sites, either as a Gaussian
(mean, covariance) or as independent draws, and it

1. checks every input before any sampling;
2. runs NUTS on the model and accepts the draws as ground truth only if they pass the
   gates of :mod:`validation.diagnostics` (:func:`validation.reference.build_reference`);
   a refused reference makes the audit *inconclusive*;
3. tests the claim against the draws at a stated level :math:`\alpha`:

   - a Gaussian claim with :func:`validation.compare.exact_comparison` (z-tests of every
     mean, sd and cross-covariance and of the Mahalanobis mean, Bonferroni-corrected);
   - a claim given by draws with the energy two-sample test and its permutation null
     (:func:`validation.twosample.energy_test`) on NUTS draws thinned to about their
     effective sample size (:func:`validation.twosample.thin_to_ess`), and reports the
     moment discrepancy (:func:`validation.compare.discrepancy`) of the draws' mean and
     covariance;

4. runs the same test on negative controls, deliberately wrong versions of the claim
   (:mod:`validation.controls`), each of which must be rejected: an audit that cannot
   reject a wrong claim cannot certify a right one.

The verdict is ``"pass"`` only when every check passes and every applicable negative
control is rejected, ``"inconclusive"`` when the NUTS reference was refused, and
``"fail"`` otherwise. ``audit.json`` and ``report.html`` have the layout of
``ppl-bandits audit`` with one checkpoint, numbered 0.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro

from ppl_bandits.core.claims import GaussianClaim, SampledClaim, sites_dim
from ppl_bandits.results import prepare_out_dir, provenance, strict_json, write_json
from validation.compare import discrepancy, exact_comparison, stack_draws, stack_labels
from validation.controls import ControlSet, identical_claims
from validation.diagnostics import check_gates
from validation.reference import NUTSSettings, Reference, build_reference, data_hash
from validation.report import CheckpointPanel, write_audit_report
from validation.twosample import MAX_POINTS, energy_test, min_bulk_ess, thin_to_ess

__all__ = [
    "AUDIT_FILE",
    "MIN_CLAIM_DRAWS",
    "REPORT_FILE",
    "AuditResult",
    "audit_posterior",
    "latent_sites",
]

#: File name of the JSON audit record.
AUDIT_FILE = "audit.json"
#: File name of the HTML report.
REPORT_FILE = "report.html"
#: Fewest draws a claim given as draws must have.
MIN_CLAIM_DRAWS: int = 100
#: Permutations of the energy test.
NUM_PERMUTATIONS: int = 499
#: Draws taken from a SampledClaim to check its shapes before NUTS runs.
_PILOT_DRAWS = 16
#: Keyword arguments of build_reference, and the NUTS settings it refuses as model keyword
#: arguments, that a model keyword argument must not shadow.
_RESERVED = frozenset(
    name
    for name, prm in inspect.signature(build_reference).parameters.items()
    if prm.kind not in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD)
) | frozenset(NUTSSettings._fields)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit_posterior`."""

    verdict: str
    """``"pass"``, ``"fail"`` or ``"inconclusive"`` (the NUTS reference was refused)."""
    checks: list[dict]
    """The checks, each ``{name, checkpoint, verdict, statistics}`` with verdict
    ``"pass"``, ``"fail"`` or ``"report"`` (a statistic without a verdict)."""
    controls: list[dict]
    """The negative controls, each ``{name, checkpoint, rejected, detail, ...}``;
    ``rejected`` is None when the control is not applicable (or was not run)."""
    reference: Reference
    """The NUTS reference (draws, gate report, provenance)."""
    diagnostics: dict
    """The reference's gate report, :meth:`validation.diagnostics.GateReport.to_dict`."""
    record: dict
    """The JSON-ready audit record written to ``audit.json``."""
    panel: CheckpointPanel | None = None
    """What ``report.html`` shows about the comparison; None when the reference was refused."""

    @property
    def passed(self) -> bool:
        """Whether the verdict is ``"pass"``."""
        return self.verdict == "pass"

    def write(self, directory) -> Path:
        """Write ``directory/audit.json`` and ``directory/report.html`` (with figures).

        The JSON is strict: non-finite numbers are written as ``null``. Returns the
        directory, created if needed.
        """
        out = prepare_out_dir(directory, "directory", files=(AUDIT_FILE, REPORT_FILE))
        write_json(out / AUDIT_FILE, self.record)
        write_audit_report(self.record, [self.panel] if self.panel is not None else [], out)
        return out

    def __str__(self) -> str:
        lines = [f"audit of {self.record.get('model')}: {self.verdict.upper()}"]
        for c in self.checks:
            lines.append(f"  check {c['name']}: {c['verdict']}")
        for c in self.controls:
            state = {True: "rejected", False: "NOT rejected", None: "n/a"}[c["rejected"]]
            lines.append(f"  control {c['name']}: {state} ({c.get('detail', '')})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def latent_sites(model: Callable[..., Any], model_kwargs: Mapping | None = None) -> dict:
    """The latent sample sites of ``model(**model_kwargs)``, in trace order, with shapes.

    A site is latent when its type is ``"sample"`` and it is not observed; its shape is
    that of the value drawn by ``numpyro.handlers.seed(model, 0)``.

    Examples
    --------
    >>> import numpyro
    >>> import numpyro.distributions as dist
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with numpyro.plate("g", 2):
    ...         b = numpyro.sample("b", dist.Normal(mu, 1.0))
    ...     numpyro.sample("y", dist.Normal(b.sum(), 1.0), obs=y)
    >>> latent_sites(model, {"y": 0.5})
    {'mu': (), 'b': (2,)}
    """
    if not callable(model):
        raise ValueError(f"model is {type(model).__name__}; expected a NumPyro model function")
    kwargs = dict(model_kwargs or {})
    try:
        trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(**kwargs)
    except Exception as err:
        raise ValueError(
            f"model(**model_kwargs) raised {type(err).__name__}: {err}; expected model_kwargs "
            f"to be the model's keyword arguments (given: {sorted(kwargs)})"
        ) from err
    return {
        name: tuple(int(s) for s in np.shape(site["value"]))
        for name, site in trace.items()
        if site["type"] == "sample" and not site.get("is_observed", False)
    }


def _describe_sites(sites) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in sites) or "none"


def _resolve_sites(sites, claimed, latent: dict) -> tuple[tuple[str, tuple[int, ...]], ...]:
    available = list(latent)
    if sites is not None:
        names = [sites] if isinstance(sites, str) else sites
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"sites is {sites!r}; expected a list of latent site names among {available}"
            )
        names = list(names)
        unknown = [n for n in names if n not in latent]
        if not names or unknown:
            raise ValueError(
                f"sites is {sites!r}"
                + (f", and {unknown} are not latent sample sites of the model" if unknown else "")
                + f"; expected a non-empty list of names among {available}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"sites is {sites!r}, with repeated names; expected distinct names")
    elif isinstance(claimed, GaussianClaim | SampledClaim):
        names = [n for n, _ in claimed.sites]
        unknown = [n for n in names if n not in latent]
        if unknown:
            raise ValueError(
                f"claimed has the sites {_describe_sites(claimed.sites)}, and {unknown} are not "
                f"latent sample sites of the model; expected names among {available}"
            )
    else:
        names = available
    if not names:
        raise ValueError("model has no latent sample sites; expected at least one to audit")
    return tuple((n, latent[n]) for n in names)


def _gaussian(claimed_mean, claimed_cov, p: int, where: str, sites) -> tuple:
    expected = f"p = {p}, the flattened length of the sites {_describe_sites(sites)}"
    try:
        mean = np.asarray(claimed_mean, dtype=np.float64)
        cov = np.asarray(claimed_cov, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} mean and cov are not numeric arrays ({err})") from None
    if mean.shape != (p,):
        raise ValueError(f"{where} mean has shape {mean.shape}; expected ({p},) for {expected}")
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{where} cov has shape {cov.shape}; expected a square ({p}, {p}) matrix")
    if cov.shape != (p, p):
        raise ValueError(f"{where} cov has shape {cov.shape}; expected ({p}, {p}) for {expected}")
    for name, a in (("mean", mean), ("cov", cov)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where} {name} has non-finite entries (NaN or inf); expected finite")
    scale = float(np.max(np.abs(cov)))
    asym = float(np.max(np.abs(cov - cov.T)))
    if asym > 1e-6 * scale:
        raise ValueError(
            f"{where} cov is not symmetric (largest |cov - cov.T| = {asym:.3g}); expected a "
            "symmetric positive-definite matrix"
        )
    cov = 0.5 * (cov + cov.T)
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        low = float(np.linalg.eigvalsh(cov).min())
        raise ValueError(
            f"{where} cov is not positive definite (smallest eigenvalue {low:.3g}); expected a "
            "symmetric positive-definite matrix"
        ) from None
    return mean, cov


def _fixed_rows(rows, key, num):
    """Draw function of a claim given as draws: ``num`` evenly spaced rows (key unused)."""
    del key
    idx = np.round(np.linspace(0, rows.shape[0] - 1, num)).astype(int)
    return rows[idx]


def _draws_dict(claimed: Mapping, sites) -> np.ndarray:
    names = [n for n, _ in sites]
    missing = [n for n in names if n not in claimed]
    extra = [str(k) for k in claimed if k not in names]
    if missing or extra:
        raise ValueError(
            f"claimed has the sites {sorted(map(str, claimed))}"
            + (f", missing {missing}" if missing else "")
            + (f", with {extra} that are not audited" if extra else "")
            + f"; expected draws of exactly the sites {names}"
        )
    parts, n = [], None
    for name, shape in sites:
        try:
            a = np.asarray(claimed[name], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"claimed[{name!r}] is not a numeric array ({err})") from None
        if a.ndim != 1 + len(shape) or a.shape[1:] != tuple(shape):
            raise ValueError(
                f"claimed[{name!r}] has shape {a.shape}; expected (n, *{tuple(shape)}), a leading "
                f"draw axis followed by the site's shape {tuple(shape)}"
            )
        if n is not None and a.shape[0] != n:
            raise ValueError(
                f"claimed[{name!r}] has {a.shape[0]} draws but claimed[{names[0]!r}] has {n}; "
                "expected the same number of draws for every site"
            )
        n = a.shape[0]
        if not np.all(np.isfinite(a)):
            raise ValueError(f"claimed[{name!r}] has non-finite draws (NaN or inf)")
        parts.append(a.reshape(n, -1))
    rows = np.concatenate(parts, axis=1)
    _check_rows("claimed", rows, sites)
    return rows


def _check_rows(where: str, rows: np.ndarray, sites) -> None:
    n, p = rows.shape
    if n < max(MIN_CLAIM_DRAWS, p + 2):
        raise ValueError(
            f"{where} has {n} draws; expected at least {max(MIN_CLAIM_DRAWS, p + 2)} "
            f"(MIN_CLAIM_DRAWS = {MIN_CLAIM_DRAWS}, and more than p + 1 = {p + 1})"
        )
    sd = rows.std(axis=0)
    if np.any(sd <= 0):
        j = int(np.flatnonzero(sd <= 0)[0])
        raise ValueError(
            f"{where} has a constant coordinate ({j} of the sites {_describe_sites(sites)}); "
            "expected draws of a distribution with a density"
        )


def _sampled_draws(claim: SampledClaim, key, num: int, where: str) -> np.ndarray:
    p = claim.dim
    try:
        x = np.asarray(claim.sample(key, num), dtype=np.float64)
    except Exception as err:
        raise ValueError(f"{where}.sample(key, {num}) raised {type(err).__name__}: {err}") from err
    if x.shape != (num, p):
        raise ValueError(
            f"{where}.sample(key, {num}) has shape {x.shape}; expected ({num}, {p}) draws of the "
            f"sites {_describe_sites(claim.sites)}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where}.sample(key, {num}) has non-finite draws (NaN or inf)")
    return x


def _parse_claim(claimed, sites):
    """(kind, claim object, claimed rows or None): a GaussianClaim or a SampledClaim."""
    p = sites_dim(sites)
    if isinstance(claimed, GaussianClaim | SampledClaim):
        if tuple(claimed.sites) != tuple(sites):
            raise ValueError(
                f"claimed has the sites {_describe_sites(claimed.sites)}; expected "
                f"{_describe_sites(sites)} (the audited sites with the model's shapes)"
            )
    if isinstance(claimed, GaussianClaim):
        mean, cov = _gaussian(claimed.mean, claimed.cov, p, "claimed", sites)
        return "gaussian", GaussianClaim(mean, cov, sites), None
    if isinstance(claimed, SampledClaim):
        return "draws", claimed, None
    if isinstance(claimed, Mapping):
        rows = _draws_dict(claimed, sites)
        return "draws", SampledClaim(_fixed_rows, rows, sites), rows
    if isinstance(claimed, tuple | list) and len(claimed) == 2:
        mean, cov = _gaussian(claimed[0], claimed[1], p, "claimed", sites)
        return "gaussian", GaussianClaim(mean, cov, sites), None
    raise ValueError(
        f"claimed is {type(claimed).__name__}; expected a pair (mean, cov) of arrays of shapes "
        f"({p},) and ({p}, {p}), a dict of draws {{site: (n, *shape)}}, a GaussianClaim or a "
        "SampledClaim"
    )


def _model_name(model) -> str:
    name = getattr(model, "__qualname__", None) or type(model).__name__
    module = getattr(model, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else str(name)


def _check_reference(reference, names, model_kwargs) -> Reference:
    if not isinstance(reference, Reference):
        raise ValueError(
            f"reference is {type(reference).__name__}; expected a validation.reference.Reference"
        )
    posterior = getattr(reference.idata, "posterior", None)
    available = [] if posterior is None else [str(v) for v in posterior.data_vars]
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"reference has the posterior variables {available}; expected the audited sites "
            f"{list(names)} (missing {missing})"
        )
    expected = data_hash(**model_kwargs)
    if reference.record.get("data_hash") != expected:
        raise ValueError(
            f"reference was built on data with hash {reference.record.get('data_hash')!r}; "
            f"expected {expected!r}, the hash of model_kwargs"
        )
    gate = check_gates(reference.idata, var_names=list(names))
    record = dict(reference.record)
    record.update(var_names=list(names), diagnostics=gate.to_dict(), accepted=bool(gate.accepted))
    return Reference(idata=reference.idata, gate=gate, record=record)


# --------------------------------------------------------------------------- comparisons


def _gaussian_audit(claim, ref, names, controls, alpha, seed):
    draws = stack_draws(ref.idata, list(names))
    labels = stack_labels(ref.idata, list(names))
    comparison = exact_comparison(draws, claim.mean, claim.cov, alpha=alpha, labels=labels)
    cdict = comparison.to_dict()
    checks = [
        {
            "name": "exact-comparison",
            "checkpoint": 0,
            "verdict": comparison.verdict,
            "statistics": cdict,
        }
    ]
    results = []
    for name in controls:
        wrong = controls.apply(name, claim)
        if identical_claims(claim, wrong):
            results.append(_not_applicable(name))
            continue
        mean, cov = _gaussian(wrong.mean, wrong.cov, claim.dim, f"control {name!r}", claim.sites)
        c = exact_comparison(draws, mean, cov, alpha=alpha, labels=labels)
        results.append(
            {
                "name": name,
                "checkpoint": 0,
                "rejected": c.verdict == "fail",
                "p_value": c.p_value,
                "failed_tests": len(c.failed),
                "num_tests": c.num_tests,
                "detail": f"exact comparison {c.verdict}: {len(c.failed)} of {c.num_tests} "
                f"tests failed (adjusted p = {c.p_value:.3g}, alpha = {alpha:g})",
            }
        )
    disc = discrepancy(draws, claim.mean, claim.cov, seed=seed, labels=labels)
    panel = CheckpointPanel(
        0, labels, draws, claim.mean, claim.cov, cdict, disc, ref.gate.to_dict()
    )
    return checks, results, panel, {}


def _draws_audit(claim, rows, ref, names, controls, alpha, seed):
    draws = stack_draws(ref.idata, list(names))
    labels = stack_labels(ref.idata, list(names))
    cap = MAX_POINTS if rows is None else min(MAX_POINTS, rows.shape[0])
    reference_points = thin_to_ess(draws, max_points=cap)
    m = reference_points.shape[0]
    key = jax.random.key(seed)
    claimed = _sampled_draws(claim, key, m, "claimed")
    test = energy_test(reference_points, claimed, num_permutations=NUM_PERMUTATIONS, seed=seed)
    ess = min_bulk_ess(draws)
    checks = [
        {
            "name": "energy-test",
            "checkpoint": 0,
            "verdict": "pass" if test["p_value"] > alpha else "fail",
            "statistics": {
                **test,
                "alpha": alpha,
                "min_bulk_ess": ess,
                "reference_draws": int(draws.shape[0] * draws.shape[1]),
                "claimed_draws_available": None if rows is None else int(rows.shape[0]),
            },
        }
    ]
    moments = claimed if rows is None else rows
    mean, cov = moments.mean(axis=0), np.atleast_2d(np.cov(moments, rowvar=False))
    try:
        disc = discrepancy(draws, mean, cov, seed=seed, labels=labels)
        disc["claim"] = f"mean and covariance of {moments.shape[0]} claimed draws"
    except ValueError as err:
        disc = {"reason": f"no moment discrepancy: {err}"}
    checks.append(
        {"name": "moment-discrepancy", "checkpoint": 0, "verdict": "report", "statistics": disc}
    )
    results = []
    for name in controls:
        wrong = controls.apply(name, claim)
        if identical_claims(claim, wrong):
            results.append(_not_applicable(name))
            continue
        x = _sampled_draws(wrong, key, m, f"control {name!r}")
        t = energy_test(reference_points, x, num_permutations=NUM_PERMUTATIONS, seed=seed)
        results.append(
            {
                "name": name,
                "checkpoint": 0,
                "rejected": t["p_value"] <= alpha,
                "p_value": t["p_value"],
                "statistic": t["statistic"],
                "detail": f"energy test p = {t['p_value']:.3g} (alpha = {alpha:g}, {m} draws each)",
            }
        )
    panel_disc = disc if "standardized_mean_error" in disc else None
    panel = CheckpointPanel(0, labels, draws, mean, cov, None, panel_disc, ref.gate.to_dict())
    return checks, results, panel, {"energy_points": m}


def _not_applicable(name: str) -> dict:
    return {
        "name": name,
        "checkpoint": 0,
        "rejected": None,
        "detail": "not applicable: identical to the claim here",
    }


# --------------------------------------------------------------------------- main


def audit_posterior(
    model: Callable[..., Any],
    claimed,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    sites: Sequence[str] | str | None = None,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    alpha: float = 0.05,
    out=None,
    controls: ControlSet | None = None,
    reference: Reference | None = None,
) -> AuditResult:
    r"""Audit a claimed posterior of a NumPyro model against a gated NUTS reference.

    Parameters
    ----------
    model : callable
        A NumPyro model, run as ``model(**model_kwargs)``; its observed sites are the data.
    claimed
        The posterior claimed for the latent vector: the audited sites, each flattened in
        C order, concatenated in the order of ``sites`` (length p). One of

        - a pair ``(mean, cov)`` of arrays of shapes (p,) and (p, p), ``cov`` symmetric
          positive definite: the claim is :math:`\mathcal{N}(\text{mean}, \text{cov})`;
        - a dict ``{site: draws}`` with draws of shape ``(n, *site_shape)`` for exactly the
          audited sites, n at least :data:`MIN_CLAIM_DRAWS` (and more than p + 1): the
          claim is the law of these independent draws;
        - a :class:`ppl_bandits.core.claims.GaussianClaim` or
          :class:`~ppl_bandits.core.claims.SampledClaim` whose ``sites`` are the audited
          sites with the model's shapes (they set the default ``sites``).
    model_kwargs : dict, optional
        Keyword arguments of the model (its data); must not use the names of
        :func:`validation.reference.build_reference`'s own arguments or of the fields of
        :class:`validation.reference.NUTSSettings`.
    sites : list of str, optional
        Latent sample sites to audit, in the order of the flattened vector. Default: those
        of a Gaussian or sampled claim object, else every latent sample site of the model
        in trace order (:func:`latent_sites`).
    seed : int
        Seed of NUTS, of the permutations and of a SampledClaim's draws.
    num_chains, num_warmup, num_samples : int
        NUTS settings, at least 1, 1 and 4 (the :class:`validation.reference.NUTSSettings`
        of the reference; its other fields keep their defaults). The reference gates need
        4 chains.
    alpha : float
        Level of the test of the claim, in (0, 1): a correct claim fails with probability
        at most ``alpha`` (given an accepted reference).
    out : str or path-like, optional
        Also write ``audit.json`` and ``report.html`` there (:meth:`AuditResult.write`);
        checked to be a writable directory before anything is computed.
    controls : ControlSet, optional
        The negative controls; default :meth:`ControlSet.generic`.
    reference : Reference, optional
        A NUTS reference of the same model and data to reuse instead of running NUTS
        (its gates are re-checked on the audited sites; the NUTS settings above are then
        those recorded in it).

    Returns
    -------
    AuditResult
        ``verdict`` is ``"pass"`` when every check passes and every applicable negative
        control is rejected, ``"inconclusive"`` when the reference is refused by its gates
        (the record then lists the failed gates and advice, and nothing is compared), and
        ``"fail"`` otherwise.

    Raises
    ------
    ValueError
        Before any sampling, for a malformed argument; the message names it, says what
        was given and what was expected.

    Examples
    --------
    The posterior of a normal mean with a N(0, 1) prior and unit noise is
    :math:`\mathcal{N}(\sum_i y_i/(n+1), 1/(n+1))`:

    >>> import numpy as np
    >>> import numpyro
    >>> import numpyro.distributions as dist
    >>> def normal_mean(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> y = np.array([0.3, -0.1, 0.8, 1.2])
    >>> var = 1.0 / (len(y) + 1.0)
    >>> result = audit_posterior(normal_mean, (np.array([var * y.sum()]), np.array([[var]])),
    ...                          model_kwargs={"y": y})  # doctest: +SKIP
    >>> result.verdict  # doctest: +SKIP
    'pass'
    >>> [c["rejected"] for c in result.controls]  # doctest: +SKIP
    [True, True, None, None]
    """
    started = time.perf_counter()
    # ---- every argument is checked before NUTS runs
    if not callable(model):
        raise ValueError(f"model is {type(model).__name__}; expected a NumPyro model function")
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(
            f"model_kwargs is {type(model_kwargs).__name__}; expected a dict of the model's "
            "keyword arguments"
        )
    model_kwargs = dict(model_kwargs)
    clash = sorted(set(model_kwargs) & _RESERVED)
    if clash:
        raise ValueError(
            f"model_kwargs has the keys {clash}, which build_reference uses itself; expected "
            f"model arguments with other names (reserved: {sorted(_RESERVED)})"
        )
    seed = _check_int("seed", seed, 0)
    num_chains = _check_int("num_chains", num_chains, 1)
    num_warmup = _check_int("num_warmup", num_warmup, 1)
    num_samples = _check_int("num_samples", num_samples, 4)
    nuts = NUTSSettings(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    if isinstance(alpha, bool) or not (
        isinstance(alpha, float | int | np.floating) and 0.0 < alpha < 1.0
    ):
        raise ValueError(f"alpha is {alpha!r}; expected a level in (0, 1)")
    alpha = float(alpha)
    if controls is None:
        controls = ControlSet.generic()
    elif not isinstance(controls, ControlSet):
        raise ValueError(
            f"controls is {type(controls).__name__}; expected a validation.controls.ControlSet"
        )
    out_dir = None if out is None else prepare_out_dir(out, "out", files=(AUDIT_FILE, REPORT_FILE))

    latent = latent_sites(model, model_kwargs)
    audited = _resolve_sites(sites, claimed, latent)
    names = [n for n, _ in audited]
    kind, claim, rows = _parse_claim(claimed, audited)
    if isinstance(claimed, SampledClaim):
        pilot = _sampled_draws(claimed, jax.random.key(seed), _PILOT_DRAWS, "claimed")
        if np.any(pilot.std(axis=0) <= 0):
            raise ValueError(
                f"claimed.sample gives a constant coordinate in {_PILOT_DRAWS} draws; expected "
                "draws of a distribution with a density"
            )
    model_name = _model_name(model)
    if reference is not None:
        ref = _check_reference(reference, names, model_kwargs)
    else:
        ref = None

    # ---- the NUTS reference
    if ref is None:
        ref = build_reference(
            model,
            model_name=model_name,
            var_names=names,
            nuts=nuts,
            seed=seed,
            **model_kwargs,
        )
    sampler = ref.record.get("sampler", {})
    gate = ref.gate.to_dict()

    # ---- the comparison and the negative controls
    extra: dict[str, Any] = {}
    if not ref.accepted:
        failed = [g.name for g in ref.gate.failed]
        checks = [
            {
                "name": "exact-comparison" if kind == "gaussian" else "energy-test",
                "checkpoint": 0,
                "verdict": "report",
                "statistics": {
                    "reason": "the NUTS reference was refused by its gates; nothing was compared",
                    "failed_gates": failed,
                    "advice": list(ref.gate.advice),
                },
            }
        ]
        results = [
            {
                "name": name,
                "checkpoint": 0,
                "rejected": None,
                "detail": "not run: the NUTS reference was refused",
            }
            for name in controls
        ]
        panel = None
        verdict = "inconclusive"
    else:
        if kind == "gaussian":
            checks, results, panel, extra = _gaussian_audit(
                claim, ref, names, controls, alpha, seed
            )
        else:
            checks, results, panel, extra = _draws_audit(
                claim, rows, ref, names, controls, alpha, seed
            )
        checks_pass = all(c["verdict"] == "pass" for c in checks if c["verdict"] != "report")
        controls_rejected = all(c["rejected"] for c in results if c["rejected"] is not None)
        verdict = "pass" if checks_pass and controls_rejected else "fail"

    settings = {
        "sites": [[n, list(s)] for n, s in audited],
        "dim": sites_dim(audited),
        "claim": kind,
        "alpha": alpha,
        "num_chains": sampler.get("num_chains", num_chains),
        "num_warmup": sampler.get("num_warmup", num_warmup),
        "num_samples": sampler.get("num_samples", num_samples),
        "seed": seed,
        "negative_controls": list(controls),
    }
    if kind == "draws":
        settings["num_permutations"] = NUM_PERMUTATIONS
        settings["max_points"] = MAX_POINTS
        if rows is not None:
            settings["claimed_draws"] = int(rows.shape[0])
    settings.update(extra)
    command = (
        f"validation.posterior_audit.audit_posterior(model={model_name}, claimed=<{kind}>, "
        f"model_kwargs={sorted(model_kwargs)}, sites={names}, seed={seed}, "
        f"num_chains={num_chains}, num_warmup={num_warmup}, num_samples={num_samples}, "
        f"alpha={alpha:g}"
        + ("" if out is None else f", out={str(out)!r}")
        + (", reference=<given>" if reference is not None else "")
        + ")"
    )
    record = {
        "model": model_name,
        "agent": "Gaussian claim" if kind == "gaussian" else "claim given by draws",
        "exact": True,
        "verdict": verdict,
        "settings": settings,
        "reference": {
            "accepted": bool(ref.accepted),
            "checkpoints": [
                {
                    "checkpoint": 0,
                    "accepted": bool(ref.accepted),
                    "failed_gates": [g.name for g in ref.gate.failed],
                    "advice": list(ref.gate.advice),
                    "diagnostics": gate,
                    "record": ref.record,
                }
            ],
        },
        "checks": checks,
        "negative_controls": results,
        **provenance(seed=seed, wall_seconds=time.perf_counter() - started, command=command),
    }
    record = strict_json(record)
    result = AuditResult(
        verdict=verdict,
        checks=record["checks"],
        controls=record["negative_controls"],
        reference=ref,
        diagnostics=record["reference"]["checkpoints"][0]["diagnostics"],
        record=record,
        panel=panel,
    )
    if out_dir is not None:
        result.write(out_dir)
    return result
