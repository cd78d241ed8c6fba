r"""NumPyro model of the diffusion-prior bandit (dTS; Aouali, NeurIPS 2025), and its prior.

The latent chain :math:`\psi_L \to \dots \to \psi_1`, all in :math:`\mathbb{R}^d`, is
shared by the :math:`K` actions:

.. math::

    \psi_L \sim \mathcal{N}(0, \Sigma_{L+1}), \qquad
    \psi_{\ell-1} \mid \psi_\ell \sim \mathcal{N}(f_\ell(\psi_\ell), \Sigma_\ell),
    \quad \ell = L, \dots, 2,

    \theta_a \mid \psi_1 \sim \mathcal{N}(f_1(\psi_1), \Sigma_{1,a}) \ \text{iid over } a,
    \qquad Y_t \mid X_t, \theta \sim \mathcal{N}(X_t^\top\theta_{A_t}, \sigma^2)
    \ \text{or}\ \mathrm{Bernoulli}(\mathrm{sigmoid}(X_t^\top\theta_{A_t})).

Links are linear, :math:`f_\ell(\psi) = W_\ell\psi`, or neural,
:math:`f_\ell(\psi) = c_\ell\psi - e_\ell\,\epsilon(\psi, \ell)` with :math:`\epsilon` a
2-layer ReLU MLP that takes the step :math:`\ell` as an input. With
:math:`c_\ell = 1/\sqrt{\alpha_\ell}` and
:math:`e_\ell = \beta_\ell / (\sqrt{\alpha_\ell}\sqrt{1 - \bar\alpha_\ell})` this is the
reverse-process mean of a DDPM (Ho et al. 2020; :mod:`ppl_bandits.diffusion.ddpm`); with
:math:`c_\ell = 0, e_\ell = -1` it is the MLP itself (random nonlinear links).

In the shared-parameter variant one :math:`\theta \in \mathbb{R}^d` (with covariance
:math:`\Sigma_{1,0}`) serves every action and round :math:`t` observes
:math:`\varphi(X_t, A_t)^\top\theta`; ``contexts`` are then the features
:math:`\varphi(X_t, A_t)` of the played actions.

Indexing (one convention everywhere): ``psi[l-1]`` is :math:`\psi_\ell`;
``links[l-1]`` is :math:`W_\ell`, the link applied to :math:`\psi_\ell`;
``sigma_psi[l-1]`` is the conditional covariance of :math:`\psi_\ell` given
:math:`\psi_{\ell+1}`, i.e. :math:`\Sigma_{\ell+1}` (``sigma_psi[L-1]`` is the top
covariance :math:`\Sigma_{L+1}`); ``sigma_theta[a]`` is :math:`\Sigma_1` of action ``a``.

Sites: ``psi_1`` … ``psi_L`` (d,) each, the deterministic ``psi`` (L, d), ``theta``
(K, d) or (d,) when shared, ``y`` (n,). The non-centred parameterization samples standard
normals ``psi_l_raw`` and ``theta_raw`` and exposes ``psi_l`` and ``theta`` as
deterministic sites; both define the same joint distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

from models.checks import as_positive_definite, check_finite, check_shape, is_traced
from models.mixed_effect import LIKELIHOODS, PARAMETERIZATIONS, check_history

__all__ = [
    "TIME_FEATURES",
    "DiffusionPrior",
    "MLPParams",
    "NeuralLink",
    "apply_link",
    "diffusion_model",
    "diffusion_prior",
    "init_mlp",
    "mlp_apply",
    "sample_diffusion_parameters",
    "step_features",
    "validate_diffusion_prior",
]

#: Default number of sinusoidal features of the step ℓ fed to the MLP (even).
TIME_FEATURES = 8


class MLPParams(NamedTuple):
    """A 2-layer ReLU MLP ε(ψ, ℓ): R^d × {1..L} → R^d (E step features, H hidden units)."""

    w1: jax.Array
    """(d + E, H) first layer; input is [ψ, step_features(ℓ, E)]."""
    b1: jax.Array
    """(H,) first bias."""
    w2: jax.Array
    """(H, H) second layer."""
    b2: jax.Array
    """(H,) second bias."""
    w3: jax.Array
    """(H, d) linear output layer."""
    b3: jax.Array
    """(d,) output bias."""


class NeuralLink(NamedTuple):
    """Neural links f_ℓ(ψ) = c_ℓ ψ − e_ℓ ε(ψ, ℓ), ℓ = 1..L."""

    params: MLPParams
    """The network ε."""
    coef_x: jax.Array
    """(L,) c_ℓ; 1/sqrt(α_ℓ) for a DDPM, 0 for a plain MLP link."""
    coef_eps: jax.Array
    """(L,) e_ℓ; β_ℓ/(sqrt(α_ℓ) sqrt(1 − ᾱ_ℓ)) for a DDPM, −1 for a plain MLP link."""


class DiffusionPrior(NamedTuple):
    """Prior of the diffusion bandit (arrays; see the module docstring for the indexing).

    Build it with :func:`diffusion_prior`, which validates its inputs. Whether the links
    are neural is decided by the pytree structure (``neural is None``), so it is static
    under ``jax.jit``.
    """

    links: jax.Array
    """(L, d, d) W_ℓ at [ℓ−1]; the identity for neural priors (the dTS approximation)."""
    sigma_psi: jax.Array
    """(L, d, d) Σ_{ℓ+1} at [ℓ−1]: covariance of ψ_ℓ given ψ_{ℓ+1}; [L−1] is Σ_{L+1}."""
    sigma_theta: jax.Array
    """(K, d, d) Σ_1 of each action (θ_a | ψ_1); the shared variant uses [0]."""
    noise_sd: jax.Array
    """() reward noise standard deviation σ (Gaussian rewards)."""
    neural: NeuralLink | None
    """Neural links, or None for linear links."""

    @property
    def num_actions(self) -> int:
        return self.sigma_theta.shape[0]

    @property
    def num_levels(self) -> int:
        return self.sigma_psi.shape[0]

    @property
    def dim(self) -> int:
        return self.sigma_psi.shape[-1]


def step_features(step, num_features: int = TIME_FEATURES) -> jax.Array:
    r"""Sinusoidal features of the step ℓ: :math:`[\sin(\ell\omega_j), \cos(\ell\omega_j)]`.

    :math:`\omega_j = 100^{-j/(E/2)}`, :math:`j = 0, \dots, E/2 - 1`. ``step`` may be an
    array of steps (..., ) giving features (..., E).

    >>> step_features(1, 4).shape
    (4,)
    """
    half = num_features // 2
    omega = 100.0 ** (-jnp.arange(half) / max(half, 1))
    arg = jnp.asarray(step, jnp.result_type(float))[..., None] * omega
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], -1)


def mlp_apply(params: MLPParams, psi, step) -> jax.Array:
    """ε(ψ, ℓ) for ψ of shape (..., d) and an integer step ℓ (a Python int or a scalar array).

    >>> p = init_mlp(jax.random.key(0), 2, hidden=4)
    >>> mlp_apply(p, jnp.ones((3, 2)), 1).shape
    (3, 2)
    """
    psi = jnp.asarray(psi)
    num_features = params.w1.shape[0] - psi.shape[-1]
    emb = step_features(step, num_features).astype(psi.dtype)
    emb = jnp.broadcast_to(emb, (*psi.shape[:-1], num_features))
    h = jax.nn.relu(jnp.concatenate([psi, emb], -1) @ params.w1 + params.b1)
    h = jax.nn.relu(h @ params.w2 + params.b2)
    return h @ params.w3 + params.b3


def init_mlp(key, dim: int, hidden: int = 64, num_features: int = TIME_FEATURES, dtype=None):
    """He-initialised :class:`MLPParams` (weights N(0, 2/fan_in), biases 0)."""
    dtype = dtype or jnp.result_type(float)
    k1, k2, k3 = jax.random.split(key, 3)
    n_in = dim + num_features

    def w(k, a, b, gain=2.0):
        return jax.random.normal(k, (a, b), dtype) * jnp.sqrt(gain / a).astype(dtype)

    return MLPParams(
        w(k1, n_in, hidden),
        jnp.zeros((hidden,), dtype),
        w(k2, hidden, hidden),
        jnp.zeros((hidden,), dtype),
        w(k3, hidden, dim, 1.0),
        jnp.zeros((dim,), dtype),
    )


def apply_link(prior: DiffusionPrior, level: int, psi) -> jax.Array:
    """f_ℓ(ψ_ℓ) for ``level`` ℓ in 1..L (static) and ψ_ℓ of shape (..., d).

    >>> p = diffusion_prior(jnp.stack([jnp.eye(2)]), jnp.eye(2), num_actions=3,
    ...                     links=2 * jnp.stack([jnp.eye(2)]))
    >>> apply_link(p, 1, jnp.array([1.0, -1.0]))
    Array([ 2., -2.], dtype=float32)
    """
    psi = jnp.asarray(psi)
    if prior.neural is None:
        return jnp.einsum("ij,...j->...i", prior.links[level - 1], psi)
    nl = prior.neural
    eps = mlp_apply(nl.params, psi, level)
    return nl.coef_x[level - 1] * psi - nl.coef_eps[level - 1] * eps


def diffusion_prior(
    sigma_psi,
    sigma_theta,
    *,
    num_actions: int | None = None,
    links=None,
    neural: NeuralLink | None = None,
    noise_sd=1.0,
) -> DiffusionPrior:
    """Build and validate a :class:`DiffusionPrior`.

    Parameters
    ----------
    sigma_psi : array (L, d, d)
        ``sigma_psi[l-1]`` = Σ_{ℓ+1}, the covariance of ψ_ℓ given ψ_{ℓ+1} (the last one is
        the top covariance Σ_{L+1}); each symmetric positive definite; L >= 1.
    sigma_theta : array (d, d) or (K, d, d)
        Σ_1, the covariance of θ_a given ψ_1; one (d, d) matrix is shared by all actions
        (then ``num_actions`` is required).
    num_actions : int, optional
        K, when ``sigma_theta`` is (d, d).
    links : array (L, d, d), optional
        Linear links W_ℓ at [ℓ−1]. Exactly one of ``links`` and ``neural`` is given.
    neural : NeuralLink, optional
        Neural links (``coef_x`` and ``coef_eps`` of shape (L,)).
    noise_sd : float
        Reward noise σ > 0.

    Raises
    ------
    ValueError
        Naming the argument, its shape or value and what was expected.

    Examples
    --------
    >>> p = diffusion_prior(jnp.stack([jnp.eye(2)] * 3), jnp.eye(2), num_actions=5,
    ...                     links=jnp.ones((3, 2, 2)))
    >>> p.num_actions, p.num_levels, p.dim
    (5, 3, 2)
    """
    if (links is None) == (neural is None):
        raise ValueError("give exactly one of links (L, d, d) and neural (NeuralLink)")
    sigma_psi = jnp.asarray(sigma_psi)
    dtype = jnp.result_type(sigma_psi.dtype, jnp.float32)
    sigma_psi = sigma_psi.astype(dtype)
    if sigma_psi.ndim != 3 or sigma_psi.shape[1] != sigma_psi.shape[2]:
        raise ValueError(f"sigma_psi has shape {tuple(sigma_psi.shape)}; expected (L, d, d)")
    L, d, _ = sigma_psi.shape
    if L < 1:
        raise ValueError(f"sigma_psi has shape {tuple(sigma_psi.shape)}; expected L >= 1 levels")
    sigma_theta = jnp.asarray(sigma_theta, dtype)
    if sigma_theta.ndim == 2:
        if num_actions is None or int(num_actions) != num_actions or num_actions < 1:
            raise ValueError(
                f"num_actions is {num_actions!r}; expected an integer >= 1 when sigma_theta "
                "is a single (d, d) matrix"
            )
        check_shape("sigma_theta", sigma_theta, (d, d))
        sigma_theta = jnp.broadcast_to(sigma_theta, (int(num_actions), d, d))
    elif num_actions is not None and sigma_theta.ndim == 3 and sigma_theta.shape[0] != num_actions:
        raise ValueError(
            f"sigma_theta has shape {tuple(sigma_theta.shape)}; expected ({num_actions}, {d}, {d})"
        )
    if links is None:
        links = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (L, d, d))
        neural = jax.tree.map(lambda a: jnp.asarray(a, dtype), neural)
    else:
        links = jnp.asarray(links, dtype)
    prior = DiffusionPrior(links, sigma_psi, sigma_theta, jnp.asarray(noise_sd, dtype), neural)
    if not is_traced(*jax.tree.leaves(prior)):
        validate_diffusion_prior(prior)
    return prior


def validate_diffusion_prior(prior: DiffusionPrior) -> None:
    """Check shapes, finiteness and positive definiteness; raise ``ValueError`` naming the field."""
    L, d, _ = prior.sigma_psi.shape
    if L < 1:
        raise ValueError(f"sigma_psi has shape {tuple(prior.sigma_psi.shape)}; expected L >= 1")
    if np.ndim(prior.sigma_theta) != 3:
        raise ValueError(
            f"sigma_theta has shape {np.shape(prior.sigma_theta)}; expected (K, {d}, {d})"
        )
    K = prior.sigma_theta.shape[0]
    if K < 1:
        raise ValueError(f"sigma_theta has shape {prior.sigma_theta.shape}; expected K >= 1")
    check_shape("links", prior.links, (L, d, d))
    check_shape("sigma_theta", prior.sigma_theta, (K, d, d))
    check_shape("noise_sd", prior.noise_sd, ())
    check_finite("links", prior.links)
    as_positive_definite("sigma_psi", prior.sigma_psi)
    as_positive_definite("sigma_theta", prior.sigma_theta)
    sd = float(prior.noise_sd)
    if not np.isfinite(sd) or sd <= 0:
        raise ValueError(f"noise_sd is {sd}; expected a finite positive number")
    if prior.neural is not None:
        p = prior.neural.params
        H = np.shape(p.w1)[-1] if np.ndim(p.w1) == 2 else None
        if np.ndim(p.w1) != 2 or p.w1.shape[0] <= d:
            raise ValueError(
                f"neural.params.w1 has shape {np.shape(p.w1)}; expected (d + E, H) with d={d}"
            )
        for name, value, shape in (
            ("neural.params.b1", p.b1, (H,)),
            ("neural.params.w2", p.w2, (H, H)),
            ("neural.params.b2", p.b2, (H,)),
            ("neural.params.w3", p.w3, (H, d)),
            ("neural.params.b3", p.b3, (d,)),
            ("neural.coef_x", prior.neural.coef_x, (L,)),
            ("neural.coef_eps", prior.neural.coef_eps, (L,)),
        ):
            check_shape(name, value, shape)
            check_finite(name, value)


def _check_model_args(prior, contexts, actions, rewards, likelihood, shared):
    if shared:
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood is {likelihood!r}; expected one of {LIKELIHOODS}")
        if contexts is None or is_traced(contexts, rewards):
            return
        check_shape("contexts", contexts, (None, prior.dim))
        check_finite("contexts", contexts)
        # Actions are folded into the features φ(x, a); a dummy all-zero vector is fine.
        n = np.shape(contexts)[0]
        check_history(contexts, np.zeros(n, np.int32), rewards, 1, prior.dim, likelihood)
        return
    check_history(contexts, actions, rewards, prior.num_actions, prior.dim, likelihood)


def diffusion_model(
    prior: DiffusionPrior,
    contexts=None,
    actions=None,
    rewards=None,
    *,
    likelihood: str = "gaussian",
    parameterization: str = "centered",
    shared: bool = False,
):
    """The diffusion-prior bandit as a NumPyro model.

    Parameters
    ----------
    prior : DiffusionPrior
    contexts : array (n, d) or None
        Context of the played action in each round (the features φ(x, a) when ``shared``);
        None samples the parameters only. A history of zero rounds is allowed.
    actions : int array (n,) or None
        Played actions (ignored when ``shared``).
    rewards : array (n,) or None
        Observed rewards; None gives the prior predictive.
    likelihood : {"gaussian", "logistic"}
    parameterization : {"centered", "noncentered"}
    shared : bool
        One θ (d,) for every action instead of θ (K, d).

    Examples
    --------
    >>> p = diffusion_prior(jnp.stack([jnp.eye(2)] * 3), jnp.eye(2), num_actions=4,
    ...                     links=jnp.ones((3, 2, 2)))
    >>> tr = handlers.trace(handlers.seed(diffusion_model, 1)).get_trace(p)
    >>> tr["psi"]["value"].shape, tr["theta"]["value"].shape
    ((3, 2), (4, 2))
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization is {parameterization!r}; expected one of {PARAMETERIZATIONS}"
        )
    _check_model_args(prior, contexts, actions, rewards, likelihood, shared)
    L, d, _ = prior.sigma_psi.shape
    chol_psi = jnp.linalg.cholesky(prior.sigma_psi)
    psis = [None] * L
    loc = jnp.zeros((d,), prior.sigma_psi.dtype)
    for level in range(L, 0, -1):
        if level < L:
            loc = apply_link(prior, level + 1, psis[level])
        name = f"psi_{level}"
        chol = chol_psi[level - 1]
        if parameterization == "centered":
            psi = numpyro.sample(name, dist.MultivariateNormal(loc, scale_tril=chol))
        else:
            raw = numpyro.sample(f"{name}_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            psi = numpyro.deterministic(name, loc + chol @ raw)
        psis[level - 1] = psi
    numpyro.deterministic("psi", jnp.stack(psis))
    loc = apply_link(prior, 1, psis[0])
    chol_theta = jnp.linalg.cholesky(prior.sigma_theta)
    if shared:
        chol0 = chol_theta[0]
        if parameterization == "centered":
            theta = numpyro.sample("theta", dist.MultivariateNormal(loc, scale_tril=chol0))
        else:
            raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            theta = numpyro.deterministic("theta", loc + chol0 @ raw)
    else:
        K = prior.num_actions
        with numpyro.plate("actions", K, dim=-1):
            if parameterization == "centered":
                mvn = dist.MultivariateNormal(jnp.broadcast_to(loc, (K, d)), scale_tril=chol_theta)
                theta = numpyro.sample("theta", mvn)
            else:
                raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
                theta = numpyro.deterministic(
                    "theta", loc + jnp.einsum("kde,ke->kd", chol_theta, raw)
                )
    if contexts is None or contexts.shape[0] == 0:
        return  # no rounds observed (a plate cannot have size 0): the posterior is the prior
    if shared:
        logits = contexts @ theta
    else:
        logits = jnp.sum(contexts * theta[actions], axis=-1)
    with numpyro.plate("rounds", logits.shape[0], dim=-1):
        if likelihood == "gaussian":
            numpyro.sample("y", dist.Normal(logits, prior.noise_sd), obs=rewards)
        else:
            numpyro.sample("y", dist.Bernoulli(logits=logits), obs=rewards)


def sample_diffusion_parameters(key, prior: DiffusionPrior, *, shared: bool = False):
    """Draw (ψ, θ) from the model's prior: an environment's true parameters.

    Jit- and vmap-friendly; it runs :func:`diffusion_model` itself, so environments are
    simulated from exactly the model that defines the ground truth.

    Returns
    -------
    psi : (L, d), row ℓ−1 being ψ_ℓ; theta : (K, d), or (d,) when ``shared``.

    Examples
    --------
    >>> p = diffusion_prior(jnp.stack([jnp.eye(2)] * 2), jnp.eye(2), num_actions=3,
    ...                     links=jnp.ones((2, 2, 2)))
    >>> psi, theta = sample_diffusion_parameters(jax.random.key(0), p)
    >>> psi.shape, theta.shape
    ((2, 2), (3, 2))
    """
    model = handlers.seed(diffusion_model, key)
    tr = handlers.trace(model).get_trace(prior, shared=shared)
    return tr["psi"]["value"], tr["theta"]["value"]
