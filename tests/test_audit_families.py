"""The audit beyond the mixed-effect model: LinTS-shared on the linear bandit, dTS on linear and
neural diffusion priors. Each exact audit passes and rejects every negative control; the
claimed posteriors read from the agents' states equal the closed forms; the neural
audit gives a report; bad arguments are named."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import EXACT_RTOL, X64, random_spd
from models.diffusion import diffusion_prior
from ppl_bandits.cli import main
from ppl_bandits.core.likelihood import SufficientStats
from ppl_bandits.diffusion.agents import dts
from ppl_bandits.diffusion.posterior import joint_posterior, recursive_joint_posterior
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from validation.audit import run_audit
from validation.calibration import replication_claim, simulate_replications, study_setup
from validation.diffusion_study import exact_gaussian_posterior, sample_discrepancy
from validation.families import (
    AUDIT_FAMILIES,
    DIFFUSION_LINEAR_CONTROLS,
    LINEAR_BANDIT_CONTROLS,
    AuditSettings,
    claim64,
    diffusion_claimed_posterior,
    diffusion_sem_posterior,
    dts_posterior_samples,
    list_audit_models,
    negative_control,
)
from validation.reference import NUTSSettings

DTYPE = jnp.float64 if X64 else jnp.float32
#: Tiny NUTS (4 chains of 400 draws after 300 warm-up), the size of tests/test_audit.py.
TINY = NUTSSettings(num_warmup=300, num_samples=400)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))


def _linear_prior(rng, K, L, d, identity=False):
    W = np.broadcast_to(np.eye(d), (L, d, d)) if identity else rng.uniform(-1, 1, (L, d, d))
    return diffusion_prior(
        np.stack([random_spd(rng, d, 1.5) for _ in range(L)]).astype(DTYPE),
        random_spd(rng, d, 0.8, (K,)).astype(DTYPE),
        links=np.asarray(W, DTYPE),
        noise_sd=0.7,
    )


def _played_state(rng, prior, n):
    agent = dts()
    state = agent.init(jax.random.key(0), prior)
    K, d = prior.num_actions, prior.dim
    X = rng.uniform(-1, 1, (n, d)).astype(DTYPE)
    A = rng.choice(K - 1, size=n)  # the last action is never played
    Y = rng.normal(size=n).astype(DTYPE)
    update = jax.jit(agent.update)
    for x, a, y in zip(X, A, Y, strict=True):
        state = update(jax.random.key(1), state, jnp.broadcast_to(x, (K, d)), a, y)
    return state, (X, A, Y)


@pytest.fixture(scope="module")
def played():
    """A dTS state after 30 rounds on a random linear prior (K=4, L=3, d=2), its history."""
    rng = np.random.default_rng(7)
    prior = _linear_prior(rng, 4, 3, 2)
    state, hist = _played_state(rng, prior, 30)
    return prior, state, hist


@pytest.mark.exact
def test_dts_claimed_posterior_is_the_brute_force_joint(rng, played):
    """The Gaussian read from dTS's cached terms equals the brute-force joint posterior of
    (ψ, θ) and the recursion's joint; the dTS approximation on the same linear prior is
    the control: it differs unless every W_ℓ = I."""
    prior, state, hist = played
    claimed = diffusion_claimed_posterior(state)
    brute = joint_posterior(prior, *hist)
    stats = SufficientStats(state.G, state.B, state.count)
    rec = recursive_joint_posterior(prior, stats)
    tol = EXACT_RTOL if X64 else 5e-3
    assert _rel(claimed.mean, brute.mean) < tol and _rel(claimed.cov, brute.cov) < tol
    assert _rel(claimed.cov, rec.cov) < tol
    assert _rel(diffusion_sem_posterior(prior, stats, "exact").cov, brute.cov) < tol
    approx = diffusion_sem_posterior(prior, stats, "dts")
    assert _rel(approx.cov, brute.cov) > 0.05
    eye_prior = _linear_prior(rng, 4, 3, 2, identity=True)
    eye_state, _ = _played_state(rng, eye_prior, 30)
    eye_stats = SufficientStats(eye_state.G, eye_state.B, eye_state.count)
    same = diffusion_sem_posterior(eye_prior, eye_stats, "dts")
    assert _rel(same.cov, diffusion_claimed_posterior(eye_state).cov) < tol


def _coupling_kept(sites):
    """Today's meaning of coupling-dropped: the covariance entries it keeps. A 1-D site (the
    meTS Ψ, (Ld,)) is one block; a matrix-shaped site (θ (K, d), the dTS ψ (L, d)) one block
    per row."""
    blocks = []
    for _, shape in sites:
        blocks += [int(np.prod(shape[1:]))] * shape[0] if len(shape) == 2 else [shape[0]]
    kept = np.zeros((sum(blocks),) * 2, bool)
    for start, size in zip(np.cumsum([0, *blocks[:-1]]), blocks, strict=True):
        kept[start : start + size, start : start + size] = True
    return kept


@pytest.mark.exact
@pytest.mark.parametrize(
    ("agent", "model", "controls"),
    [
        ("meTS-Lin-Fa", "mixed-effect-linear", ("coupling-dropped", "published-factored-mean")),
        ("dTS", "diffusion-linear", ("coupling-dropped", "dts-approximation")),
    ],
)
def test_audit_and_calibration_apply_the_same_family_controls(agent, model, controls):
    """A family control written once: the audit's (one run's float64 claim) and the
    calibration's (the batched claims of a study) give the same claim for the same state;
    coupling-dropped keeps Ψ's (or each ψ_ℓ's) and each θ_a's block. The control: a
    different control, or none, gives a different claim."""
    K, L, d, rounds, R = 3, 2, 2, 10, 2
    state, _ = simulate_replications(agent, model, K, L, d, rounds, R, 0, jax.devices())
    bandit = study_setup(agent, model, K, L, d, rounds)[1]
    settings = AuditSettings(**dict.fromkeys(AuditSettings._fields))._replace(
        num_actions=K, num_effects=L, dim=d
    )
    batched = {name: replication_claim(agent, state, name, rounds=rounds) for name in controls}
    for r in range(R):
        one = jax.tree.map(lambda a, r=r: a[r], state)
        claim = bandit.posterior(one)
        claimed = claim64(claim)
        for name in controls:
            if model == "mixed-effect-linear":
                audit = negative_control(name, claimed, one, num_effects=L, dim=d)
            else:
                audit = AUDIT_FAMILIES[model].control(name, claimed, one, one.prior, settings)
            same = batched[name]
            for a, b in ((audit.mean, same.mean[r]), (audit.cov, same.cov[r])):
                assert _rel(a, b) < EXACT_RTOL, (name, r)
            others = [claimed] + [batched[o] for o in controls if o != name]
            for other in others:
                other_mean = other.mean if other is claimed else other.mean[r]
                other_cov = other.cov if other is claimed else other.cov[r]
                assert max(_rel(audit.mean, other_mean), _rel(audit.cov, other_cov)) > 1e-2
            if name == "coupling-dropped":
                kept = _coupling_kept(claim.sites)
                np.testing.assert_array_equal(audit.cov, np.where(kept, claimed.cov, 0.0))
                assert 0 < kept.sum() < kept.size and np.any(claimed.cov[~kept] != 0)


def test_family_controls_refuse_names_their_family_does_not_register():
    """A generic control a family does not list (blocks-decoupled) and a made-up name are
    refused with the family's list; dts-approximation is refused for the meTS family. The
    control: a listed name is applied."""
    K, L, d, rounds = 3, 2, 2, 5
    state, _ = simulate_replications(
        "meTS-Lin", "mixed-effect-linear", K, L, d, rounds, 1, 0, jax.devices()
    )
    one = jax.tree.map(lambda a: a[0], state)
    bandit = study_setup("meTS-Lin", "mixed-effect-linear", K, L, d, rounds)[1]
    claimed = claim64(bandit.posterior(one))
    for name in ("blocks-decoupled", "dts-approximation", "no-such-control"):
        with pytest.raises(ValueError, match=rf"negative control is '{name}'; expected one of"):
            negative_control(name, claimed, one, num_effects=L, dim=d)
    wrong = negative_control("covariance-x1.3", claimed, one, num_effects=L, dim=d)
    np.testing.assert_allclose(wrong.cov, 1.3 * claimed.cov, rtol=1e-6)


def test_dts_posterior_samples_match_the_claimed_gaussian(played):
    """For linear links the sampled claim (used for neural links) has the claimed Gaussian's
    moments within Monte Carlo error (5 standard errors over every coordinate)."""
    _, state, _ = played
    exact = diffusion_claimed_posterior(state)
    m = 20000
    sampled = dts_posterior_samples(state, m, seed=3)
    sd = np.sqrt(np.diag(exact.cov))
    z = (sampled.mean - exact.mean) / (sd / np.sqrt(m))
    assert np.max(np.abs(z)) < 5
    ratio = np.sqrt(np.diag(sampled.cov)) / sd
    assert np.max(np.abs(ratio - 1)) < 5 / np.sqrt(2 * m)
    shifted = (sampled.mean + 0.05 * sd - exact.mean) / (sd / np.sqrt(m))
    assert np.max(np.abs(shifted)) > 5  # the control: a 0.05 sd shift is visible


def test_linear_bandit_audit_passes_shared_lints_and_rejects_every_control(tmp_path, capsys):
    out = tmp_path / "lin"
    rc = main(
        [
            "audit",
            "--model",
            "linear-bandit",
            "--agent",
            "lints-shared",
            "--d",
            "2",
            "--N",
            "4",
            "--rounds",
            "40",
            "--checkpoints",
            "40",
            "--warmup",
            "300",
            "--samples",
            "400",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    record = json.loads((out / "audit.json").read_text())
    assert record["model"] == "linear-bandit" and record["agent"] == "LinTS-shared"
    assert record["exact"] is True and record["verdict"] == "pass"
    assert record["settings"]["num_arms"] == 4
    controls = record["negative_controls"]
    assert {c["name"] for c in controls} == set(LINEAR_BANDIT_CONTROLS)
    assert all(c["rejected"] for c in controls), controls
    assert (out / "report.html").exists()


def test_diffusion_linear_audit_passes_dts_and_rejects_every_control():
    rec = run_audit(
        "diffusion-linear",
        "dTS",
        problem=AuditSettings(num_actions=3, num_effects=2, dim=2, rounds=40),
        nuts=TINY,
        checkpoints=[40],
        log=None,
    ).record
    assert rec["exact"] is True and rec["verdict"] == "pass", rec["checks"]
    assert [c["name"] for c in rec["checks"]] == ["exact-comparison"]
    controls = rec["negative_controls"]
    assert [c["name"] for c in controls] == list(DIFFUSION_LINEAR_CONTROLS)
    assert all(c["rejected"] for c in controls), controls


@pytest.mark.slow
def test_diffusion_neural_audit_is_a_report():
    """dTS with random MLP links: a discrepancy report (no verdict), with the sample-based
    energy distance and its floor, and the controls rejected."""
    outcome = run_audit(
        "diffusion-neural",
        "dTS",
        problem=AuditSettings(
            num_actions=2, num_effects=2, dim=2, rounds=40, posterior_samples=4000
        ),
        nuts=TINY,
        checkpoints=[40],
        log=None,
    )
    rec = outcome.record
    (check,) = rec["checks"]
    assert rec["exact"] is False and check["verdict"] == "report" and rec["verdict"] == "report"
    s = check["statistics"]
    for key in ("standardized_mean_error", "sd_ratio", "w2", "energy_distance", "w2_iid_floor"):
        assert key in s
    assert "energy_distance_gaussian" in s and s["claim"].startswith("4000 independent draws")
    assert outcome.claims[40].samples.shape == (4000, (2 + 2) * 2)
    assert all(c["rejected"] for c in rec["negative_controls"])


@pytest.mark.slow
def test_mixed_effect_audit_takes_an_environment():
    env = mixed_effect_environment(4, 2, 2)
    rec = run_audit(
        "mixed-effect-linear",
        "meTS-Lin",
        problem=AuditSettings(num_actions=4, rounds=30),
        nuts=TINY,
        checkpoints=[30],
        environment=env,
        log=None,
    ).record
    assert rec["verdict"] == "pass" and rec["environment"]["environment"].startswith("given")


def test_sample_discrepancy_and_exact_gaussian_posterior():
    """The statistics of the study are near their floors for draws of the reference itself
    and far from them for a shifted sample (the control)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (50, 2))
    A = np.zeros(50, int)
    Y = X @ np.array([0.5, -1.0]) + rng.normal(size=50)
    mean, cov = exact_gaussian_posterior(X, A, Y, num_actions=1, dim=2)
    prec = np.eye(2) + X.T @ X
    assert np.allclose(cov, np.linalg.inv(prec)) and np.allclose(mean, cov @ X.T @ Y)
    draws = rng.multivariate_normal(mean, cov, size=4000)
    good = sample_discrepancy(draws, mean, cov, seed=1)
    bad = sample_discrepancy(draws + 0.5 * np.sqrt(np.diag(cov)), mean, cov, seed=1)
    assert good["max_abs_standardized_mean_error"] < 0.1 < bad["max_abs_standardized_mean_error"]
    assert good["w2"] < 3 * good["w2_iid_floor"] + 0.02 < bad["w2"]
    assert bad["energy_distance"] > 10 * abs(good["energy_distance_iid_floor"]) + 0.01


def test_every_model_is_registered():
    assert list_audit_models() == [
        "mixed-effect-linear",
        "mixed-effect-logistic",
        "linear-bandit",
        "diffusion-linear",
        "diffusion-neural",
    ]
    assert AUDIT_FAMILIES["diffusion-linear"].agents["dTS"].exact
    assert not AUDIT_FAMILIES["diffusion-neural"].agents["dTS"].exact


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "diffusion-quadratic"}, r"model is 'diffusion-quadratic'; expected one of"),
        (
            {"model": "diffusion-linear", "agent": "LinTS-shared"},
            r"agent is 'LinTS-shared'; expected one of dTS for model diffusion-linear "
            r"\(LinTS-shared is audited with model linear-bandit\)",
        ),
        (
            {"model": "linear-bandit", "agent": "meTS-Lin"},
            r"agent is 'meTS-Lin'; expected one of LinTS-shared for model linear-bandit",
        ),
        (
            {"model": "linear-bandit", "agent": "LinTS-shared", "parameterization": "noncentered"},
            r"parameterization is 'noncentered'; expected one of auto, centered",
        ),
        ({"model": "diffusion-linear", "agent": "dTS", "prior": "ddpm"}, r"prior is 'ddpm'"),
        ({"model": "diffusion-neural", "agent": "dTS", "prior": "gan"}, r"prior is 'gan'"),
        ({"model": "diffusion-neural", "agent": "dTS", "num_arms": 0}, r"num_arms is 0"),
        ({"model": "linear-bandit", "agent": "LinTS-shared", "data": "x.csv"}, r"data is 'x.csv'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    kw = {"agent": "dTS"} | kwargs
    problem = AuditSettings(**{k: kw.pop(k) for k in list(kw) if k in AuditSettings._fields})
    with pytest.raises(ValueError, match=message):
        run_audit(kw.pop("model"), kw.pop("agent"), problem=problem, log=None, **kw)


def test_an_environment_of_the_wrong_family_is_refused():
    with pytest.raises(ValueError, match=r"environment draws a MixedEffectPrior; model "):
        run_audit(
            "linear-bandit",
            "LinTS-shared",
            problem=AuditSettings(rounds=2),
            checkpoints=[2],
            environment=mixed_effect_environment(2, 1, 2),
            log=None,
        )


def test_missing_prior_dir_is_named(tmp_path, capsys):
    rc = main(
        ["audit", "--model", "diffusion-neural", "--agent", "dTS", "--prior-dir", str(tmp_path)]
    )
    assert rc == 2
    assert "has no ddpm_params.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_diffusion_study_command_writes_its_table(tmp_path, capsys):
    """`ppl-bandits discrepancy --model diffusion-neural` at a tiny size: the CSV has one row
    per checkpoint and per pre-training size, and the quality numbers are printed."""
    out = tmp_path / "study"
    rc = main(
        [
            "discrepancy",
            "--model",
            "diffusion-neural",
            "--rounds-list",
            "0,20",
            "--pretrain-sizes",
            "50",
            "--quality-rounds",
            "20",
            "--pretrain-steps",
            "200",
            "--L",
            "4",
            "--warmup",
            "300",
            "--samples",
            "400",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = (out / "diffusion_study.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    assert "posterior quality" in printed
    for name in ("diffusion_study.json", "quality.json", "discrepancy_rounds.png"):
        assert (out / name).exists()
