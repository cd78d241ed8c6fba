"""audit_posterior on a user's own NumPyro model, and the negative controls it runs.

The model is a conjugate Gaussian linear regression y = α + X β + ε, ε ~ N(0, 1), with
two latent sites, α () and β (2,), and a correlated prior α ~ N(0, 4), β | α ~ N(α c, S):
its posterior over (α, β₀, β₁) is Gaussian in closed form. One NUTS reference (4 chains,
500 warmup, 1000 draws) is shared by the module; one more NUTS run, with a single chain,
must be refused.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl_bandits.core.claims import GaussianClaim, SampledClaim
from validation import posterior_audit
from validation.controls import (
    GENERIC_CONTROLS,
    ControlSet,
    UnknownControlError,
    apply_control,
    gaussian_control,
    identical_claims,
)
from validation.posterior_audit import AuditResult, audit_posterior, latent_sites

SIGMA = 1.0
PRIOR_SD_ALPHA = 2.0
C = np.array([0.5, -0.5])
S = np.array([[1.0, 0.5], [0.5, 1.0]])
N_OBS = 20
NUTS = {"num_chains": 4, "num_warmup": 500, "num_samples": 1000}
RECORD_KEYS = {
    "model",
    "agent",
    "exact",
    "verdict",
    "settings",
    "reference",
    "checks",
    "negative_controls",
    "wall_seconds",
    "seed",
    "command",
    "versions",
}


def regression(X, y):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, PRIOR_SD_ALPHA))
    beta = numpyro.sample(
        "beta", dist.MultivariateNormal(alpha * jnp.asarray(C), covariance_matrix=jnp.asarray(S))
    )
    numpyro.sample("y", dist.Normal(alpha + jnp.asarray(X) @ beta, SIGMA), obs=y)


def _data():
    rng = np.random.default_rng(0)
    x1 = rng.normal(2.0, 1.0, N_OBS)
    x2 = 0.6 * x1 + 0.8 * rng.normal(size=N_OBS)
    X = np.stack([x1, x2], axis=1)
    Z = np.column_stack([np.ones(N_OBS), X])
    y = Z @ np.array([1.0, 0.5, -0.5]) + SIGMA * rng.normal(size=N_OBS)
    # Joint prior of θ = (α, β): mean 0, Cov(α) = 4, Cov(α, β) = 4c, Cov(β) = S + 4 c cᵀ.
    v = PRIOR_SD_ALPHA**2
    P0 = np.zeros((3, 3))
    P0[0, 0] = v
    P0[0, 1:] = P0[1:, 0] = v * C
    P0[1:, 1:] = S + v * np.outer(C, C)
    cov = np.linalg.inv(np.linalg.inv(P0) + Z.T @ Z / SIGMA**2)
    mean = cov @ Z.T @ y / SIGMA**2
    return {"X": X, "y": y}, mean, 0.5 * (cov + cov.T)


DATA, MEAN, COV = _data()
SD = np.sqrt(np.diag(COV))


def _as_dict(draws):
    return {"alpha": draws[:, 0], "beta": draws[:, 1:]}


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"audit.json holds the non-standard constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def exact():
    """The exact (mean, cov) audited with its own NUTS run (shared reference)."""
    return audit_posterior(regression, (MEAN, COV), model_kwargs=DATA, seed=0, **NUTS)


@pytest.fixture(scope="module")
def iid_draws():
    return np.random.default_rng(100).multivariate_normal(MEAN, COV, size=2000)


def test_closed_form_sanity():
    """The posterior is strongly coupled, so the decoupling controls are really wrong."""
    corr = COV / np.outer(SD, SD)
    assert np.min(corr[np.triu_indices(3, 1)]) < -0.3
    assert latent_sites(regression, DATA) == {"alpha": (), "beta": (2,)}


def test_exact_gaussian_claim_passes(exact):
    assert isinstance(exact, AuditResult)
    assert exact.reference.accepted
    assert exact.verdict == "pass", str(exact)
    assert [c["name"] for c in exact.checks] == ["exact-comparison"]
    assert exact.checks[0]["verdict"] == "pass"
    assert [c["name"] for c in exact.controls] == list(GENERIC_CONTROLS)
    assert all(c["rejected"] is True for c in exact.controls), exact.controls
    assert exact.diagnostics["accepted"] is True
    record = exact.record
    assert set(record) == RECORD_KEYS
    assert record["verdict"] == "pass"
    assert record["settings"]["sites"] == [["alpha", []], ["beta", [2]]]
    assert record["reference"]["accepted"] is True
    [checkpoint] = record["reference"]["checkpoints"]
    assert checkpoint["checkpoint"] == 0 and checkpoint["accepted"] is True
    assert exact.checks[0]["statistics"]["labels"] == ["alpha", "beta[0]", "beta[1]"]


@pytest.mark.parametrize(
    "name, claim",
    [
        ("shifted mean", (MEAN + 0.5 * SD, COV)),
        ("inflated covariance", (MEAN, 1.3 * COV)),
        ("dropped correlations", (MEAN, np.diag(np.diag(COV)))),
    ],
)
def test_wrong_gaussian_claims_fail(exact, name, claim):
    result = audit_posterior(regression, claim, model_kwargs=DATA, reference=exact.reference)
    assert result.verdict == "fail", f"{name}: {result}"
    assert result.checks[0]["verdict"] == "fail"


def test_exact_draws_pass_and_shifted_draws_fail(exact, iid_draws, tmp_path):
    good = audit_posterior(
        regression, _as_dict(iid_draws), model_kwargs=DATA, reference=exact.reference
    )
    assert good.verdict == "pass", str(good)
    energy = good.checks[0]
    assert energy["name"] == "energy-test" and energy["verdict"] == "pass"
    assert energy["statistics"]["n_x"] == energy["statistics"]["n_y"] == 1000
    assert good.checks[1]["name"] == "moment-discrepancy"
    assert good.checks[1]["verdict"] == "report"
    assert abs(good.checks[1]["statistics"]["max_abs_standardized_mean_error"]) < 0.2
    assert all(c["rejected"] is True for c in good.controls), good.controls

    bad = audit_posterior(
        regression,
        _as_dict(iid_draws[:400] + 0.5 * SD),
        model_kwargs=DATA,
        reference=exact.reference,
    )
    assert bad.verdict == "fail"
    assert bad.checks[0]["verdict"] == "fail"
    assert bad.checks[0]["statistics"]["p_value"] <= 0.05

    good.write(tmp_path)
    record = _strict_json((tmp_path / "audit.json").read_text())
    assert record["settings"]["claim"] == "draws"
    assert "energy-test" in (tmp_path / "report.html").read_text()


def test_sampled_claim_object(exact):
    mean, chol = jnp.asarray(MEAN), jnp.asarray(np.linalg.cholesky(COV))

    def draw(params, key, n):
        m, L = params
        return m + jax.random.normal(key, (n, m.shape[0])) @ L.T

    claim = SampledClaim(draw, (mean, chol), (("alpha", ()), ("beta", (2,))))
    result = audit_posterior(regression, claim, model_kwargs=DATA, reference=exact.reference)
    assert result.checks[0]["name"] == "energy-test"
    assert result.checks[0]["statistics"]["n_y"] == 1000
    assert result.verdict in ("pass", "fail")  # a valid test may reject a correct claim


def test_refused_reference_is_inconclusive(tmp_path):
    result = audit_posterior(
        regression,
        (MEAN, COV),
        model_kwargs=DATA,
        num_chains=1,
        num_warmup=300,
        num_samples=300,
        out=tmp_path / "refused",
    )
    assert result.verdict == "inconclusive"
    assert not result.reference.accepted
    assert result.panel is None
    [checkpoint] = result.record["reference"]["checkpoints"]
    assert "chains" in checkpoint["failed_gates"]
    assert checkpoint["advice"]
    assert result.checks[0]["verdict"] == "report"
    assert all(c["rejected"] is None for c in result.controls)
    record = _strict_json((tmp_path / "refused" / "audit.json").read_text())
    assert set(record) == RECORD_KEYS
    assert record["verdict"] == "inconclusive"
    html = (tmp_path / "refused" / "report.html").read_text()
    assert "refused" in html


def test_write_audit_json_and_report(exact, tmp_path):
    out = exact.write(tmp_path / "audit")
    record = _strict_json((out / "audit.json").read_text())
    assert set(record) == RECORD_KEYS
    assert record == json.loads(json.dumps(exact.record))
    assert record["negative_controls"][0]["checkpoint"] == 0
    assert isinstance(record["versions"], dict) and record["command"].startswith("validation.")
    html = (out / "report.html").read_text()
    assert "Overall verdict: pass" in html
    assert (out / "rank_0.png").is_file() and (out / "density_0.png").is_file()


# --------------------------------------------------------------------------- bad inputs


def _fail_nuts(*args, **kwargs):
    raise AssertionError("NUTS must not run before the inputs are checked")


GOOD_DRAWS = np.random.default_rng(1).multivariate_normal(MEAN, COV, size=200)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"claimed": (np.zeros(4), np.eye(4))}, r"claimed mean has shape \(4,\); expected \(3,\)"),
        ({"claimed": (MEAN, np.zeros((3, 2)))}, r"claimed cov has shape \(3, 2\).*square"),
        ({"claimed": (MEAN, COV + np.triu(np.full((3, 3), 0.1), 1))}, "claimed cov is not symm"),
        ({"claimed": (MEAN, np.diag([1.0, 1.0, -1.0]))}, "claimed cov is not positive definite"),
        ({"claimed": (np.array([np.nan, 0.0, 0.0]), COV)}, "claimed mean has non-finite"),
        ({"claimed": {"alpha": GOOD_DRAWS[:, 0]}}, r"claimed .*missing \['beta'\]"),
        ({"claimed": {**_as_dict(GOOD_DRAWS), "gamma": GOOD_DRAWS}}, r"claimed .*\['gamma'\]"),
        (
            {"claimed": {"alpha": GOOD_DRAWS[:, 0], "beta": GOOD_DRAWS}},
            r"claimed\['beta'\] has shape \(200, 3\); expected",
        ),
        ({"claimed": _as_dict(GOOD_DRAWS[:10])}, "claimed has 10 draws; expected at least"),
        ({"claimed": "N(0, 1)"}, "claimed is str; expected a pair"),
        (
            {"claimed": GaussianClaim(MEAN, COV, (("alpha", ()), ("gamma", (2,))))},
            r"claimed has the sites .*\['gamma'\] are not latent",
        ),
        ({"sites": ["alpha", "nope"]}, r"sites is .*\['nope'\] are not latent sample sites"),
        ({"sites": []}, "sites is"),
        ({"alpha": 0.0}, r"alpha is 0.0; expected a level in \(0, 1\)"),
        ({"alpha": 1.5}, "alpha is 1.5"),
        ({"num_chains": 0}, "num_chains is 0; expected an integer >= 1"),
        ({"num_warmup": 0}, "num_warmup is 0"),
        ({"num_samples": -5}, "num_samples is -5"),
        ({"seed": -1}, "seed is -1"),
        ({"model_kwargs": {"X": DATA["X"]}}, r"model\(\*\*model_kwargs\) raised TypeError"),
        ({"model_kwargs": {**DATA, "seed": 1}}, r"model_kwargs has the keys \['seed'\]"),
        ({"controls": {"a": abs}}, "controls is dict; expected"),
    ],
)
def test_bad_inputs_raise_before_nuts(monkeypatch, kwargs, match):
    monkeypatch.setattr(posterior_audit, "build_reference", _fail_nuts)
    args = {"claimed": (MEAN, COV), "model_kwargs": DATA} | kwargs
    claimed = args.pop("claimed")
    with pytest.raises(ValueError, match=match):
        audit_posterior(regression, claimed, **args)


def test_unwritable_out_raises_before_nuts(monkeypatch, tmp_path):
    monkeypatch.setattr(posterior_audit, "build_reference", _fail_nuts)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"out is .*which is a file"):
        audit_posterior(regression, (MEAN, COV), model_kwargs=DATA, out=blocker)
    with pytest.raises(ValueError, match=r"out is .*cannot be created"):
        audit_posterior(regression, (MEAN, COV), model_kwargs=DATA, out=blocker / "sub")


def test_reference_from_other_data_is_refused(exact):
    other = {"X": DATA["X"], "y": DATA["y"] + 1.0}
    with pytest.raises(ValueError, match="reference was built on data with hash"):
        audit_posterior(regression, (MEAN, COV), model_kwargs=other, reference=exact.reference)


# --------------------------------------------------------------------------- controls

SITES = (("a", (2,)), ("b", ()))
CORR_COV = np.array([[1.0, 0.6, 0.4], [0.6, 2.0, -0.5], [0.4, -0.5, 1.5]])


def test_gaussian_controls():
    mean = np.array([1.0, -1.0, 0.5])
    m, c = gaussian_control("covariance-x1.3", mean, CORR_COV, SITES)
    np.testing.assert_allclose(c, 1.3 * CORR_COV)
    np.testing.assert_allclose(m, mean)
    m, c = gaussian_control("mean-shift-0.5sd", mean, CORR_COV, SITES)
    np.testing.assert_allclose(m, mean + 0.5 * np.sqrt(np.diag(CORR_COV)))
    _, c = gaussian_control("correlations-dropped", mean, CORR_COV, SITES)
    np.testing.assert_allclose(c, np.diag(np.diag(CORR_COV)))
    _, c = gaussian_control("blocks-decoupled", mean, CORR_COV, SITES)
    expected = CORR_COV.copy()
    expected[:2, 2] = expected[2, :2] = 0.0
    np.testing.assert_allclose(c, expected)


def test_identical_controls_are_not_applicable():
    one_site = GaussianClaim(np.zeros(3), CORR_COV, (("a", (3,)),))
    assert identical_claims(one_site, apply_control("blocks-decoupled", one_site))
    diagonal = GaussianClaim(np.zeros(3), np.diag([1.0, 2.0, 3.0]), SITES)
    assert identical_claims(diagonal, apply_control("correlations-dropped", diagonal))
    assert not identical_claims(diagonal, apply_control("covariance-x1.3", diagonal))


def test_unknown_control_names_the_known_ones():
    claim = GaussianClaim(np.zeros(3), CORR_COV, SITES)
    with pytest.raises(ValueError, match=r"'covariance-x2'.*covariance-x1\.3.*blocks-decoupled"):
        apply_control("covariance-x2", claim)
    controls = ControlSet.generic()
    with pytest.raises(UnknownControlError):
        controls["nope"]
    assert "nope" not in controls and list(controls) == list(GENERIC_CONTROLS)
    with pytest.raises(ValueError, match="claim is ndarray"):
        apply_control("covariance-x1.3", np.eye(2))


def test_family_controls_extend_the_generic_ones():
    halved = ControlSet.generic(
        {"covariance-x0.5": lambda c: GaussianClaim(c.mean, 0.5 * c.cov, c.sites)}
    )
    assert list(halved) == [*GENERIC_CONTROLS, "covariance-x0.5"]
    claim = GaussianClaim(np.zeros(3), CORR_COV, SITES)
    np.testing.assert_allclose(halved.apply("covariance-x0.5", claim).cov, 0.5 * CORR_COV)
    with pytest.raises(ValueError, match="already registered"):
        halved.extended({"mean-shift-0.5sd": lambda c: c})


def test_sampled_controls_act_on_draws():
    L = jnp.asarray(np.linalg.cholesky(CORR_COV))

    def draw(params, key, n):
        return params + jax.random.normal(key, (n, 3)) @ L.T

    claim = SampledClaim(draw, jnp.asarray([1.0, -1.0, 0.5]), SITES)
    key = jax.random.key(3)
    x = np.asarray(claim.sample(key, 4000), dtype=np.float64)
    sd = x.std(axis=0)

    shifted = np.asarray(apply_control("mean-shift-0.5sd", claim).sample(key, 4000))
    np.testing.assert_allclose(shifted - x, np.broadcast_to(0.5 * sd, x.shape), atol=1e-4)
    scaled = np.asarray(apply_control("covariance-x1.3", claim).sample(key, 4000))
    np.testing.assert_allclose(scaled.std(axis=0) / sd, math.sqrt(1.3), rtol=1e-4)

    dropped = np.asarray(apply_control("correlations-dropped", claim).sample(key, 4000))
    np.testing.assert_allclose(np.sort(dropped, axis=0), np.sort(x, axis=0))
    assert np.max(np.abs(np.corrcoef(dropped, rowvar=False) - np.eye(3))) < 0.1

    blocks = np.corrcoef(apply_control("blocks-decoupled", claim).sample(key, 4000), rowvar=False)
    corr = CORR_COV / np.outer(np.sqrt(np.diag(CORR_COV)), np.sqrt(np.diag(CORR_COV)))
    assert abs(blocks[0, 1] - corr[0, 1]) < 0.05  # within site a: kept
    assert np.max(np.abs(blocks[:2, 2])) < 0.1  # across sites: gone

    one_site = SampledClaim(draw, claim.params, (("a", (3,)),))
    assert apply_control("blocks-decoupled", one_site) is one_site
