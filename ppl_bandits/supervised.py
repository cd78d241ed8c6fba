r"""Supervised-to-bandit benchmark: classes as arms, reward 1 for the right class.

The data set is scikit-learn's built-in ``load_digits`` (1797 8×8 images, 10 classes;
it ships inside scikit-learn, so nothing is downloaded). A seeded stratified split gives a
pre-training half and a bandit half. On the pre-training half:

1. PCA to ``num_components`` features, standardised, plus an intercept: :math:`x \in
   \mathbb{R}^{p}`, :math:`p` = ``num_components`` + 1;
2. ``num_bootstrap`` ridge fits, each on ``subset`` random pre-training images, of the
   one-vs-rest least-squares class vectors
   :math:`\theta_a = (X^\top X + \lambda I)^{-1} X^\top \mathbb{1}[y = a]`, stacked into
   :math:`\theta = (\theta_1, \dots, \theta_K) \in \mathbb{R}^{Kp}`: samples of
   plausible parameters of the task;
3. a DDPM (:mod:`ppl_bandits.ddpm`) on those samples: the prior of shared-parameter dTS
   (Aouali 2025), whose reward model is :math:`\varphi(x, a)^\top\theta` with
   :math:`\varphi(x, a) = e_a \otimes x`;
4. Gaussian moments of the same samples for the baselines: LinTS with each class's
   marginal :math:`\mathcal{N}(m_a, C_a)`, and HierTS (Hong et al. 2022) with one shared
   effect, :math:`\theta_a \mid \psi \sim \mathcal{N}(\psi, \Sigma_0)`, ψ ~ N(mean class
   vector, between-class covariance B) and :math:`\Sigma_0 = B + \bar C` (mean within-class
   bootstrap covariance).

Every run streams images drawn uniformly (with replacement) from the bandit half; each
round's context is the image's features, shared by the arms, and the expected reward of
arm :math:`a` is :math:`\mathbb{1}[a = y]` (the reward is that indicator), so the regret
of a round is 1 for a wrong class. All vectors are divided by one scalar ``scale`` (and the
features multiplied by it), an exact reparametrization that puts the DDPM's data on unit
scale. The Gaussian likelihood the agents assume (σ = ``noise_sd``) is misspecified for
0/1 rewards, as in the paper's use of classification data.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

__all__ = [
    "SupervisedParams",
    "SupervisedPrior",
    "SupervisedTask",
    "lifted",
    "register_experiments",
    "supervised_environment",
    "supervised_task",
]

NOISE_SD = 0.5


class SupervisedTask(NamedTuple):
    """Pre-training output and the bandit half (numpy arrays, scaled coordinates)."""

    features: np.ndarray
    """(n, p) bandit-half features (scaled; last column the scaled intercept)."""
    labels: np.ndarray
    """(n,) bandit-half classes."""
    samples: np.ndarray
    """(S, K*p) bootstrap class-parameter vectors (scaled), the DDPM's training data."""
    scale: float
    """The scalar s: features are x s, parameters θ / s."""
    num_classes: int
    accuracy: float
    """Bandit-half accuracy of the full pre-training ridge fit (a ceiling for the agents)."""
    params: object
    """DDPM weights (:class:`models.diffusion.MLPParams`)."""
    settings: object
    """:class:`ppl_bandits.ddpm.DDPMSettings`."""
    losses: np.ndarray
    seconds: float
    """Pre-training wall time (PCA, bootstrap, DDPM)."""


class SupervisedPrior(NamedTuple):
    """What the agents are told; each reads its own field (see :func:`lifted`)."""

    diffusion: object
    """DDPM prior of the stacked θ (shared-parameter dTS)."""
    mixed: object
    """Per-class Gaussian marginals as a MixedEffectPrior (LinTS)."""
    hier: object
    """One shared effect (HierTS)."""


class SupervisedParams(NamedTuple):
    features: object
    """(n, p) bandit-half features."""
    labels: object
    """(n,) their classes."""


_CACHE: dict = {}


def _ridge(X, Y, lam):
    p = X.shape[-1]
    return np.linalg.solve(np.swapaxes(X, -1, -2) @ X + lam * np.eye(p), np.swapaxes(X, -1, -2) @ Y)


def _pretraining_arrays(num_components, num_bootstrap, subset, ridge, seed):
    """Features of both halves, bootstrap class vectors, scale and the ridge accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    K = int(y.max()) + 1
    X_pre, X_test, y_pre, y_test = train_test_split(
        X, y, test_size=0.5, random_state=seed, stratify=y
    )
    pca = PCA(num_components, random_state=seed).fit(X_pre)
    Z_pre, Z_test = pca.transform(X_pre), pca.transform(X_test)
    sd = Z_pre.std(0)
    F_pre = np.column_stack([Z_pre / sd, np.ones(len(Z_pre))])
    F_test = np.column_stack([Z_test / sd, np.ones(len(Z_test))])
    Y_pre = np.eye(K)[y_pre]
    full = _ridge(F_pre, Y_pre, ridge)  # (p, K)
    accuracy = float(np.mean(np.argmax(F_test @ full, 1) == y_test))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(F_pre), (num_bootstrap, subset))
    W = _ridge(F_pre[idx], Y_pre[idx], ridge)  # (S, p, K)
    theta = np.swapaxes(W, 1, 2).reshape(num_bootstrap, -1)  # (S, K*p), class-major
    scale = float(theta.std())
    samples = theta / scale
    # Drop exact duplicate images so that a context identifies its label.
    F_test, keep = np.unique(F_test, axis=0, return_index=True)
    y_test = y_test[keep]
    return F_test * scale, y_test, samples, scale, K, accuracy


def supervised_task(
    *,
    num_components: int = 3,
    num_bootstrap: int = 1000,
    subset: int = 100,
    ridge: float = 1.0,
    epochs: int = 3000,
    num_steps: int = 10,
    hidden: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> SupervisedTask:
    """Pre-train on half of ``load_digits`` (see the module docstring); cached in memory."""
    import jax

    from ppl_bandits.ddpm import DDPMSettings, train_ddpm

    key = (num_components, num_bootstrap, subset, ridge, epochs, num_steps, hidden, seed)
    if key in _CACHE:
        return _CACHE[key]
    for name, v in (
        ("num_components", num_components),
        ("num_bootstrap", num_bootstrap),
        ("subset", subset),
        ("epochs", epochs),
    ):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} is {v!r}; expected an integer >= 1")
    from ppl_bandits.embeddings import _one_blas_thread

    t0 = time.perf_counter()
    with _one_blas_thread():
        arrays = _pretraining_arrays(num_components, num_bootstrap, subset, ridge, seed)
    F_test, y_test, samples, scale, K, accuracy = arrays
    settings = DDPMSettings(dim=samples.shape[1], num_steps=num_steps, hidden=hidden)
    params, losses = train_ddpm(
        jax.random.key(seed), samples, settings, epochs=int(epochs), progress=progress
    )
    task = SupervisedTask(
        features=F_test,
        labels=y_test.astype(np.int32),
        samples=samples,
        scale=scale,
        num_classes=K,
        accuracy=accuracy,
        params=params,
        settings=settings,
        losses=np.asarray(losses),
        seconds=time.perf_counter() - t0,
    )
    _CACHE[key] = task
    return task


def _gaussian_priors(task: SupervisedTask, noise_sd: float, dtype):
    import jax.numpy as jnp

    from ppl_bandits.spec import mixed_effect_prior

    K = task.num_classes
    p = task.features.shape[1]
    S = task.samples.reshape(-1, K, p)
    m = S.mean(0)  # (K, p)
    C = np.einsum("ska,skb->kab", S - m, S - m) / (S.shape[0] - 1)  # (K, p, p)
    eye = np.eye(K)
    mixed = mixed_effect_prior(
        jnp.asarray(m.reshape(-1), dtype),
        jnp.asarray(0.75 * _block_diag(C), dtype),
        weights=jnp.asarray(eye, dtype),
        sigma0=jnp.asarray(0.25 * C, dtype),
        noise_sd=noise_sd,
    )
    between = np.cov(m.T, ddof=1)
    hier = mixed_effect_prior(
        jnp.asarray(m.mean(0), dtype),
        jnp.asarray(between, dtype),
        weights=jnp.ones((K, 1), dtype),
        sigma0=jnp.asarray(between + C.mean(0), dtype),
        noise_sd=noise_sd,
    )
    return mixed, hier


def _block_diag(blocks):
    K, p, _ = blocks.shape
    out = np.zeros((K * p, K * p))
    for k in range(K):
        out[k * p : (k + 1) * p, k * p : (k + 1) * p] = blocks[k]
    return out


def supervised_environment(task: SupervisedTask, *, noise_sd: float = NOISE_SD):
    """The bandit of a :class:`SupervisedTask` (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    from ppl_bandits.ddpm import ddpm_prior
    from ppl_bandits.types import Environment

    if not (isinstance(noise_sd, int | float) and math.isfinite(noise_sd) and noise_sd > 0):
        raise ValueError(f"noise_sd is {noise_sd!r}; expected a positive number")
    key = ("env", id(task), noise_sd)
    if key in _CACHE:
        return _CACHE[key]
    K = task.num_classes
    n, p = task.features.shape

    def draw(key):
        del key
        dtype = jnp.result_type(float)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), task.params)
        diffusion = ddpm_prior(params, task.settings, K, noise_sd=noise_sd)
        mixed, hier = _gaussian_priors(task, noise_sd, dtype)
        prior = SupervisedPrior(diffusion, mixed, hier)
        return prior, SupervisedParams(
            jnp.asarray(task.features, dtype), jnp.asarray(task.labels, jnp.int32)
        )

    def contexts(key, params: SupervisedParams, t=None):
        j = jax.random.randint(key, (), 0, n)
        return jnp.broadcast_to(params.features[j], (K, p))

    def mean_rewards(params: SupervisedParams, ctx):
        j = jnp.argmin(jnp.sum((params.features - ctx[0]) ** 2, axis=1))
        return jax.nn.one_hot(params.labels[j], K, dtype=ctx.dtype)

    def reward(key, params, ctx, action):
        del key
        return mean_rewards(params, ctx)[action]

    env = Environment("supervised-digits", draw, contexts, mean_rewards, reward)
    _CACHE[key] = env
    return env


def lifted(agent, num_classes: int):
    r"""A shared-parameter agent on per-arm contexts: φ(x, a) = e_a ⊗ x_a, row a of (K, K p)."""
    import jax.numpy as jnp

    from ppl_bandits.types import Agent

    K = num_classes

    def phi(ctx):
        return (jnp.eye(K, dtype=ctx.dtype)[:, :, None] * ctx[:, None, :]).reshape(K, -1)

    def init(key, prior):
        return agent.init(key, prior.diffusion)

    def act(key, state, ctx):
        return agent.act(key, state, phi(ctx))

    def update(key, state, ctx, action, reward):
        return agent.update(key, state, phi(ctx), action, reward)

    return Agent(agent.name, init, act, update)


def _reading(agent, field):
    from ppl_bandits.types import Agent

    def init(key, prior):
        return agent.init(key, getattr(prior, field))

    return Agent(agent.name, init, agent.act, agent.update)


SUPERVISED_AGENTS = ("dTS-shared", "LinTS", "HierTS")


def make_supervised_agents(names, num_classes: int):
    """The benchmark's agents by name: dTS-shared (DDPM prior), LinTS, HierTS, meTS-Lin."""
    from ppl_bandits.agents import lin_ts, mets
    from ppl_bandits.diffusion import make_diffusion_agent

    table = {
        "dts-shared": lambda: lifted(make_diffusion_agent("dTS-shared"), num_classes),
        "lints": lambda: _reading(lin_ts(), "mixed"),
        "hierts": lambda: _reading(mets("gaussian", name="HierTS"), "hier"),
        "mets-lin": lambda: _reading(mets("gaussian", name="meTS-Lin"), "mixed"),
    }
    out = []
    for n in names:
        if str(n).lower() not in table:
            raise ValueError(f"agent is {n!r}; expected one of dTS-shared, LinTS, HierTS, meTS-Lin")
        out.append(table[str(n).lower()]())
    return out


_DEFAULTS = {
    "num_rounds": 1000,
    "num_runs": 10,
    "num_components": 3,
    "num_bootstrap": 1000,
    "subset": 100,
    "ridge": 1.0,
    "epochs": 3000,
    "num_steps": 10,
    "hidden": 128,
    "noise_sd": NOISE_SD,
    "pretrain_seed": 0,
}


def _build(settings: dict, agents):
    task = supervised_task(
        num_components=settings["num_components"],
        num_bootstrap=settings["num_bootstrap"],
        subset=settings["subset"],
        ridge=float(settings["ridge"]),
        epochs=settings["epochs"],
        num_steps=settings["num_steps"],
        hidden=settings["hidden"],
        seed=settings["pretrain_seed"],
        progress=True,
    )
    settings["pretrain_accuracy"] = task.accuracy
    settings["pretrain_seconds"] = task.seconds
    env = supervised_environment(task, noise_sd=float(settings["noise_sd"]))
    names = SUPERVISED_AGENTS if agents is None else agents
    return env, make_supervised_agents(names, task.num_classes)


def register_experiments(register) -> None:
    """Register ``supervised-digits`` with ``register``."""
    from ppl_bandits.experiments import ExperimentSpec

    register(
        ExperimentSpec(
            "supervised-digits",
            "digits classes as arms, reward 1 for the right class; dTS-shared, LinTS, HierTS",
            _DEFAULTS,
            _build,
            title_keys=("num_components",),
        )
    )
