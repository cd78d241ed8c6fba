r"""MovieLens ratings: loaders, optional download, the bandit environment and its experiments.

The MovieLens licence (GroupLens, University of Minnesota) forbids redistribution, so no
data ship with this package: the user gives the path of a file or of an unpacked archive,
or calls :func:`download` (which verifies the archive against the published checksum).

Formats (detected from the file name, else from the content):

==========  =================  ===============================================
format      file               line
==========  =================  ===============================================
``100k``    ``u.data``         ``user<TAB>item<TAB>rating<TAB>timestamp``
``1m``      ``ratings.dat``    ``user::item::rating::timestamp``
``latest``  ``ratings.csv``    header ``userId,movieId,rating,timestamp``, then rows
==========  =================  ===============================================

A loaded :class:`Ratings` holds 0-based user and item indices and the ratings, with the
original ids in sorted order (``user_ids[u]`` is the id of user index ``u``).

**Environment** (:func:`movielens_environment`; Aouali, Kveton, Katariya 2023, Fig. 3).
A rank-``d`` factorization (:func:`ppl_bandits.data.embeddings.fit_embeddings`) gives user
vectors :math:`x_j` and movie vectors :math:`\theta_i`; a Gaussian mixture with ``L``
components on the movie vectors gives the proxy mixed-effect prior
(:func:`ppl_bandits.data.embeddings.proxy_prior`). Each run samples ``K`` movies without
replacement; their vectors are the true :math:`\theta_i` and their GMM responsibilities
the mixing weights. Each round a user is drawn uniformly and :math:`x_j` is the context of
every action; rewards are :math:`\mathcal{N}(x_j^\top\theta_i, \sigma^2)` (σ = 0.5, the
authors' code) or :math:`\mathrm{Bernoulli}(\mathrm{sigmoid}(x_j^\top\theta_i))`.

**dTS** (:func:`movielens_dts_environment`; Aouali 2025): a DDPM is pre-trained on the
vectors of a random half of the movies and the runs sample their actions from the other
half (:func:`pretrain_movie_prior`).

Experiments (``ppl-bandits simulate NAME --data PATH``):

======================  ==============================================================
movielens-linear        Fig. 3 (left): K=100, L=5, d=5, n=5000, 50 runs, Gaussian
                        rewards; meTS-Lin, meTS-Lin-Fa, HierTS, LinTS, LinUCB
movielens-logistic      Fig. 3 (right): logistic rewards; meTS-GLM, meTS-GLM-Fa, meTS-Lin,
                        HierTS, GLM-TS, UCB-GLM
movielens-dts           DDPM prior on half the movies; dTS, meTS-Lin, LinTS, HierTS
                        (``--set reward=logistic``: dTS-GLM, meTS-GLM, GLM-TS, HierTS)
======================  ==============================================================
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.mixed_effect import mixed_effect_prior
from ppl_bandits.core.types import Agent, Environment
from ppl_bandits.data.embeddings import fit_embeddings, fit_proxy_structure
from ppl_bandits.data.movielens import Ratings, load_ratings, resolve_file
from ppl_bandits.diffusion.agents import DIFFUSION_AGENT_NAMES, make_diffusion_agent
from ppl_bandits.diffusion.ddpm import DDPMSettings, ddpm_prior, load_ddpm, save_ddpm, train_ddpm
from ppl_bandits.experiments.mets import mixed_effect_agents
from ppl_bandits.experiments.registry import ExperimentSpec, check_positive_ints
from ppl_bandits.mixed_effect.catalog import AGENT_NAMES, make_agent, resolve_agent_name
from ppl_bandits.mixed_effect.environment import MixedEffectParams

__all__ = [
    "CONTEXT_KINDS",
    "MovieLensDTSPrior",
    "MovieLensStructure",
    "PretrainedMovies",
    "movielens_dts_environment",
    "movielens_environment",
    "movielens_structure",
    "pretrain_movie_prior",
    "reading",
    "register_experiments",
]


#: Reward noise σ of the linear MovieLens rewards (the authors' code).
NOISE_SD = 0.5

REWARDS = ("linear", "logistic")

CONTEXT_KINDS = ("shared", "pool")

_CACHE: dict = {}


def _ratings_key(data) -> tuple:
    if isinstance(data, Ratings):
        h = hashlib.sha1()
        for a in (data.user, data.item, data.rating):
            h.update(np.ascontiguousarray(a).tobytes())
        return ("memory", h.hexdigest())
    file, _ = resolve_file(data)
    st = file.stat()
    return (str(file.resolve()), st.st_size, st.st_mtime_ns)


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _as_ratings(data) -> tuple[Ratings, tuple]:
    if data is None:
        raise ValueError(
            "data is None; expected the path of MovieLens ratings (u.data, ratings.dat, "
            "ratings.csv or an unpacked archive; see ppl_bandits.data.movielens.download)"
        )
    key = _ratings_key(data)
    if isinstance(data, Ratings):
        return data, key
    return _cached(("ratings", key), lambda: load_ratings(data)), key


class MovieLensStructure(NamedTuple):
    """Embeddings and proxy structure of a ratings set (cached per data, rank, seed, L)."""

    embeddings: object
    """:class:`ppl_bandits.data.embeddings.Embeddings`."""
    movies: np.ndarray
    """(N,) indices of the movies with a training rating (the candidate actions)."""
    users: np.ndarray
    """(U',) indices of the users with a training rating (the candidate contexts)."""
    proxy: object
    """:class:`ppl_bandits.data.embeddings.ProxyStructure` fit on the candidate movies' vectors."""


def movielens_structure(
    data, *, rank: int = 5, num_effects: int = 5, seed: int = 0, reg: float = 0.1, holdout=0.1
) -> MovieLensStructure:
    """Embeddings (ALS) and GMM proxy structure of a ratings set, cached in memory."""

    ratings, key = _as_ratings(data)
    emb = _cached(
        ("emb", key, rank, seed, reg, holdout),
        lambda: fit_embeddings(ratings, rank=rank, reg=reg, holdout=holdout, seed=seed),
    )
    movies = np.flatnonzero(emb.item_count > 0)
    users = np.flatnonzero(emb.user_count > 0)
    proxy = _cached(
        ("gmm", key, rank, seed, reg, holdout, num_effects),
        lambda: fit_proxy_structure(emb.item[movies], num_effects, seed=seed),
    )
    return MovieLensStructure(emb, movies, users, proxy)


def _check_env_args(reward, num_actions, num_effects, dim, rank, context, available):
    for name, value in (("num_actions", num_actions), ("num_effects", num_effects), ("dim", dim)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    if reward not in REWARDS:
        raise ValueError(f"reward is {reward!r}; expected one of {REWARDS}")
    if context not in CONTEXT_KINDS:
        raise ValueError(f"context is {context!r}; expected one of {CONTEXT_KINDS}")
    if dim != rank:
        raise ValueError(
            f"dim is {dim!r} but rank is {rank!r}; contexts and movie vectors are the rank-"
            "dimensional embeddings, so expected dim == rank"
        )
    if available is not None and num_actions > available:
        raise ValueError(
            f"num_actions is {num_actions}; expected at most {available}, the number of "
            "movies with a training rating"
        )


def _environment(
    name: str,
    *,
    reward: str,
    context: str,
    num_actions: int,
    pool_size: int,
    movies: np.ndarray,
    users: np.ndarray,
    psi: np.ndarray,
    noise_sd: float,
    prior_fn,
):
    """A MovieLens environment: K movies per run from ``movies`` (N, d), users as contexts.

    ``prior_fn(idx, dtype)`` builds the prior the agents are told from the (K,) sampled
    movie indices; ``psi`` (L*d,) stands in for the effects (the data have no true Ψ).
    """
    import jax
    import jax.numpy as jnp

    N, d = movies.shape
    K = int(num_actions)

    def draw(key):
        dtype = jnp.result_type(float)
        k_items, k_pool = jax.random.split(key)
        idx = jax.random.choice(k_items, N, (K,), replace=False)
        theta = jnp.asarray(movies, dtype)[idx]
        pool = jnp.asarray(users, dtype)[jax.random.randint(k_pool, (pool_size,), 0, len(users))]
        params = MixedEffectParams(
            jnp.asarray(psi, dtype), theta, pool, jnp.asarray(noise_sd, dtype)
        )
        return prior_fn(idx, dtype), params

    def contexts(key, params: MixedEffectParams, t=None):  # iid: the round index is unused
        dtype = params.theta.dtype
        if context == "shared":
            j = jax.random.randint(key, (), 0, len(users))
            return jnp.broadcast_to(jnp.asarray(users, dtype)[j], (K, d))
        return params.pool[jax.random.randint(key, (K,), 0, pool_size)]

    def mean_rewards(params: MixedEffectParams, ctx):
        z = jnp.sum(ctx * params.theta, axis=-1)
        return z if reward == "linear" else jax.nn.sigmoid(z)

    def sample_reward(key, params: MixedEffectParams, ctx, action):
        mean = mean_rewards(params, ctx)[action]
        if reward == "linear":
            return mean + params.noise_sd * jax.random.normal(key, (), mean.dtype)
        return jax.random.bernoulli(key, mean).astype(mean.dtype)

    return Environment(name, draw, contexts, mean_rewards, sample_reward)


def _proxy_mixed_prior(proxy, weights, idx, noise_sd, dtype):
    """The GMM proxy meTS prior of the movies ``idx``, whose memberships are ``weights[idx]``."""
    import jax.numpy as jnp

    return mixed_effect_prior(
        jnp.asarray(proxy.mu_psi, dtype),
        jnp.asarray(proxy.sigma_psi, dtype),
        weights=jnp.asarray(weights, dtype)[idx],
        sigma0=jnp.asarray(proxy.sigma0, dtype),
        noise_sd=jnp.asarray(noise_sd, dtype),
    )


def movielens_environment(
    data,
    *,
    reward: str = "linear",
    num_actions: int = 100,
    num_effects: int = 5,
    dim: int = 5,
    seed: int = 0,
    rank: int | None = None,
    noise_sd: float = NOISE_SD,
    context: str = "shared",
    pool_size: int = 100,
    reg: float = 0.1,
    holdout: float = 0.1,
):
    """The MovieLens bandit of the paper's Fig. 3 with the GMM proxy prior.

    ``draw(key)`` returns ``(MixedEffectPrior, MixedEffectParams)`` like
    :func:`ppl_bandits.mixed_effect.environment.mixed_effect_environment`: ``K`` movies sampled
    without replacement among those with a training rating; θ_i their vectors; the prior
    :func:`ppl_bandits.data.embeddings.proxy_prior` with their GMM memberships as b_i;
    ``params.psi`` the component means (there is no true Ψ; the prior is a proxy and is
    misspecified); ``params.pool`` ``pool_size`` random users. Contexts: a uniformly drawn
    user's vector shared by every action (``context="shared"``), or per-action users from
    the run's pool (``"pool"``).

    Parameters
    ----------
    data : path or :class:`Ratings`
        MovieLens ratings (see :func:`load_ratings`).
    reward : {"linear", "logistic"}
    num_actions, num_effects, dim : int
        K, L and d; d must equal ``rank``.
    rank : int, optional
        Rank of the factorization; by default ``dim`` (so ``dim=5`` is the paper's rank 5).
    seed : int
        Seed of the held-out split, of ALS's initialisation and of the mixture fit.
    rank, reg, holdout
        Passed to :func:`ppl_bandits.data.embeddings.fit_embeddings`. The embeddings and the
        mixture are cached per data, rank, seed (and L), so repeated calls are cheap; the
        environment itself is cached too, so the runner's compiled code is reused.
    noise_sd : float
        σ of the linear rewards (0.5, the authors' code).
    """
    rank = dim if rank is None else rank
    ratings_key = _ratings_key(data) if data is not None else None
    args = (reward, num_actions, num_effects, dim, seed, rank, noise_sd, context, pool_size)
    env_key = ("env", ratings_key, *args, reg, holdout)
    if env_key in _CACHE:
        return _CACHE[env_key]
    _check_env_args(reward, num_actions, num_effects, dim, rank, context, None)
    s = movielens_structure(
        data, rank=rank, num_effects=num_effects, seed=seed, reg=reg, holdout=holdout
    )
    _check_env_args(reward, num_actions, num_effects, dim, rank, context, len(s.movies))
    proxy = s.proxy

    def prior_fn(idx, dtype):
        return _proxy_mixed_prior(proxy, proxy.weights, idx, noise_sd, dtype)

    env = _environment(
        f"movielens-{reward}",
        reward=reward,
        context=context,
        num_actions=num_actions,
        pool_size=pool_size,
        movies=s.embeddings.item[s.movies],
        users=s.embeddings.user[s.users],
        psi=proxy.mu_psi,
        noise_sd=noise_sd,
        prior_fn=prior_fn,
    )
    _CACHE[env_key] = env
    return env


class MovieLensDTSPrior(NamedTuple):
    """What the agents of the dTS MovieLens experiment are told (each reads its own part)."""

    diffusion: object
    """:class:`models.diffusion.DiffusionPrior`: the DDPM pre-trained on movie vectors (dTS)."""
    mixed: object
    """:class:`models.mixed_effect.MixedEffectPrior`: the GMM proxy on the same vectors."""


def reading(agent, field: str):
    """``agent`` with ``init`` reading ``prior.<field>`` (an agent for one part of a prior)."""

    def init(key, prior):
        return agent.init(key, getattr(prior, field))

    return Agent(agent.name, init, agent.act, agent.update)


#: Pre-training defaults of the dTS MovieLens prior (paper App. G.2 trains 20,000 epochs).
DTS_EPOCHS = 5000

DTS_STEPS = 20

DTS_HIDDEN = 64


class PretrainedMovies(NamedTuple):
    """The DDPM pre-trained on one half of the movies, and the other half (the actions)."""

    params: object
    """:class:`models.diffusion.MLPParams`."""
    settings: object
    """:class:`ppl_bandits.diffusion.ddpm.DDPMSettings`."""
    scale: np.ndarray
    """(d,) s: the prior and the actions live in θ/s, the contexts are x ⊙ s (exact)."""
    pretrain: np.ndarray
    """(P, d) scaled vectors the DDPM and the mixture were fit on."""
    actions: np.ndarray
    """(N, d) scaled vectors of the held-out movies the runs sample their actions from."""
    proxy: object
    """:class:`ppl_bandits.data.embeddings.ProxyStructure` fit on ``pretrain``."""
    action_weights: np.ndarray
    """(N, L) memberships of the action movies under that mixture."""
    losses: np.ndarray
    """(epochs,) DDPM training loss."""
    seconds: float


def pretrain_movie_prior(
    data,
    *,
    rank: int = 5,
    num_effects: int = 5,
    seed: int = 0,
    reg: float = 0.1,
    holdout: float = 0.1,
    epochs: int = DTS_EPOCHS,
    num_steps: int = DTS_STEPS,
    hidden: int = DTS_HIDDEN,
    pretrain_samples: int | None = None,
    prior_dir=None,
    progress: bool = False,
) -> PretrainedMovies:
    """Pre-train the dTS diffusion prior on movie vectors (Aouali 2025, App. G.2).

    The movies with a training rating are split at random (``seed``) into halves: the
    DDPM (:func:`ppl_bandits.diffusion.ddpm.train_ddpm`) and a GMM proxy are fit on the first half
    (at most ``pretrain_samples`` of it), the runs draw their actions from the second, so
    the prior never saw the actions' own vectors. Each dimension is divided by its
    standard deviation s over the pre-training half (and the contexts multiplied by it),
    an exact reparametrization of the bandit that puts the data on the DDPM's unit scale.
    With ``prior_dir``, weights saved there by an earlier call are loaded (same settings)
    instead of trained, and newly trained weights are saved there.
    """
    import jax

    s = movielens_structure(
        data, rank=rank, num_effects=num_effects, seed=seed, reg=reg, holdout=holdout
    )
    key = ("dts", _ratings_key(data), rank, num_effects, seed, reg, holdout, epochs, num_steps)
    key = (*key, hidden, pretrain_samples, None if prior_dir is None else str(prior_dir))
    if key in _CACHE:
        return _CACHE[key]
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(s.movies))
    half = len(order) // 2
    pre_idx, act_idx = order[:half], order[half:]
    if pretrain_samples is not None:
        if (
            int(pretrain_samples) != pretrain_samples
            or not max(num_effects, 2) <= pretrain_samples <= half
        ):
            raise ValueError(
                f"pretrain_samples is {pretrain_samples!r}; expected an integer in "
                f"[{max(num_effects, 2)}, {half}] (the pre-training half of the movies)"
            )
        pre_idx = pre_idx[: int(pretrain_samples)]
    vectors = s.embeddings.item[s.movies]
    scale = vectors[pre_idx].std(axis=0)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(
            f"the pre-training movie vectors have per-dimension sd {scale.tolist()}; expected "
            "positive numbers (more pretrain_samples, or a lower rank)"
        )
    pre = vectors[pre_idx] / scale
    act = vectors[act_idx] / scale
    settings = DDPMSettings(dim=int(rank), num_steps=int(num_steps), hidden=int(hidden))
    loaded = None
    if prior_dir is not None and (Path(prior_dir) / "ddpm_params.npz").is_file():
        params, saved = load_ddpm(prior_dir)
        if saved != settings:
            raise ValueError(
                f"prior_dir {str(prior_dir)!r} holds a DDPM with settings {saved}; expected "
                f"{settings} (another directory, or matching num_steps/hidden)"
            )
        loaded = params
    if loaded is None:
        params, losses = train_ddpm(
            jax.random.key(seed), pre, settings, epochs=int(epochs), progress=progress
        )
        if prior_dir is not None:
            save_ddpm(params, settings, prior_dir)
        losses = np.asarray(losses)
    else:
        params, losses = loaded, np.zeros(0)
    proxy = fit_proxy_structure(pre, num_effects, seed=seed)
    out = PretrainedMovies(
        params,
        settings,
        scale,
        pre,
        act,
        proxy,
        proxy.responsibilities(act),
        losses,
        time.perf_counter() - t0,
    )
    _CACHE[key] = out
    return out


def movielens_dts_environment(
    data,
    *,
    reward: str = "linear",
    num_actions: int = 100,
    num_effects: int = 5,
    dim: int = 5,
    seed: int = 0,
    rank: int | None = None,
    noise_sd: float = NOISE_SD,
    context: str = "shared",
    pool_size: int = 100,
    reg: float = 0.1,
    holdout: float = 0.1,
    epochs: int = DTS_EPOCHS,
    num_steps: int = DTS_STEPS,
    hidden: int = DTS_HIDDEN,
    pretrain_samples: int | None = None,
    prior_dir=None,
    progress: bool = False,
):
    """The MovieLens bandit with a pre-trained diffusion prior (dTS experiment).

    As :func:`movielens_environment`, with actions drawn from the held-out half of
    :func:`pretrain_movie_prior`, everything in its scaled coordinates, and the prior a
    :class:`MovieLensDTSPrior`: the DDPM's :func:`ppl_bandits.diffusion.ddpm.ddpm_prior` for dTS,
    and the GMM proxy prior of the pre-training half for meTS, LinTS and HierTS (wrap
    each agent with :func:`reading`).
    """
    rank = dim if rank is None else rank
    _check_env_args(reward, num_actions, num_effects, dim, rank, context, None)
    pre = pretrain_movie_prior(
        data,
        rank=rank,
        num_effects=num_effects,
        seed=seed,
        reg=reg,
        holdout=holdout,
        epochs=epochs,
        num_steps=num_steps,
        hidden=hidden,
        pretrain_samples=pretrain_samples,
        prior_dir=prior_dir,
        progress=progress,
    )
    _check_env_args(reward, num_actions, num_effects, dim, rank, context, len(pre.actions))
    env_key = ("dts-env", id(pre), reward, num_actions, noise_sd, context, pool_size)
    if env_key in _CACHE:
        return _CACHE[env_key]
    s = movielens_structure(
        data, rank=rank, num_effects=num_effects, seed=seed, reg=reg, holdout=holdout
    )
    proxy = pre.proxy

    def prior_fn(idx, dtype):
        import jax
        import jax.numpy as jnp

        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), pre.params)
        diffusion = ddpm_prior(params, pre.settings, num_actions, noise_sd=noise_sd)
        mixed = _proxy_mixed_prior(proxy, pre.action_weights, idx, noise_sd, dtype)
        return MovieLensDTSPrior(diffusion, mixed)

    env = _environment(
        f"movielens-dts-{reward}",
        reward=reward,
        context=context,
        num_actions=num_actions,
        pool_size=pool_size,
        movies=pre.actions,
        users=s.embeddings.user[s.users] * pre.scale,
        psi=proxy.mu_psi,
        noise_sd=noise_sd,
        prior_fn=prior_fn,
    )
    _CACHE[env_key] = env
    return env


_FIG3 = {
    "data": None,
    "num_actions": 100,
    "num_effects": 5,
    "dim": 5,
    "rank": None,
    "num_rounds": 5000,
    "num_runs": 50,
    "noise_sd": NOISE_SD,
    "context": "shared",
    "factored_variant": "mean-field",
    "embedding_seed": 0,
    "reg": 0.1,
    "holdout": 0.1,
}

_DTS = {
    **{k: v for k, v in _FIG3.items() if k != "factored_variant"},
    "reward": "linear",
    "epochs": DTS_EPOCHS,
    "num_steps": DTS_STEPS,
    "hidden": DTS_HIDDEN,
    "pretrain_samples": None,
    "prior_dir": None,
}

LINEAR_AGENTS = ("meTS-Lin", "meTS-Lin-Fa", "HierTS", "LinTS", "LinUCB")

LOGISTIC_AGENTS = ("meTS-GLM", "meTS-GLM-Fa", "meTS-Lin", "HierTS", "GLM-TS", "UCB-GLM")

DTS_AGENTS = ("dTS", "meTS-Lin", "LinTS", "HierTS")


def _common_settings(settings: dict, name: str) -> None:

    if settings["data"] is None:
        raise ValueError(
            f"experiment {name!r} needs the MovieLens ratings: give --data PATH (u.data, "
            "ratings.dat, ratings.csv or an unpacked archive; the licence forbids shipping "
            "them, see ppl_bandits.data.movielens.download)"
        )
    check_positive_ints(settings, ("num_actions", "num_effects", "dim"))
    if settings["rank"] is None:
        settings["rank"] = settings["dim"]
    if not float(settings["noise_sd"]) > 0:
        raise ValueError(f"noise_sd is {settings['noise_sd']!r}; expected a positive number")


def _mets_builder(reward: str, default_agents: tuple[str, ...]):
    def build(settings: dict, agents):

        _common_settings(settings, f"movielens-{reward}")
        if settings["factored_variant"] not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {settings['factored_variant']!r}; "
                "expected mean-field or published"
            )
        settings["reward"] = reward
        env = movielens_environment(
            settings["data"],
            reward=reward,
            num_actions=settings["num_actions"],
            num_effects=settings["num_effects"],
            dim=settings["dim"],
            seed=settings["embedding_seed"],
            rank=settings["rank"],
            noise_sd=float(settings["noise_sd"]),
            context=settings["context"],
            reg=float(settings["reg"]),
            holdout=float(settings["holdout"]),
        )
        _record_embeddings(settings)
        return env, mixed_effect_agents(settings, agents, default_agents)

    return build


def _record_embeddings(settings: dict) -> None:
    s = movielens_structure(
        settings["data"],
        rank=settings["rank"],
        num_effects=settings["num_effects"],
        seed=settings["embedding_seed"],
        reg=float(settings["reg"]),
        holdout=float(settings["holdout"]),
    )
    e = s.embeddings
    settings["embedding"] = {
        "heldout_rmse": e.heldout_rmse,
        "train_rmse": e.train_rmse,
        "iterations": e.iterations,
        "converged": e.converged,
        "seconds": e.seconds,
        "movies": len(s.movies),
        "users": len(s.users),
        "gmm_weights": s.proxy.component_weights.tolist(),
    }


def _dts_build(settings: dict, agents):

    _common_settings(settings, "movielens-dts")
    if settings["reward"] not in REWARDS:
        raise ValueError(f"reward is {settings['reward']!r}; expected one of {REWARDS}")
    check_positive_ints(settings, ("epochs", "num_steps", "hidden"))
    env = movielens_dts_environment(
        settings["data"],
        reward=settings["reward"],
        num_actions=settings["num_actions"],
        num_effects=settings["num_effects"],
        dim=settings["dim"],
        seed=settings["embedding_seed"],
        rank=settings["rank"],
        noise_sd=float(settings["noise_sd"]),
        context=settings["context"],
        reg=float(settings["reg"]),
        holdout=float(settings["holdout"]),
        epochs=settings["epochs"],
        num_steps=settings["num_steps"],
        hidden=settings["hidden"],
        pretrain_samples=settings["pretrain_samples"],
        prior_dir=settings["prior_dir"],
        progress=True,
    )
    _record_embeddings(settings)
    logistic = settings["reward"] == "logistic"
    names = agents
    if names is None:
        names = ("dTS-GLM", "meTS-GLM", "GLM-TS", "HierTS") if logistic else DTS_AGENTS
    diffusion_names = {n.lower() for n in DIFFUSION_AGENT_NAMES}
    built = []
    for n in names:
        if str(n).lower() in diffusion_names:
            if "hierts-" in str(n).lower() or "shared" in str(n).lower():
                raise ValueError(
                    f"agent {n!r} does not apply here; expected dTS, dTS-GLM or one of "
                    f"{', '.join(AGENT_NAMES)}"
                )
            built.append(
                reading(make_diffusion_agent(n, horizon=settings["num_rounds"]), "diffusion")
            )
        else:
            agent = make_agent(resolve_agent_name(n), horizon=settings["num_rounds"])
            built.append(reading(agent, "mixed"))
    return env, built


def register_experiments(register) -> None:
    """Register movielens-linear, movielens-logistic and movielens-dts with ``register``."""

    register(
        ExperimentSpec(
            "movielens-linear",
            "paper Fig. 3 (left): MovieLens, GMM proxy prior, Gaussian rewards (--data PATH)",
            _FIG3,
            _mets_builder("linear", LINEAR_AGENTS),
        )
    )
    register(
        ExperimentSpec(
            "movielens-logistic",
            "paper Fig. 3 (right): MovieLens, GMM proxy prior, logistic rewards (--data PATH)",
            _FIG3,
            _mets_builder("logistic", LOGISTIC_AGENTS),
        )
    )
    register(
        ExperimentSpec(
            "movielens-dts",
            "dTS on MovieLens: DDPM prior pre-trained on half the movies (--data PATH)",
            _DTS,
            _dts_build,
        )
    )
