"""Agents of the diffusion family: dTS (Aouali 2025) and the HierTS-1/HierTS-2 baselines on the
marginalised hierarchy.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from models.diffusion import DiffusionPrior, apply_link
from ppl_bandits.core.claims import GaussianClaim, SampledClaim
from ppl_bandits.core.laplace import NEWTON_MAX_ITER, NEWTON_TOL, laplace_terms
from ppl_bandits.core.likelihood import (
    History,
    SufficientStats,
    check_likelihood,
    history_add,
    history_init,
)
from ppl_bandits.core.linalg import chol_inverse, inverse_and_sqrt, sym
from ppl_bandits.core.types import Agent
from ppl_bandits.diffusion.posterior import (
    METHODS,
    LatentTerms,
    descend,
    descend_latents,
    hierts1_prior,
    hierts2_prior,
    latent_terms,
    marginal_action_prior,
    recursion_gaussian,
    resolve_method,
    sample_posterior,
    structural_gaussian,
    upward_recursion,
)
from ppl_bandits.mixed_effect.agents import mets

__all__ = [
    "DIFFUSION_AGENT_NAMES",
    "DTSState",
    "diffusion_sites",
    "dts",
    "dts_approximation_claim",
    "dts_newton_failures",
    "dts_posterior",
    "dts_sampler",
    "hier_ts_1",
    "hier_ts_2",
    "make_diffusion_agent",
    "sample_scores",
    "state_stats",
]


def sample_scores(key, state: DTSState, contexts):
    r"""One posterior draw of the scores :math:`x_a^\top\theta_a` of every action.

    Given ψ_1 the θ_a are independent Gaussians, so :math:`x_a^\top\theta_a \mid \psi_1
    \sim \mathcal{N}(x_a^\top(\hat\Sigma_aS_a f_1(\psi_1) + \hat\Sigma_aB_a), \|R_a^\top x_a\|^2)`
    (:math:`\hat\Sigma_aS_a f_1(\psi_1) + \hat\Sigma_aB_a` is θ_a's conditional mean): the
    same law as scoring a full θ draw (:func:`descend`), with K normals instead of K d.
    """
    keys = jax.random.split(key, state.prior.num_levels + 1)
    psi = descend_latents(keys, state.prior, state.latent)
    f1 = apply_link(state.prior, 1, psi[0])
    # Batched matrix-vector products (einsum): under the runner's vmap these are several
    # times faster on CPU than the equivalent multiply-and-sum.
    u = jnp.einsum("kij,ki->kj", state.cond_feed, contexts)  # (Σ̂_a S_a)ᵀ x_a
    v = jnp.einsum("kij,ki->kj", state.cond_sqrt, contexts)  # R_aᵀ x_a
    mean = u @ f1 + jnp.sum(contexts * state.shift, -1)
    z = jax.random.normal(keys[-1], mean.shape, mean.dtype)
    return mean + jnp.sqrt(jnp.sum(v**2, -1)) * z


class DTSState(NamedTuple):
    """State of the dTS agents. Only the played action's rows change in a round."""

    G: jax.Array
    """(K, d, d) likelihood precision per action (σ⁻²ΣXXᵀ, or the Laplace H); K = 1 if shared."""
    B: jax.Array
    """(K, d) likelihood natural mean per action."""
    count: jax.Array
    """(K,) rounds per action (per slot)."""
    P: jax.Array
    """(K + 1, d, d) rows a < K: P_a = S_a Σ̂_a G_a, the precision of action a's observation
    of f_1(ψ_1); row K: Σ_a P_a, kept up to date in O(d²) per round (one array, so that
    XLA updates both rows in place)."""
    q: jax.Array
    """(K + 1, d) rows a < K: q_a = S_a Σ̂_a B_a, its natural mean; row K: Σ_a q_a."""
    S: jax.Array
    """(K, d, d) S_a = Σ_{1,a}⁻¹."""
    S_psi: jax.Array
    """(L, d, d) Σ_{ℓ+1}⁻¹ at [ℓ−1]."""
    cond_sqrt: jax.Array
    """(K, d, d) R_a with R_a R_aᵀ = Σ̂_a = (S_a + G_a)⁻¹."""
    cond_feed: jax.Array
    """(K, d, d) Σ̂_a S_a: the mean of θ_a | ψ_1 is cond_feed_a f_1(ψ_1) + shift_a."""
    shift: jax.Array
    """(K, d) Σ̂_a B_a."""
    latent: LatentTerms
    """The upward recursion for the current data (leaves (L, d, d) and (L, d))."""
    prior: DiffusionPrior
    """The prior (links and covariances), used by the downward pass."""
    noise_sd: jax.Array
    """() reward noise σ assumed by the Gaussian likelihood."""
    theta0: jax.Array
    """(K, d) Laplace expansion points (logistic; the prior mean otherwise)."""
    marg_mean: jax.Array
    """(K, d) marginal prior means of θ_a (the Laplace expansion prior)."""
    marg_prec: jax.Array
    """(K, d, d) marginal prior precisions."""
    history: History | None
    """Round buffer (logistic agents), else None."""
    newton_failures: jax.Array
    """() number of updates whose Newton iteration did not converge."""


def _dts_init(key, prior: DiffusionPrior, likelihood, horizon, shared, method) -> DTSState:
    K = 1 if shared else prior.num_actions
    d, dtype = prior.dim, prior.sigma_psi.dtype
    S = chol_inverse(prior.sigma_theta[:K])
    S_psi = chol_inverse(prior.sigma_psi)
    G = jnp.zeros((K, d, d), dtype)
    B = jnp.zeros((K, d), dtype)
    cond_cov, cond_sqrt, _ = inverse_and_sqrt(S + G)
    marg = marginal_action_prior(prior, key)
    zero = jnp.zeros((d, d), dtype)
    return DTSState(
        G=G,
        B=B,
        count=jnp.zeros((K,), jnp.int32),
        P=jnp.zeros((K + 1, d, d), dtype),
        q=jnp.zeros((K + 1, d), dtype),
        S=S,
        S_psi=S_psi,
        cond_sqrt=cond_sqrt,
        cond_feed=cond_cov @ S,
        shift=B,
        latent=upward_recursion(prior, S_psi, zero, jnp.zeros((d,), dtype), method),
        prior=prior,
        noise_sd=prior.noise_sd,
        theta0=marg.mean[:K],
        marg_mean=marg.mean[:K],
        marg_prec=chol_inverse(marg.cov[:K]),
        history=history_init(horizon, d, dtype) if likelihood == "logistic" else None,
        newton_failures=jnp.zeros((), jnp.int32),
    )


def _dts_refresh(state: DTSState, a, method) -> DTSState:
    """Recompute the played action's terms (O(d³)) and the recursion (O(L d³)).

    ``state.G`` and ``state.B`` already hold action ``a``'s new statistics. Only rows of
    the (K, ...) arrays are read or written, and every new row depends only on rows read
    after their array was written (G, B) or on old rows of its own array (P and q, whose
    last row is the sum): XLA then updates the rows in place inside the runner's scan. A
    row read from one array feeding the update of another makes XLA copy the whole
    (K, d, d) array every round (ten times slower at K = 10⁴, d = 20).
    """
    K = state.P.shape[0] - 1
    G_a, B_a, S_a = state.G[a], state.B[a], state.S[a]
    cond_cov, cond_sqrt, _ = inverse_and_sqrt(S_a + G_a)
    SC = S_a @ cond_cov
    P_a = sym(SC @ G_a)
    q_a = SC @ B_a
    rows = jnp.stack([jnp.asarray(a, jnp.int32), jnp.asarray(K, jnp.int32)])
    P = state.P.at[rows].set(jnp.stack([P_a, sym(state.P[K] + P_a - state.P[a])]))
    q = state.q.at[rows].set(jnp.stack([q_a, state.q[K] + q_a - state.q[a]]))
    P_sum, q_sum = P[K], q[K]
    return state._replace(
        P=P,
        q=q,
        cond_sqrt=state.cond_sqrt.at[a].set(cond_sqrt),
        cond_feed=state.cond_feed.at[a].set(SC.T),
        shift=state.shift.at[a].set(cond_cov @ B_a),
        latent=upward_recursion(state.prior, state.S_psi, P_sum, q_sum, method),
    )


def diffusion_sites(state: DTSState):
    """``(("psi", (L, d)), ("theta", (K, d)))``: the flattening of a dTS claim."""
    L, d = state.latent.shift.shape
    return (("psi", (L, d)), ("theta", (state.shift.shape[0], d)))


def state_stats(state: DTSState) -> SufficientStats:
    """The sufficient statistics (Ĝ_a, B̂_a, counts) a dTS state holds."""
    return SufficientStats(state.G, state.B, state.count)


def _chain_innovations(prior: DiffusionPrior, stats: SufficientStats, x, method: str):
    r"""The whitened innovations (p,) of x = (ψ, θ) flattened under the recursion's chain.

    ψ_L ~ N(shift_L, Σ̄_L), ψ_ℓ | ψ_{ℓ+1} ~ N(feed_ℓ f_{ℓ+1}(ψ_{ℓ+1}) + shift_ℓ, Σ̄_ℓ) and
    θ_a | ψ_1 ~ N(Σ̂_aS_a f_1(ψ_1) + Σ̂_aB_a, Σ̂_a), the factorization
    :func:`~ppl_bandits.diffusion.posterior.sample_posterior` draws from: each residual is
    solved against the square root R (RRᵀ = Σ) the sampler scales its normals by, so the
    result is standard normal when x is a draw, and
    :math:`\sum z^2 = \sum_\ell |e_\ell|^2_{\bar\Sigma_\ell^{-1}} +
    \sum_a |e_a|^2_{\hat\Sigma_a^{-1}}` (the joint Mahalanobis distance for linear links).
    Ordered (ψ_1, ..., ψ_L, θ_1, ..., θ_K).
    """
    _, lat = latent_terms(prior, stats, method)
    L, d = prior.num_levels, prior.dim
    K = stats.G.shape[0]
    psi = x[: L * d].reshape(L, d)
    theta = x[L * d :].reshape(K, d)
    S = chol_inverse(prior.sigma_theta[:K])
    cond_cov, cond_sqrt, _ = inverse_and_sqrt(S + stats.G)
    feed = cond_cov @ S
    shift = jnp.einsum("kij,kj->ki", cond_cov, stats.B)

    def white(sqrt, e):
        return solve_triangular(sqrt, e[..., None], lower=False)[..., 0]

    z_psi = [None] * L
    z_psi[L - 1] = white(lat.sqrt[L - 1], psi[L - 1] - lat.shift[L - 1])
    for level in range(1, L):
        loc = lat.feed[level - 1] @ apply_link(prior, level + 1, psi[level]) + lat.shift[level - 1]
        z_psi[level - 1] = white(lat.sqrt[level - 1], psi[level - 1] - loc)
    loc = jnp.einsum("kij,j->ki", feed, apply_link(prior, 1, psi[0])) + shift
    z_theta = white(cond_sqrt, theta - loc)
    return jnp.concatenate([jnp.stack(z_psi).reshape(-1), z_theta.reshape(-1)])


@functools.cache
def _dts_claim_functions(method: str):
    """The sampler and the whitening map of a dTS sampled claim with ``method``.

    One pair per method: claims of one method share their (static) functions, so that
    ``jit`` compiles a program over such claims once.
    """

    def draw(params, key, num: int):
        prior, stats = params
        keys = jax.random.split(key, num)
        psi, theta = jax.vmap(lambda k: sample_posterior(k, prior, stats, method))(keys)
        return jnp.concatenate([psi.reshape(num, -1), theta.reshape(num, -1)], axis=1)

    def whiten(params, x):
        prior, stats = params
        return _chain_innovations(prior, stats, x, method)

    return draw, whiten


def dts_sampler(state: DTSState) -> SampledClaim:
    """dTS's draw itself as a claim: one call of
    :func:`~ppl_bandits.diffusion.posterior.sample_posterior` per draw on the state's
    statistics (``method="dts"`` for neural links, ``"exact"`` for linear ones).

    The claim's ``whiten`` map gives the whitened innovations of a point under the same
    chain (ψ_L, ψ_ℓ | ψ_{ℓ+1} down to ψ_1, θ_a | ψ_1): standard normal when the point is
    a draw, whatever the links. ``params`` are (prior, statistics), the method is static,
    so ``jax.vmap(dts_sampler)`` gives a batch of claims.

    With linear links the squared norm of the innovations is the Mahalanobis distance
    under the Gaussian of :func:`dts_posterior`:

    >>> from models.diffusion import diffusion_prior
    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=3, links=jnp.eye(2)[None])
    >>> agent = dts()
    >>> state = agent.init(jax.random.key(0), p)
    >>> state = agent.update(jax.random.key(1), state, jnp.ones((3, 2)), 1, 0.5)
    >>> claim, g = dts_sampler(state), dts_posterior(state)
    >>> x = claim.sample(jax.random.key(2), 1)[0]
    >>> e = x - g.mean
    >>> q = float(jnp.sum(claim.whitened(x) ** 2))
    >>> abs(q - float(e @ jnp.linalg.solve(g.cov, e))) < 1e-4 * q
    True
    """
    method = "dts" if state.prior.neural is not None else "exact"
    draw, whiten = _dts_claim_functions(method)
    return SampledClaim(draw, (state.prior, state_stats(state)), diffusion_sites(state), whiten)


def dts_approximation_claim(state: DTSState) -> GaussianClaim:
    """The dTS approximation (W_ℓ dropped from the upward recursion) on a state with linear
    links: a deliberately wrong posterior unless every W_ℓ = I (a negative control)."""
    g = recursion_gaussian(state.prior, state_stats(state), "dts")
    return GaussianClaim(g.mean, g.cov, diffusion_sites(state))


def dts_posterior(state: DTSState):
    r"""The posterior a dTS state claims over (ψ_1, ..., ψ_L, θ_1, ..., θ_K).

    - Linear links: the Gaussian of the structural equations the cached terms define
      (the upward recursion ``latent``: Σ̄_ℓ = R_ℓR_ℓᵀ, feed Σ̄_ℓΣ_{ℓ+1}⁻¹, shift Σ̄_ℓB̄_ℓ;
      the action terms Σ̂_aS_a, Σ̂_aB_a, Σ̂_a = R_aR_aᵀ; downward means through W_ℓ), the
      terms its ``act`` uses (:func:`~ppl_bandits.diffusion.posterior.structural_gaussian`).
      With Gaussian rewards and the exact recursion this is the exact posterior.
    - Neural links: the dTS approximation is Gaussian only conditionally, so the claim is
      the law of one call of :func:`~ppl_bandits.diffusion.posterior.sample_posterior`
      (``method="dts"``) on the state's statistics, a
      :class:`~ppl_bandits.core.claims.SampledClaim`: exactly the draw dTS makes before its
      argmax.
    """
    if state.prior.neural is not None:
        return dts_sampler(state)
    sites = diffusion_sites(state)
    lat = state.latent
    g = structural_gaussian(
        state.prior.links,
        lat.feed,
        lat.shift,
        lat.sqrt @ jnp.swapaxes(lat.sqrt, -1, -2),
        state.cond_feed,
        state.shift,
        state.cond_sqrt @ jnp.swapaxes(state.cond_sqrt, -1, -2),
    )
    return GaussianClaim(g.mean, g.cov, sites)


def dts_newton_failures(state: DTSState) -> jax.Array:
    """() number of updates whose Newton iteration did not converge (0 for Gaussian rewards)."""
    return state.newton_failures


def dts(
    likelihood: str = "gaussian",
    *,
    shared: bool = False,
    method: str | None = None,
    horizon: int | None = None,
    name: str | None = None,
    newton_tol: float = NEWTON_TOL,
    newton_max_iter: int = NEWTON_MAX_ITER,
) -> Agent:
    """Diffusion Thompson sampling (dTS).

    Per round: ψ_L from its posterior, ψ_ℓ | ψ_{ℓ+1} down to ψ_1, then for every action the
    score x_aᵀθ_a drawn from its exact law given ψ_1 (vectorised; the shared variant draws
    θ itself), play the argmax, update the played action's terms (O(d³)) and the O(L d³)
    recursion. Cost O(L d³ + K d²) time and O((L + K) d²) memory per round.

    Parameters
    ----------
    likelihood : {"gaussian", "logistic"}
        "logistic" is dTS-GLM with the Laplace terms of :mod:`ppl_bandits.core.laplace`.
    shared : bool
        Shared-parameter dTS: one θ, reward of action a is g(φ(x, a)ᵀθ) with φ(x, a)
        the row a of the round's contexts.
    method : {None, "exact", "dts"}
        None picks "exact" for linear links (the exact posterior for Gaussian rewards)
        and "dts" (the approximation) for neural links.
    horizon : int
        Number of rounds (logistic only: sizes the history buffer).

    Examples
    --------
    >>> from models.diffusion import diffusion_prior
    >>> p = diffusion_prior(jnp.eye(2)[None], jnp.eye(2), num_actions=4, links=jnp.eye(2)[None])
    >>> agent = dts()
    >>> state = agent.init(jax.random.key(0), p)
    >>> x = jnp.ones((4, 2))
    >>> a = agent.act(jax.random.key(1), state, x)
    >>> int(agent.update(jax.random.key(2), state, x, a, 1.0).count.sum())
    1
    """
    check_likelihood(likelihood, horizon)
    if method is not None and method not in METHODS:
        raise ValueError(f"method is {method!r}; expected one of {METHODS} or None")
    if name is None:
        name = "dTS" if likelihood == "gaussian" else "dTS-GLM"
        if shared:
            name += "-shared"

    def _resolved(prior):
        return resolve_method(prior, method)

    def init(key, prior):
        return _dts_init(key, prior, likelihood, horizon, shared, _resolved(prior))

    def act(key, state: DTSState, contexts):
        if shared:
            _, theta = descend(
                key, state.prior, state.latent, state.cond_feed, state.shift, state.cond_sqrt
            )
            return jnp.argmax(contexts @ theta[0])
        return jnp.argmax(sample_scores(key, state, contexts))

    def update(key, state: DTSState, contexts, action, reward):
        del key
        m = _resolved(state.prior)
        x = contexts[action]
        slot = jnp.zeros((), jnp.int32) if shared else jnp.asarray(action, jnp.int32)
        count = state.count.at[slot].add(1)
        if likelihood == "gaussian":
            prec = 1.0 / state.noise_sd**2
            state = state._replace(
                count=count,
                G=state.G.at[slot].add(prec * jnp.outer(x, x)),
                B=state.B.at[slot].add(prec * reward * x),
            )
            return _dts_refresh(state, slot, m)
        hist = history_add(state.history, x, slot, reward)
        w = (hist.a == slot).astype(hist.y.dtype)
        lap = laplace_terms(
            hist.X,
            hist.y,
            w,
            state.marg_mean[slot],
            state.marg_prec[slot],
            state.theta0[slot],
            tol=newton_tol,
            max_iter=newton_max_iter,
        )
        state = state._replace(
            count=count,
            history=hist,
            theta0=state.theta0.at[slot].set(lap.point.mode),
            newton_failures=state.newton_failures + (~lap.point.converged).astype(jnp.int32),
            G=state.G.at[slot].set(lap.H),
            B=state.B.at[slot].set(lap.b),
        )
        return _dts_refresh(state, slot, m)

    return Agent(name, init, act, update, dts_posterior)


def hier_ts_1(*, name: str = "HierTS-1") -> Agent:
    """HierTS on the two-level hierarchy that keeps ψ_L (spec §Baselines); linear links."""
    return mets("gaussian", prior_map=hierts1_prior, name=name)


def hier_ts_2(*, name: str = "HierTS-2") -> Agent:
    """HierTS on the two-level hierarchy that keeps ψ_1 (spec §Baselines); linear links."""
    return mets("gaussian", prior_map=hierts2_prior, name=name)


DIFFUSION_AGENT_NAMES = ("dTS", "dTS-GLM", "dTS-shared", "dTS-GLM-shared", "HierTS-1", "HierTS-2")


def make_diffusion_agent(name: str, *, horizon: int | None = None) -> Agent:
    """Build a diffusion-family agent by name (case-insensitive).

    "dTS" is exact with linear links and the dTS approximation with neural links.

    >>> make_diffusion_agent("dts-glm", horizon=10).name
    'dTS-GLM'
    """
    table = {n.lower(): n for n in DIFFUSION_AGENT_NAMES}
    canonical = table.get(str(name).lower())
    if canonical is None:
        raise ValueError(f"agent is {name!r}; expected one of {', '.join(DIFFUSION_AGENT_NAMES)}")
    builders = {
        "dTS": lambda: dts(),
        "dTS-GLM": lambda: dts("logistic", horizon=horizon),
        "dTS-shared": lambda: dts(shared=True),
        "dTS-GLM-shared": lambda: dts("logistic", shared=True, horizon=horizon),
        "HierTS-1": hier_ts_1,
        "HierTS-2": hier_ts_2,
    }
    return builders[canonical]()
