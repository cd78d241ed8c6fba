"""The two protocols every part of the fast path speaks: agents and environments.

An agent is three pure functions with the PRNG key first (BlackJAX/Optax style):

- ``init(key, prior) -> state``: ``prior`` is the problem's prior specification (for the
  mixed-effect family a :class:`models.mixed_effect.MixedEffectPrior`); each agent derives
  from it what it needs (LinTS its marginal prior, HierTS its one-effect prior, ...).
- ``act(key, state, contexts) -> action``: ``contexts`` has shape ``(K, d)``, row ``i``
  being the context of action ``i`` this round (a shared context is broadcast).
- ``update(key, state, contexts, action, reward) -> state``.
- ``posterior(state) -> claim``: the posterior the state claims, a
  :class:`~ppl_bandits.core.claims.GaussianClaim` (moments over a documented flattening of
  the model's latent sites) or a :class:`~ppl_bandits.core.claims.SampledClaim` (a sampler).
  It is defined beside the state, in the family's own module, and it is the only way
  validation (audits, calibration, reports) and the metrics read an agent: nothing outside a
  family reads a family's state fields. ``None`` for an agent that claims no posterior.

An environment draws a problem and then serves rounds:

- ``draw(key) -> (prior, params)``: the prior the agents are told and the true
  parameters, drawn from the generative model.
- ``contexts(key, params, t) -> (K, d)``: ``t`` is the round index (0-based, traced), so
  non-iid context sequences (drift) can depend on it; iid environments ignore it.
- ``mean_rewards(params, contexts) -> (K,)``: expected rewards, used for expected regret.
- ``reward(key, params, contexts, action) -> ()``: a realized reward.

States and parameters are NamedTuples of arrays, so ``jax.jit`` and ``jax.vmap`` accept them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Agent", "Environment"]


class Agent(NamedTuple):
    """A bandit agent as pure functions (see module docstring)."""

    name: str
    init: Callable[..., Any]
    act: Callable[..., Any]
    update: Callable[..., Any]
    posterior: Callable[..., Any] | None = None
    """state -> the claim of :mod:`ppl_bandits.core.claims` (None: no posterior is claimed)."""


class Environment(NamedTuple):
    """A bandit environment as pure functions (see module docstring)."""

    name: str
    draw: Callable[..., Any]
    contexts: Callable[..., Any]
    mean_rewards: Callable[..., Any]
    reward: Callable[..., Any]
