"""Point estimates and the maximum prediction error of the HCSA comparison (Kim 2025, Sec. 6)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits.core.types import Agent, Environment
from ppl_bandits.linear_contextual.environment import check_int

__all__ = [
    "PREDICTION_ERROR_SALT",
    "point_estimate",
    "prediction_error",
    "prediction_error_curve",
]


def point_estimate(agent: Agent, state):
    r"""The point estimate θ̂ an agent's state holds for the coming round (d,), vmap-compatible.

    The mean of the posterior the agent claims, ``agent.posterior(state).mean``: for
    HCSA+TS :math:`V_t^{+}W_t` (eq. 15), for LinTS-shared :math:`G^{-1}B`, for LinUCB-shared,
    DRTS, HyRan and SupLinUCB their regularised estimates (see each agent's claim in
    :mod:`ppl_bandits.linear_contextual.baselines` and
    :func:`ppl_bandits.linear_contextual.hcsa.hcsa_claim`). Nothing here reads a state field.

    Raises
    ------
    ValueError
        For an agent that claims no posterior (e.g. uniform play), naming its state's type.

    Examples
    --------
    >>> from models.linear_bandit import isotropic_linear_bandit_prior
    >>> from ppl_bandits.linear_contextual.baselines import shared_lin_ts
    >>> agent = shared_lin_ts()
    >>> point_estimate(agent, agent.init(jax.random.key(0), isotropic_linear_bandit_prior(2)))
    Array([0., 0.], dtype=float32)
    """
    if agent.posterior is None:
        raise ValueError(
            f"state is a {type(state).__name__} of agent {agent.name}, which claims no "
            "posterior; expected an agent with a point estimate (HCSA+TS, LinTS-shared, "
            "LinUCB-shared, DRTS, HyRan or SupLinUCB)"
        )
    return agent.posterior(state).mean


#: Salt of the keys of the contexts on which the prediction error is measured
#: (``fold_in(run_key, PREDICTION_ERROR_SALT)``); the runner uses salts 0, 1 and 2.
PREDICTION_ERROR_SALT = 0x5EED


def prediction_error(theta_hat, theta, contexts):
    r"""Maximum prediction error over the arms, :math:`\max_k |x_k^\top(\hat\theta - \theta^*)|`.

    Parameters
    ----------
    theta_hat, theta : arrays (..., d)
    contexts : array (..., N, d)

    >>> prediction_error(jnp.array([1.0, 0.0]), jnp.zeros(2), jnp.array([[0.5, 1.0], [-2.0, 0.0]]))
    Array(2., dtype=float32)
    """
    return jnp.max(jnp.abs(contexts @ (theta_hat - theta)[..., :, None])[..., 0], axis=-1)


def prediction_error_curve(
    env: Environment, problems, states: dict, *, agent: Agent, draws: int = 1
):
    r"""Prediction error of the states kept at checkpoints: (rounds, values of shape (R, C)).

    For the state after t rounds (the estimate θ̂_t the agent brings to round t + 1),

    .. math:: e_t = \frac1D\sum_{j=1}^{D}\max_k |x^{(j)}_{k}{}^\top(\hat\theta_t - \theta^*)|,

    with :math:`x^{(j)}` ~ the environment's contexts of round index t (0-based, so the
    drifting environment is at the right phase), drawn with the keys
    ``fold_in(fold_in(fold_in(run_key, PREDICTION_ERROR_SALT), t), j)``: the same contexts for
    every agent (common random numbers), independent of the simulation's own draws. D = 1
    is the paper's metric (Fig. 3) with a fresh context set; D > 1 averages out the context
    draw, with the same expectation.

    Parameters
    ----------
    env : Environment
    problems : ppl_bandits.core.runner.Problems
    states : dict {t: state with leading axis R}
    agent : Agent
        The agent whose states these are; θ̂ is the mean of ``agent.posterior``.
    draws : int >= 1
        D, context sets per checkpoint.
    """
    draws = check_int("draws", draws, 1)
    rounds = np.array(sorted(states), dtype=np.int64)
    if rounds.size == 0:
        raise ValueError("states is empty; expected {round: state} for at least one round")
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(states[t] for t in rounds))
    if agent.posterior is None:
        point_estimate(agent, states[rounds[0]])  # raises the named error
    values = _prediction_error_fn(env, agent.posterior, draws)(
        stacked, jnp.asarray(rounds, jnp.int32), problems.params, problems.run_keys
    )
    return rounds, np.asarray(values).T


@functools.lru_cache(maxsize=16)  # bounded, like the runner's compiled pieces
def _prediction_error_fn(env: Environment, posterior, draws: int):
    def one(state, t, params, run_key):  # one checkpoint, one run
        theta_hat = posterior(state).mean
        base = jax.random.fold_in(jax.random.fold_in(run_key, PREDICTION_ERROR_SALT), t)

        def err(j):
            x = env.contexts(jax.random.fold_in(base, j), params, t)
            return prediction_error(theta_hat, params.theta.astype(x.dtype), x)

        return jnp.mean(jax.vmap(err)(jnp.arange(draws)))

    per_run = jax.vmap(one, in_axes=(0, None, 0, 0))
    return jax.jit(jax.vmap(per_run, in_axes=(0, 0, None, None)))
