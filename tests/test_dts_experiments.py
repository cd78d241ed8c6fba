"""dTS end to end: ``ppl-bandits pretrain``, the dTS experiments through
``ppl-bandits simulate``, the ablation command and the baselines' marginal prior."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_diffusion_exact import random_diffusion_prior

from models.diffusion import NeuralLink, diffusion_prior, init_mlp
from ppl_bandits.cli import main
from ppl_bandits.diffusion.ddpm import load_ddpm, pretrain
from ppl_bandits.diffusion.posterior import marginal_action_prior, marginal_mixed_effect_prior
from ppl_bandits.experiments.catalog import build_experiment, list_experiments
from ppl_bandits.mixed_effect.posterior import marginal_prior

TINY_PRETRAIN = ["--steps", "3", "--epochs", "30", "--hidden", "8", "--model-samples", "50"]


# --------------------------------------------------------------------------- pretrain


@pytest.fixture(scope="module")
def swiss_prior(tmp_path_factory):
    """A tiny DDPM pre-trained on the Swiss roll through the CLI (shared by two tests)."""
    out = tmp_path_factory.mktemp("pretrain") / "ddpm"
    rc = main(["pretrain", "--samples", "swiss-roll", "--num-samples", "64", "--out", str(out),
               "--quiet", *TINY_PRETRAIN])  # fmt: skip
    return rc, out


def test_pretrain_cli_writes_its_files_and_reloads(swiss_prior):
    rc, out = swiss_prior
    assert rc == 0
    for name in ("ddpm_params.npz", "ddpm_settings.json", "pretrain.png", "losses.csv"):
        assert (out / name).is_file(), name
    record = json.loads((out / "pretrain.json").read_text())
    assert record["command"].startswith("ppl-bandits pretrain")
    assert record["seed"] == 0 and record["versions"]["jax"]
    assert record["num_samples"] == 64 and record["dim"] == 2 and record["epochs"] == 30
    assert np.isfinite(record["final_loss"]) and record["training_seconds"] > 0
    params, settings = load_ddpm(out)
    assert settings.num_steps == 3 and settings.hidden == 8 and settings.dim == 2
    assert params.w3.shape == (8, 2)
    assert np.loadtxt(out / "losses.csv", delimiter=",", skiprows=1).shape == (30, 2)


@pytest.mark.slow
def test_pretrain_reads_a_samples_file(tmp_path):
    data = np.random.default_rng(0).normal(size=(40, 3))
    np.savetxt(tmp_path / "s.csv", data, delimiter=",")
    rec = pretrain(tmp_path / "s.csv", tmp_path / "out", num_steps=2, epochs=3, hidden=4,
                   model_samples=10)  # fmt: skip
    assert rec["dim"] == 3 and rec["num_samples"] == 40
    np.testing.assert_allclose(rec["training_mean"], data.mean(0), rtol=1e-6)


def _write(tmp_path, name, array):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        np.savetxt(path, array, delimiter=",")
    return str(path)


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: str(p / "missing.npy"), [], "does not exist"),
        (lambda p: _write(p, "v.npy", np.ones(5)), [], r"shape \(5,\); expected a 2-D"),
        (lambda p: _write(p, "e.npy", np.ones((0, 2))), [], r"shape \(0, 2\)"),
        (lambda p: _write(p, "n.csv", np.array([[1.0, np.nan]])), [], "1 non-finite"),
        (lambda p: str(p / "s.txt"), [], "expected one of"),
        (lambda p: _write(p, "d.npy", np.ones((4, 3))), ["--dim", "2"], "3 columns"),
        (lambda p: "gaussian", ["--steps", "0"], "steps is 0; expected an integer >= 1"),
        (lambda p: "gaussian", ["--epochs", "-1"], "epochs is -1"),
        (lambda p: "gaussian", ["--schedule", "cosine", "--hidden", "0"], "hidden is 0"),
    ],
)
def test_pretrain_bad_input_is_named(tmp_path, capsys, make, extra, message):
    """Bad samples or settings: exit code 2 and a message naming the problem; nothing is
    written. The valid call above is the control."""
    out = tmp_path / "out"
    rc = main(["pretrain", "--samples", make(tmp_path), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "ppl-bandits pretrain: error:" in err
    assert re.search(message, err), err
    assert not out.exists()


# --------------------------------------------------------------------------- experiments


def test_dts_experiments_are_registered_with_the_paper_settings():
    names = list_experiments()
    for name in ("dts-linear", "dts-nonlinear", "dts-linear-large", "dts-nonlinear-large",
                 "dts-swiss-roll"):  # fmt: skip
        assert name in names
    from ppl_bandits.experiments.catalog import EXPERIMENTS

    small, large = EXPERIMENTS["dts-linear"].defaults, EXPERIMENTS["dts-nonlinear-large"].defaults
    assert (small["num_actions"], small["num_effects"], small["dim"]) == (100, 2, 5)
    assert (large["num_actions"], large["num_effects"], large["dim"]) == (10_000, 4, 20)
    assert small["num_rounds"] == 5000 and small["num_runs"] == 50


def test_default_agents_and_refusals():
    _, agents, _ = build_experiment("dts-linear", num_actions=3, dim=2)
    assert [a.name for a in agents] == ["dTS", "HierTS-1", "HierTS-2", "LinTS", "LinUCB"]
    _, agents, _ = build_experiment("dts-nonlinear", num_actions=3, dim=2, reward="logistic")
    assert [a.name for a in agents] == ["dTS-GLM", "GLM-TS", "UCB-GLM"]
    with pytest.raises(ValueError, match=r"HierTS-1.*linear links only"):
        build_experiment("dts-nonlinear", agents=["HierTS-1"])
    with pytest.raises(ValueError, match="agent is 'meTS-Lin'"):
        build_experiment("dts-linear", agents=["meTS-Lin"])
    with pytest.raises(ValueError, match="does not take num_arms"):
        build_experiment("dts-linear", num_arms=3)
    with pytest.raises(ValueError, match="reward is 'poisson'"):
        build_experiment("dts-linear", reward="poisson")


def _simulate(tmp_path, experiment, *args):
    out = tmp_path / experiment
    rc = main(["simulate", experiment, "--runs", "2", "--rounds", "6", "--out", str(out),
               "--quiet", *args])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "regret.csv").is_file() and (out / "regret.png").is_file()
    for row in summary["agents"].values():
        assert np.isfinite(row["final_regret_mean"]) and row["final_regret_mean"] >= -1e-5
    return summary


def test_dts_linear_runs_through_simulate(tmp_path):
    s = _simulate(tmp_path, "dts-linear", "--K", "4", "--L", "2", "--d", "2",
                  "--agents", "dTS,LinTS")  # fmt: skip
    assert list(s["agents"]) == ["dTS", "LinTS"]
    assert s["settings"]["num_effects"] == 2 and s["settings"]["experiment"] == "dts-linear"


def test_dts_swiss_roll_runs_with_a_loaded_prior(tmp_path, swiss_prior, capsys):
    _, prior_dir = swiss_prior
    s = _simulate(tmp_path, "dts-swiss-roll", "--K", "4", "--prior-dir", str(prior_dir),
                  "--agents", "dTS,LinUCB")  # fmt: skip
    assert s["settings"]["num_effects"] == 3  # L comes from the loaded DDPM
    assert list(s["agents"]) == ["dTS", "LinUCB"]
    capsys.readouterr()
    rc = main(["simulate", "dts-swiss-roll", "--prior-dir", str(tmp_path / "none"),
               "--out", str(tmp_path / "x"), "--quiet"])  # fmt: skip
    assert rc == 2  # missing parameter files are named (load_ddpm)
    assert str(tmp_path / "none") in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "args"),
    [
        ("dts-nonlinear", ["--K", "4", "--L", "2", "--d", "2"]),
        ("dts-nonlinear", ["--K", "4", "--L", "1", "--d", "2", "--set", "reward=logistic"]),
        ("dts-linear", ["--K", "4", "--L", "3", "--d", "2", "--set", "reward=logistic"]),
        (
            "dts-swiss-roll",
            ["--K", "4", "--L", "2", "--pretrain-samples", "16", "--set", "pretrain_epochs=5"],
        ),
    ],
)
def test_every_dts_experiment_runs_with_its_default_agents(tmp_path, experiment, args):
    _simulate(tmp_path, experiment, *args)


def test_ablation_command_writes_a_table_and_a_plot(tmp_path, capsys):
    from ppl_bandits.cli import main as ablation_main

    out = tmp_path / "abl"
    rc = ablation_main(["ablation", "--experiment", "dts-linear", "--over", "K", "--values", "3,5",
                        "--runs", "2", "--rounds", "5", "--agents", "LinTS", "--set", "dim=2",
                        "--set", "num_effects=1", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    rows = np.genfromtxt(out / "ablation.csv", delimiter=",", names=True, dtype=None)
    assert rows["value"].tolist() == [3, 5] and (out / "ablation.png").is_file()
    assert json.loads((out / "ablation.json").read_text())["seed"] == 0
    capsys.readouterr()
    bad = ablation_main(["ablation", "--over", "K", "--values", "3", "--set", "num_actions=4",
                         "--out", str(tmp_path / "bad")])  # fmt: skip
    assert bad == 2  # the swept option cannot also be fixed
    assert "num_actions is both swept" in capsys.readouterr().err


# --------------------------------------------------------------------------- baselines


def test_baselines_are_told_the_exact_marginal_prior(rng):
    """Linear links: the one-effect prior the per-action baselines get has each θ_a's exact
    marginal N(0, Σ_1,a + W_1 C_1 W_1ᵀ); a prior with other links (control) differs."""
    prior = random_diffusion_prior(rng, 3, 2, 2)
    mean, cov = marginal_prior(marginal_mixed_effect_prior(prior))
    exact = marginal_action_prior(prior)
    np.testing.assert_allclose(mean, exact.mean, atol=1e-6)
    np.testing.assert_allclose(cov, exact.cov, rtol=1e-5, atol=1e-6)
    other = prior._replace(links=prior.links * 0.5)
    assert not np.allclose(marginal_action_prior(other).cov, cov, rtol=1e-3)


@pytest.mark.slow
def test_baselines_are_told_the_moment_matched_prior_for_neural_links():
    K, L, d = 2, 2, 2
    eye = jnp.broadcast_to(jnp.eye(d), (L, d, d))
    nl = NeuralLink(init_mlp(jax.random.key(5), d, 8), jnp.zeros(L), -jnp.ones(L))
    prior = diffusion_prior(eye, eye[0], num_actions=K, neural=nl)
    key = jax.random.key(3)
    mean, cov = marginal_prior(jax.jit(marginal_mixed_effect_prior)(prior, key))
    ref = marginal_action_prior(prior, key)
    np.testing.assert_allclose(mean, ref.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, ref.cov, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="key is None"):
        marginal_mixed_effect_prior(prior)
