"""Simulation runner: ``jax.lax.scan`` over rounds, ``jax.vmap`` over independent runs.

All agents run on the same problems and the same context and reward noise streams for a
given seed (common random numbers): run ``r`` uses ``fold_in(key, r)`` to draw its problem,
and round ``t`` splits ``fold_in(run_key, t)`` into keys for the context, the agent's act,
the reward and the agent's update. Only the act and update keys depend on the agent.

Rounds are scanned in chunks so that a progress bar can advance between chunks; each chunk
is one compiled ``scan`` (compiled once, reused), so chunking costs a Python call per chunk.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppl_bandits.core.types import Agent, Environment

__all__ = [
    "Problems",
    "SimulationResult",
    "draw_problems",
    "name_salt",
    "round_keys",
    "simulate",
]


class SimulationResult(NamedTuple):
    """What a simulation returns; leading axis is the run."""

    regret: jax.Array
    """(R, n) expected regret per round, max_i r_i − r_{A_t}."""
    actions: jax.Array
    """(R, n) played actions."""
    contexts: jax.Array
    """(R, n, d) contexts of the played actions."""
    rewards: jax.Array
    """(R, n) observed rewards."""
    state: Any
    """Final agent states (a pytree with leading axis R)."""
    prior: Any
    """The prior each run's agent was told (leading axis R)."""
    params: Any
    """True parameters of each run (leading axis R)."""
    checkpoint_states: dict
    """Agent states after the first t rounds, for each requested checkpoint t."""


class Problems(NamedTuple):
    """Problems drawn for a set of runs, shared by every agent of an experiment."""

    prior: Any
    """The prior each run's agents are told (leading axis R)."""
    params: Any
    """True parameters of each run (leading axis R)."""
    run_keys: jax.Array
    """(R,) per-run keys; rounds and agent initialisation derive their keys from them."""


def draw_problems(key, env: Environment, num_runs: int) -> Problems:
    """Draw ``num_runs`` problems; run ``r`` uses ``fold_in(key, r)``.

    Drawing once and passing the result to :func:`simulate` for every agent compiles the
    environment's draw once per experiment instead of once per agent.
    """
    if int(num_runs) != num_runs or num_runs < 1:
        raise ValueError(f"num_runs is {num_runs!r}; expected an integer >= 1")
    run_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(num_runs))
    prior, params = _make_draw(env)(run_keys)
    return Problems(prior, params, run_keys)


@functools.lru_cache(maxsize=64)
def _make_draw(env: Environment):
    def one(run_key):
        return env.draw(jax.random.fold_in(run_key, 0))

    return jax.jit(jax.vmap(one))


def round_keys(run_key, t):
    k = jax.random.fold_in(run_key, t)
    k_ctx, k_act, k_rew, k_upd = jax.random.split(k, 4)
    return k_ctx, k_act, k_rew, k_upd


@functools.lru_cache(maxsize=64)
def _make_chunk(env: Environment, agent: Agent, length: int):
    """Compiled chunk of ``length`` rounds, cached per (environment, agent, length)."""

    def step(carry, t):
        state, run_key, params = carry
        k_ctx, k_act, k_rew, k_upd = round_keys(run_key, t)
        # Agent-specific keys: mix in the agent's name so two agents never share noise.
        k_act = jax.random.fold_in(k_act, name_salt(agent.name))
        k_upd = jax.random.fold_in(k_upd, name_salt(agent.name))
        ctx = env.contexts(k_ctx, params, t)
        a = agent.act(k_act, state, ctx)
        means = env.mean_rewards(params, ctx)
        y = env.reward(k_rew, params, ctx, a)
        state = agent.update(k_upd, state, ctx, a, y)
        out = (jnp.max(means) - means[a], a, ctx[a], y)
        return (state, run_key, params), out

    def chunk(carry, t0):
        return jax.lax.scan(step, carry, t0 + jnp.arange(length))

    return jax.jit(jax.vmap(chunk, in_axes=(0, None)))


@functools.lru_cache(maxsize=64)
def _make_setup(agent: Agent):
    def setup(run_key, prior):
        k_init = jax.random.fold_in(jax.random.fold_in(run_key, 1), name_salt(agent.name))
        return agent.init(k_init, prior), jax.random.fold_in(run_key, 2)

    return jax.jit(jax.vmap(setup))


def name_salt(name: str) -> int:
    return int.from_bytes(name.encode()[:4].ljust(4, b"\0"), "little") & 0x7FFFFFFF


def simulate(
    key,
    env: Environment,
    agent: Agent,
    *,
    num_rounds: int,
    num_runs: int = 1,
    chunk_size: int | None = None,
    progress: bool = False,
    problems: Problems | None = None,
    checkpoints=(),
) -> SimulationResult:
    """Run ``agent`` on ``num_runs`` independent problems drawn by ``env`` for ``num_rounds``.

    Parameters
    ----------
    key : PRNG key
    env : Environment
    agent : Agent
    num_rounds : int (>= 1)
    num_runs : int (>= 1)
    chunk_size : int, optional
        Rounds per compiled scan; by default about a tenth of the horizon.
    progress : bool
        Show a progress bar over chunks.
    problems : Problems, optional
        Problems from :func:`draw_problems` with the same ``key`` and ``num_runs``;
        drawn here when not given.
    checkpoints : sequence of int, optional
        Rounds t (1 <= t <= num_rounds) after which the agent's state is kept in
        ``checkpoint_states[t]``; chunks end at every checkpoint.

    Examples
    --------
    >>> from ppl_bandits.mixed_effect.baselines import lin_ts
    >>> from ppl_bandits.mixed_effect.environment import mixed_effect_environment
    >>> res = simulate(jax.random.key(0), mixed_effect_environment(5, 2, 2), lin_ts(),
    ...                num_rounds=20, num_runs=3)
    >>> res.regret.shape, res.contexts.shape
    ((3, 20), (3, 20, 2))
    """
    for name, value in (("num_rounds", num_rounds), ("num_runs", num_runs)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    checkpoints = sorted({int(c) for c in checkpoints})
    if checkpoints and (checkpoints[0] < 1 or checkpoints[-1] > num_rounds):
        raise ValueError(f"checkpoints are {checkpoints}; expected rounds in [1, {num_rounds}]")
    if chunk_size is None:
        chunk_size = max(1, math.ceil(num_rounds / 10))
        if checkpoints:
            # One compiled chunk length that divides every checkpoint, when not too short.
            g = functools.reduce(math.gcd, [*checkpoints, num_rounds])
            if num_rounds // g <= 200:
                chunk_size = g
    if problems is None:
        problems = draw_problems(key, env, num_runs)
    elif problems.run_keys.shape[0] != num_runs:
        raise ValueError(
            f"problems holds {problems.run_keys.shape[0]} runs; expected num_runs={num_runs}"
        )
    prior, params = problems.prior, problems.params

    state, loop_keys = _make_setup(agent)(problems.run_keys, prior)
    carry = (state, loop_keys, params)
    outputs = []
    ends = sorted({*range(chunk_size, num_rounds, chunk_size), *checkpoints, num_rounds})
    plan = [(end - start, start) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    kept = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_rounds, desc=agent.name, unit="round", leave=False)
    for length, t0 in plan:
        carry, out = _make_chunk(env, agent, length)(carry, t0)
        outputs.append(out)
        if t0 + length in checkpoints:
            kept[t0 + length] = carry[0]
        if bar is not None:
            jax.block_until_ready(carry)
            bar.update(length)
    if bar is not None:
        bar.close()
    regret, actions, ctx, rewards = (
        jnp.concatenate([o[i] for o in outputs], axis=1) for i in range(4)
    )
    return SimulationResult(regret, actions, ctx, rewards, carry[0], prior, params, kept)


def replay(key, agent: Agent, prior, history, num_actions: int, checkpoints) -> dict:
    """The agent's states after the first t rounds of a recorded ``history``, per checkpoint t.

    ``history`` is (contexts (n, d), actions (n,), rewards (n,)) with the context of the
    played action per round; each round calls ``agent.update`` with that context in the
    played action's row of a (``num_actions``, d) context matrix (the update reads that
    row only) and the key ``fold_in(key, t)``. The initial state is
    ``agent.init(key, prior)``; checkpoint 0 is that state.
    """
    contexts, actions, rewards = (jnp.asarray(a) for a in history)
    n, d = contexts.shape
    ticks = sorted({int(t) for t in checkpoints})
    if not ticks or ticks[0] < 0 or ticks[-1] > n:
        raise ValueError(f"checkpoints are {ticks}; expected rounds in [0, {n}] of the history")

    def step(state, t):
        x = jnp.broadcast_to(contexts[t], (num_actions, d))
        return agent.update(jax.random.fold_in(key, t), state, x, actions[t], rewards[t]), None

    run = jax.jit(lambda state, ts: jax.lax.scan(step, state, ts)[0])
    state = agent.init(key, prior)
    out, done = {}, 0
    for t in ticks:
        if t > done:
            state = run(state, jnp.arange(done, t))
            done = t
        out[t] = state
    return out
