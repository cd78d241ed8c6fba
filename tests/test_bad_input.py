"""Bad input gets a clear error at the boundary that names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.mixed_effect import fig2_prior, mixed_effect_model, mixed_effect_prior
from ppl_bandits.cli import main
from ppl_bandits.core.runner import simulate
from ppl_bandits.experiments.catalog import build_experiment
from ppl_bandits.mixed_effect.agents import mets
from ppl_bandits.mixed_effect.baselines import lin_ucb
from ppl_bandits.mixed_effect.environment import mixed_effect_environment
from ppl_bandits.mixed_effect.posterior import factored_effect_posterior


def _good():
    return {
        "mu_psi": jnp.zeros(4),
        "sigma_psi": jnp.eye(4),
        "weights": jnp.ones((3, 2)),
        "sigma0": jnp.eye(2),
        "noise_sd": 1.0,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mu_psi": jnp.zeros(5)}, r"mu_psi has shape \(5,\); expected \(L\*d,\) with L=2"),
        ({"sigma_psi": jnp.eye(3)}, r"sigma_psi has shape \(3, 3\); expected \(4, 4\)"),
        ({"sigma0": jnp.eye(3)}, r"sigma0 has shape \(3, 3, 3\); expected \(3, 2, 2\)"),
        ({"sigma_psi": -jnp.eye(4)}, r"sigma_psi is not positive definite"),
        ({"sigma0": jnp.array([[1.0, 2.0], [0.0, 1.0]])}, r"sigma0 is not symmetric"),
        ({"mu_psi": jnp.array([0.0, np.nan, 0, 0])}, r"mu_psi has 1 non-finite entries"),
        ({"noise_sd": 0.0}, r"noise_sd is 0.0; expected a finite positive number"),
        ({"noise_sd": -1.0}, r"noise_sd is -1.0"),
        ({"weights": jnp.ones(3)}, r"weights has shape \(3,\); expected \(K, L\)"),
        ({"weights": None}, r"give exactly one of weights"),
    ],
)
def test_prior_validation(change, message):
    kw = _good() | change
    with pytest.raises(ValueError, match=message):
        mixed_effect_prior(kw.pop("mu_psi"), kw.pop("sigma_psi"), **kw)


def test_mixing_matrices_shape_is_checked():
    with pytest.raises(ValueError, match=r"mixing has shape \(3, 2, 2\); expected \(K, L, d, d\)"):
        mixed_effect_prior(jnp.zeros(4), jnp.eye(4), mixing=jnp.ones((3, 2, 2)), sigma0=jnp.eye(2))


def _model_args():
    prior = fig2_prior(jax.random.key(0), 4)
    X = jnp.ones((3, 2))
    return prior, X, jnp.array([0, 1, 2]), jnp.array([0.5, 1.0, -1.0])


@pytest.mark.parametrize(
    ("which", "value", "message"),
    [
        ("rewards", jnp.array([0.5, np.nan, 1.0]), r"rewards has 1 non-finite entries"),
        ("rewards", jnp.ones(2), r"rewards has shape \(2,\); expected \(3\)"),
        ("contexts", jnp.ones((3, 5)), r"contexts has shape \(3, 5\); expected \(\*, 2\)"),
        ("actions", jnp.array([0, 1, 4]), r"actions has values in \[0, 4\]; expected \[0, 4\)"),
        ("actions", jnp.array([0.0, 1.0, 2.0]), r"actions has dtype float"),
    ],
)
def test_history_validation(which, value, message):
    from numpyro import handlers

    prior, X, A, Y = _model_args()
    args = {"contexts": X, "actions": A, "rewards": Y} | {which: value}
    with pytest.raises(ValueError, match=message):
        handlers.trace(handlers.seed(mixed_effect_model, 0)).get_trace(prior, **args)


def test_logistic_rewards_must_be_binary():
    from numpyro import handlers

    prior, X, A, Y = _model_args()
    with pytest.raises(ValueError, match="rewards must be 0 or 1"):
        handlers.trace(handlers.seed(mixed_effect_model, 0)).get_trace(
            prior, X, A, Y, likelihood="logistic"
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mixed_effect_environment(0, 2, 2), r"num_actions is 0; expected an integer >= 1"),
        (lambda: mixed_effect_environment(4, 2, 2, reward="poisson"), r"reward is 'poisson'"),
        (lambda: mixed_effect_environment(4, 2, 2, context="per-arm"), r"context is 'per-arm'"),
        (lambda: build_experiment("mets-poisson"), r"experiment is 'mets-poisson'; expected one"),
        (lambda: build_experiment("mets-linear", num_rounds=0), r"num_rounds is 0"),
        (lambda: build_experiment("mets-linear", num_runs=float("inf")), r"num_runs is inf"),
        (lambda: build_experiment("mets-linear", num_actions=float("nan")), r"num_actions is nan"),
        (lambda: build_experiment("mets-linear", num_actions=2.5), r"num_actions is 2.5"),
        (lambda: mets("poisson"), r"likelihood is 'poisson'"),
        (lambda: mets(factored="sideways"), r"factored is 'sideways'"),
        (lambda: lin_ucb(delta=1.5), r"delta is 1.5; expected a number in \(0, 1\)"),
        (
            lambda: factored_effect_posterior(fig2_prior(jax.random.key(0), 3), None, "bogus"),
            r"variant is 'bogus'",
        ),
        (
            lambda: simulate(
                jax.random.key(0), mixed_effect_environment(3, 1, 2), mets(), num_rounds=0
            ),
            r"num_rounds is 0",
        ),
    ],
)
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cli_reports_unknown_names(capsys):
    assert main(["simulate", "no-such-experiment", "--rounds", "2"]) == 2
    assert "experiment is 'no-such-experiment'" in capsys.readouterr().err
    assert main(["simulate", "mets-linear", "--agents", "meTS-Typo", "--rounds", "2"]) == 2
    assert "agent is 'meTS-Typo'" in capsys.readouterr().err


def test_whole_floats_from_set_become_ints():
    """``--set num_actions=1e2`` reads as the float 100.0; it is accepted and stored as 100
    (the fractional values above are the control)."""
    _, _, settings = build_experiment("mets-linear", num_actions=1e2, num_rounds=3.0)
    assert settings["num_actions"] == 100 and isinstance(settings["num_actions"], int)
    assert settings["num_rounds"] == 3 and isinstance(settings["num_rounds"], int)


def test_cli_rejects_non_positive_counts(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "mets-linear", "--runs", "0"])
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
