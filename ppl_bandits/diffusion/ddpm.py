r"""DDPM pre-training of diffusion priors (Ho, Jain, Abbeel 2020; dTS paper App. G.2).

Forward process over ``num_steps`` = L steps with a noise schedule :math:`\beta_1<\dots<\beta_L`,
:math:`\alpha_\ell = 1-\beta_\ell`, :math:`\bar\alpha_\ell = \prod_{j\le\ell}\alpha_j`:

.. math::

    x_\ell = \sqrt{\bar\alpha_\ell}\,x_0 + \sqrt{1-\bar\alpha_\ell}\,\epsilon,
    \qquad \epsilon \sim \mathcal{N}(0, I).

A 2-layer ReLU MLP :math:`\epsilon_w(x, \ell)` (:func:`models.diffusion.mlp_apply`, the step
enters through sinusoidal features) is trained by ε-prediction,
:math:`\min_w \mathbb{E}\,\|\epsilon - \epsilon_w(x_\ell, \ell)\|^2` with
:math:`\ell \sim U\{1..L\}`, with Adam (lr 1e-3) on batches of min(2048, n) samples. The
reverse process

.. math::

    x_{\ell-1} \mid x_\ell \sim \mathcal{N}\Big(\tfrac{1}{\sqrt{\alpha_\ell}}
    \big(x_\ell - \tfrac{\beta_\ell}{\sqrt{1-\bar\alpha_\ell}}\epsilon_w(x_\ell, \ell)\big),
    \ \beta_\ell I\Big), \qquad x_L \sim \mathcal{N}(0, I)

is the dTS prior with ψ_ℓ = x_ℓ, θ = x_0, f_ℓ the reverse mean, Σ_ℓ = β_ℓ I and
Σ_{L+1} = I (:func:`ddpm_prior`). Sampling (:func:`sample_ddpm`) draws from that prior,
noise included at the last step, so it samples exactly the model dTS uses.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.diffusion import (
    TIME_FEATURES,
    DiffusionPrior,
    MLPParams,
    NeuralLink,
    diffusion_prior,
    init_mlp,
    mlp_apply,
)
from ppl_bandits.plotting import subplots
from ppl_bandits.results import provenance, write_json

__all__ = [
    "SCHEDULES",
    "TRAINING_SETS",
    "DDPMSettings",
    "Schedule",
    "ddpm_loss",
    "ddpm_prior",
    "load_ddpm",
    "load_samples",
    "noise_schedule",
    "pretrain",
    "pretrain_ddpm_prior",
    "sample_ddpm",
    "save_ddpm",
    "train_ddpm",
    "training_set",
]

SCHEDULES = ("linear", "cosine")
TRAINING_SETS = ("gaussian", "swiss-roll", "mixture")
#: Largest batch (paper App. G.2): batch = min(MAX_BATCH, sample size).
MAX_BATCH = 2048
PARAMS_FILE = "ddpm_params.npz"
SETTINGS_FILE = "ddpm_settings.json"


class DDPMSettings(NamedTuple):
    """Settings of a DDPM (Python values; saved as JSON next to the weights)."""

    dim: int
    """d, dimension of the samples (of θ)."""
    num_steps: int = 20
    """L, number of diffusion steps (latent levels of the dTS prior)."""
    schedule: str = "linear"
    """Noise schedule: "linear" (β linear from beta_start to beta_end) or "cosine"."""
    beta_start: float = 1e-3
    """β_1 of the linear schedule."""
    beta_end: float = 0.5
    """β_L of the linear schedule."""
    hidden: int = 64
    """Hidden units per layer of the 2-layer ReLU MLP."""
    time_features: int = TIME_FEATURES
    """Number of sinusoidal step features (even)."""
    learning_rate: float = 1e-3
    """Adam step size."""


class Schedule(NamedTuple):
    """A noise schedule, arrays of shape (L,) indexed by ℓ − 1."""

    betas: jax.Array
    """(L,) β_ℓ."""
    alphas: jax.Array
    """(L,) α_ℓ = 1 − β_ℓ."""
    alpha_bars: jax.Array
    """(L,) ᾱ_ℓ = Π_{j≤ℓ} α_j."""


def _check_settings(settings: DDPMSettings) -> None:
    for name in ("dim", "num_steps", "hidden"):
        value = getattr(settings, name)
        if int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"schedule is {settings.schedule!r}; expected one of {SCHEDULES}")
    if settings.time_features < 2 or settings.time_features % 2:
        raise ValueError(f"time_features is {settings.time_features!r}; expected an even int >= 2")
    if settings.schedule == "linear" and not 0 < settings.beta_start <= settings.beta_end < 1:
        raise ValueError(
            f"beta_start, beta_end are {settings.beta_start!r}, {settings.beta_end!r}; "
            "expected 0 < beta_start <= beta_end < 1"
        )


def noise_schedule(settings: DDPMSettings, dtype=None) -> Schedule:
    """β, α and ᾱ of the settings' schedule.

    "cosine" is Nichol & Dhariwal (2021): ᾱ(t) = cos²((t/L + s)/(1 + s) π/2), s = 0.008,
    β_ℓ = min(1 − ᾱ_ℓ/ᾱ_{ℓ−1}, 0.999).

    >>> s = noise_schedule(DDPMSettings(dim=2, num_steps=3, beta_start=0.1, beta_end=0.3))
    >>> s.betas.round(3).tolist()
    [0.1, 0.2, 0.3]
    """
    _check_settings(settings)
    dtype = dtype or jnp.result_type(float)
    L = settings.num_steps
    if settings.schedule == "linear":
        betas = np.linspace(settings.beta_start, settings.beta_end, L)
    else:
        s = 0.008
        t = np.arange(L + 1) / L
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    alphas = 1.0 - betas
    return Schedule(
        jnp.asarray(betas, dtype),
        jnp.asarray(alphas, dtype),
        jnp.asarray(np.cumprod(alphas), dtype),
    )


def ddpm_loss(params: MLPParams, key, x0, schedule: Schedule) -> jax.Array:
    """ε-prediction loss on a batch x0 (B, d): mean over the batch of ‖ε − ε_w(x_ℓ, ℓ)‖²."""
    k_t, k_eps = jax.random.split(key)
    L = schedule.betas.shape[0]
    step = jax.random.randint(k_t, (x0.shape[0],), 1, L + 1)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    ab = schedule.alpha_bars[step - 1][:, None]
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps
    return jnp.mean(jnp.sum((eps - mlp_apply(params, xt, step)) ** 2, -1))


def train_ddpm(
    key, data, settings: DDPMSettings, *, epochs: int, progress: bool = False, chunk: int = 1000
):
    """Train the ε-network on ``data`` (n, d) for ``epochs`` passes.

    Each epoch shuffles the data and takes n // batch Adam steps with
    batch = min(2048, n). Epochs run as one ``jax.lax.scan`` per chunk of ``chunk`` epochs
    (a pure, jitted step; chunks only let a progress bar advance).

    Returns
    -------
    params : MLPParams
    losses : array (epochs,), the mean loss of each epoch.

    Examples
    --------
    >>> data = jax.random.normal(jax.random.key(0), (64, 2))
    >>> params, losses = train_ddpm(jax.random.key(1), data, DDPMSettings(dim=2, hidden=8),
    ...                             epochs=3)
    >>> losses.shape
    (3,)
    """
    _check_settings(settings)
    data = jnp.asarray(data)
    if data.ndim != 2 or data.shape[1] != settings.dim or data.shape[0] < 1:
        raise ValueError(f"data has shape {tuple(data.shape)}; expected (n, {settings.dim})")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs is {epochs!r}; expected an integer >= 1")
    dtype = jnp.result_type(data.dtype, jnp.float32)
    data = data.astype(dtype)
    n = data.shape[0]
    batch = min(MAX_BATCH, n)
    num_batches = n // batch
    schedule = noise_schedule(settings, dtype)
    k_init, k_train = jax.random.split(key)
    params = init_mlp(k_init, settings.dim, settings.hidden, settings.time_features, dtype)
    opt = optax.adam(settings.learning_rate)
    opt_state = opt.init(params)
    run = _make_epochs(opt, schedule, batch, num_batches)
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(epochs), desc="DDPM", unit="epoch", leave=False)
    done = 0
    while done < epochs:
        length = min(chunk, int(epochs) - done)
        keys = jax.random.split(jax.random.fold_in(k_train, done), length)
        (params, opt_state), loss = run((params, opt_state), keys, data)
        losses.append(loss)
        done += length
        if bar is not None:
            bar.update(length)
    if bar is not None:
        bar.close()
    return params, jnp.concatenate(losses)


def _make_epochs(opt, schedule: Schedule, batch: int, num_batches: int):
    def step(carry, inputs):
        params, opt_state = carry
        key, x0 = inputs
        loss, grads = jax.value_and_grad(ddpm_loss)(params, key, x0, schedule)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(carry, key, data):
        k_perm, k_steps = jax.random.split(key)
        perm = jax.random.permutation(k_perm, data.shape[0])[: batch * num_batches]
        batches = data[perm].reshape(num_batches, batch, data.shape[1])
        carry, loss = jax.lax.scan(step, carry, (jax.random.split(k_steps, num_batches), batches))
        return carry, jnp.mean(loss)

    @jax.jit
    def run(carry, keys, data):
        return jax.lax.scan(lambda c, k: epoch(c, k, data), carry, keys)

    return run


def ddpm_prior(
    params: MLPParams, settings: DDPMSettings, num_actions: int, *, noise_sd=1.0
) -> DiffusionPrior:
    r"""The dTS prior of a trained DDPM: links f_ℓ and covariances Σ_ℓ = β_ℓ I.

    f_ℓ(ψ) = c_ℓ ψ − e_ℓ ε_w(ψ, ℓ) with :math:`c_\ell = 1/\sqrt{\alpha_\ell}` and
    :math:`e_\ell = \beta_\ell/(\sqrt{\alpha_\ell}\sqrt{1-\bar\alpha_\ell})`;
    ``sigma_psi[l-1]`` = β_{ℓ+1} I for ℓ < L and I for ψ_L; ``sigma_theta`` = β_1 I.
    """
    dtype = params.w1.dtype
    sched = noise_schedule(settings, dtype)
    d = settings.dim
    eye = jnp.eye(d, dtype=dtype)
    top = jnp.ones((1,), dtype)
    var_psi = jnp.concatenate([sched.betas[1:], top])
    neural = NeuralLink(
        params,
        1.0 / jnp.sqrt(sched.alphas),
        sched.betas / (jnp.sqrt(sched.alphas) * jnp.sqrt(1.0 - sched.alpha_bars)),
    )
    return diffusion_prior(
        var_psi[:, None, None] * eye,
        sched.betas[0] * eye,
        num_actions=num_actions,
        neural=neural,
        noise_sd=noise_sd,
    )


def sample_ddpm(key, params: MLPParams, settings: DDPMSettings, num_samples: int) -> jax.Array:
    """Draw (num_samples, d) samples x_0 by the reverse process (:func:`ddpm_prior`'s model).

    >>> p = init_mlp(jax.random.key(0), 2, hidden=8)
    >>> sample_ddpm(jax.random.key(1), p, DDPMSettings(dim=2, hidden=8), 5).shape
    (5, 2)
    """
    dtype = params.w1.dtype
    sched = noise_schedule(settings, dtype)
    L, d = settings.num_steps, settings.dim
    k0, k_steps = jax.random.split(key)
    x = jax.random.normal(k0, (num_samples, d), dtype)

    def back(x, inputs):
        step, k = inputs
        i = step - 1
        eps = mlp_apply(params, x, step)
        mean = (x - sched.betas[i] / jnp.sqrt(1.0 - sched.alpha_bars[i]) * eps) / jnp.sqrt(
            sched.alphas[i]
        )
        z = jax.random.normal(k, x.shape, dtype)
        return mean + jnp.sqrt(sched.betas[i]) * z, None

    steps = jnp.arange(L, 0, -1)
    x, _ = jax.lax.scan(back, x, (steps, jax.random.split(k_steps, L)))
    return x


def save_ddpm(params: MLPParams, settings: DDPMSettings, directory) -> Path:
    """Write ``ddpm_params.npz`` (the weights) and ``ddpm_settings.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / PARAMS_FILE, **{k: np.asarray(v) for k, v in params._asdict().items()})
    record = {"format": "ppl-bandits-ddpm/1", "settings": settings._asdict()}
    write_json(directory / SETTINGS_FILE, record)
    return directory


def load_ddpm(directory) -> tuple[MLPParams, DDPMSettings]:
    """Read what :func:`save_ddpm` wrote; ``ValueError`` naming the path of a missing file."""
    directory = Path(directory)
    for name in (PARAMS_FILE, SETTINGS_FILE):
        if not (directory / name).is_file():
            raise ValueError(
                f"directory {str(directory)!r} has no {name} (looked for "
                f"{str(directory / name)!r}); expected the files written by save_ddpm"
            )
    record = json.loads((directory / SETTINGS_FILE).read_text())
    settings = DDPMSettings(**record["settings"])
    with np.load(directory / PARAMS_FILE) as f:
        missing = [k for k in MLPParams._fields if k not in f]
        if missing:
            raise ValueError(
                f"{str(directory / PARAMS_FILE)!r} lacks arrays {missing}; expected "
                f"{list(MLPParams._fields)}"
            )
        params = MLPParams(*(jnp.asarray(f[k]) for k in MLPParams._fields))
    return params, settings


def training_set(name, num_samples: int, key, *, dim: int = 2, mean=None, cov=None):
    """Samples (n, d) to pre-train on.

    Parameters
    ----------
    name : {"gaussian", "swiss-roll", "mixture"} or path
        "gaussian": N(mean, cov) (default N(0, I_d), the paper's App. G.3);
        "swiss-roll": the 2-D Swiss roll (t cos t, t sin t)/10, t ~ U[1.5π, 4.5π], plus
        N(0, 0.05²) noise, padded with zeros to d; "mixture": four equally weighted
        Gaussians with sd 0.2 centred at (±1, ±1) in the first two coordinates; a path to
        a ``.npy`` or ``.csv`` file of samples (rows are samples; ``num_samples`` and
        ``key`` are then ignored).

    Examples
    --------
    >>> training_set("mixture", 10, jax.random.key(0)).shape
    (10, 2)
    """
    if isinstance(name, str) and name in TRAINING_SETS:
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples is {num_samples!r}; expected an integer >= 1")
        dtype = jnp.result_type(float)
        n = int(num_samples)
        k1, k2 = jax.random.split(key)
        if name == "gaussian":
            m = jnp.zeros(dim, dtype) if mean is None else jnp.asarray(mean, dtype)
            C = jnp.eye(dim, dtype=dtype) if cov is None else jnp.asarray(cov, dtype)
            z = jax.random.normal(k1, (n, dim), dtype)
            return m + z @ jnp.linalg.cholesky(C).T
        if dim < 2:
            raise ValueError(f"dim is {dim!r}; the {name!r} training set needs dim >= 2")
        if name == "swiss-roll":
            t = jax.random.uniform(k1, (n,), dtype, 1.5 * math.pi, 4.5 * math.pi)
            xy = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) / 10.0
            xy = xy + 0.05 * jax.random.normal(k2, (n, 2), dtype)
        else:
            centres = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype)
            idx = jax.random.randint(k1, (n,), 0, 4)
            xy = centres[idx] + 0.2 * jax.random.normal(k2, (n, 2), dtype)
        return jnp.concatenate([xy, jnp.zeros((n, dim - 2), dtype)], -1)
    return load_samples(name)


def load_samples(path) -> jax.Array:
    """Samples (n, d) from a ``.npy`` or ``.csv`` file (one sample per row).

    Raises a ``ValueError`` naming the path when the file is missing, is not .npy/.csv,
    cannot be read, is not a 2-D array with at least one row and column, or has
    non-finite entries.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise ValueError(
            f"training set is {str(path)!r}; expected one of {TRAINING_SETS} or the path of a "
            ".npy or .csv file of samples (one per row)"
        )
    if not path.is_file():
        raise ValueError(f"samples file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, delimiter=",", ndmin=2)
        arr = np.asarray(arr, np.float64)
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"samples file {str(path)!r} could not be read as numbers ({exc})"
        ) from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"samples file {str(path)!r} holds an array of shape {arr.shape}; expected a 2-D "
            "array (n, d) with one sample per row"
        )
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise ValueError(
            f"samples file {str(path)!r} has {bad} non-finite entries; expected finite samples"
        )
    return jnp.asarray(arr, jnp.result_type(float))


def pretrain(
    samples,
    out_dir,
    *,
    num_steps: int = 20,
    num_samples: int = 1000,
    dim: int | None = None,
    epochs: int = 20000,
    hidden: int = 64,
    schedule: str = "linear",
    beta_start: float = DDPMSettings._field_defaults["beta_start"],
    beta_end: float = DDPMSettings._field_defaults["beta_end"],
    seed: int = 0,
    model_samples: int = 2000,
    progress: bool = False,
    command: str | None = None,
) -> dict:
    """Pre-train a DDPM on ``samples`` and write it, a figure and a record into ``out_dir``.

    Files: ``ddpm_params.npz`` and ``ddpm_settings.json`` (:func:`save_ddpm`, reloaded by
    :func:`load_ddpm` and turned into a dTS prior by :func:`ddpm_prior`),
    ``pretrain.png`` (training samples against ``model_samples`` draws of the trained
    model, first two coordinates, and the loss per epoch), ``losses.csv`` and
    ``pretrain.json`` (command, seed, versions, settings, training time, final loss, and
    the mean and covariance of the training and model samples).

    Parameters
    ----------
    samples : {"gaussian", "swiss-roll", "mixture"} or path
        A named training set (:func:`training_set`, ``num_samples`` draws in ``dim``
        dimensions, default 2) or a ``.npy``/``.csv`` file of samples (rows), whose width
        is the dimension (``dim``, if given, must match it).
    num_steps : int
        L, the number of diffusion steps (the levels of the dTS prior), >= 1.
    epochs : int
        Passes over the data (the paper trains 20,000 on CPU), each n // min(2048, n)
        Adam steps.

    Returns
    -------
    dict, the record written to ``pretrain.json``.
    """
    started = time.perf_counter()
    for name, value in (
        ("steps", num_steps),
        ("epochs", epochs),
        ("hidden", hidden),
        ("model_samples", model_samples),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
    if dim is not None and (isinstance(dim, bool) or int(dim) != dim or dim < 1):
        raise ValueError(f"dim is {dim!r}; expected an integer >= 1")
    key = jax.random.key(seed)
    k_data, k_train, k_model = jax.random.split(key, 3)
    named = isinstance(samples, str) and samples in TRAINING_SETS
    if named:
        data = training_set(samples, num_samples, k_data, dim=2 if dim is None else int(dim))
    else:
        data = load_samples(samples)
        if dim is not None and data.shape[1] != dim:
            raise ValueError(
                f"samples file {str(samples)!r} has {data.shape[1]} columns; expected dim={dim}"
            )
    n, d = data.shape
    settings = DDPMSettings(
        dim=int(d),
        num_steps=int(num_steps),
        schedule=schedule,
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        hidden=int(hidden),
    )
    _check_settings(settings)
    t0 = time.perf_counter()
    params, losses = train_ddpm(k_train, data, settings, epochs=int(epochs), progress=progress)
    jax.block_until_ready(losses)
    seconds = time.perf_counter() - t0
    model = np.asarray(sample_ddpm(k_model, params, settings, int(model_samples)), np.float64)
    out = save_ddpm(params, settings, out_dir)
    losses = np.asarray(losses, np.float64)
    np.savetxt(
        out / "losses.csv",
        np.column_stack([np.arange(1, losses.size + 1), losses]),
        delimiter=",",
        header="epoch,loss",
        comments="",
        fmt=["%d", "%.6g"],
    )
    train = np.asarray(data, np.float64)
    batch = min(MAX_BATCH, n)
    record = {
        "samples": str(samples),
        "num_samples": int(n),
        "dim": int(d),
        "settings": settings._asdict(),
        "epochs": int(epochs),
        "batch": batch,
        "adam_steps": int(epochs) * (n // batch),
        "training_seconds": seconds,
        "initial_loss": float(losses[0]),
        "final_loss": float(losses[-1]),
        "final_loss_mean_last_100": float(losses[-100:].mean()),
        "training_mean": train.mean(0),
        "training_cov": np.atleast_2d(np.cov(train.T)) if n > 1 else None,
        "model_mean": model.mean(0),
        "model_cov": np.atleast_2d(np.cov(model.T)),
        "model_samples": int(model_samples),
        **provenance(seed=seed, wall_seconds=time.perf_counter() - started, command=command),
        "files": [PARAMS_FILE, SETTINGS_FILE, "pretrain.png", "losses.csv", "pretrain.json"],
    }
    _plot_pretraining(out / "pretrain.png", train, model, losses, record)
    write_json(out / "pretrain.json", record)
    return record


def _plot_pretraining(path, train, model, losses, record) -> None:

    fig, (ax, ax_loss) = subplots(1, 2, figsize=(10, 4.2))
    if train.shape[1] >= 2:
        ax.scatter(train[:, 0], train[:, 1], s=4, alpha=0.5, label=f"training ({len(train)})")
        ax.scatter(model[:, 0], model[:, 1], s=4, alpha=0.5, label=f"model ({len(model)})")
        ax.set_xlabel("coordinate 1")
        ax.set_ylabel("coordinate 2")
    else:
        ax.hist(train[:, 0], bins=40, density=True, alpha=0.5, label=f"training ({len(train)})")
        ax.hist(model[:, 0], bins=40, density=True, alpha=0.5, label=f"model ({len(model)})")
        ax.set_xlabel("coordinate 1")
    ax.legend(fontsize=8)
    st = record["settings"]
    ax.set_title(
        f"{record['samples']}: L={st['num_steps']}, {st['schedule']} schedule, "
        f"{record['epochs']} epochs",
        fontsize=9,
    )
    ax_loss.plot(np.arange(1, losses.size + 1), losses, lw=0.8)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("ε-prediction loss")
    ax_loss.set_title(f"final loss {record['final_loss']:.4g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pretrain_ddpm_prior(
    *,
    dim: int,
    num_actions: int,
    num_samples: int = 1000,
    num_steps: int = 10,
    train_steps: int = 3000,
    hidden: int = 32,
    training: str = "gaussian",
    prior_dir=None,
    seed: int = 0,
):
    """A DDPM diffusion prior: loaded from ``prior_dir``, or pre-trained here.

    Pre-training (:func:`ppl_bandits.diffusion.ddpm.train_ddpm`) uses ``num_samples`` draws of the
    ``training`` set (default N(0, I_d), the paper's App. G.3) and
    ceil(train_steps / batches per epoch) epochs, so that every sample size gets about
    ``train_steps`` Adam steps. Returns (DiffusionPrior, JSON-ready description).
    """

    t0 = time.perf_counter()
    if prior_dir is not None:
        params, settings = load_ddpm(prior_dir)
        if settings.dim != dim:
            raise ValueError(
                f"prior_dir {str(prior_dir)!r} holds a DDPM of dim {settings.dim}; expected dim "
                f"{dim} (the audit's d)"
            )
        info = {"prior": "ddpm", "prior_dir": str(prior_dir), "settings": settings._asdict()}
    else:
        for arg, value in (("num_samples", num_samples), ("train_steps", train_steps)):
            if int(value) != value or value < 1:
                raise ValueError(f"{arg} is {value!r}; expected an integer >= 1")
        settings = DDPMSettings(dim=dim, num_steps=int(num_steps), hidden=int(hidden))
        data = training_set(training, int(num_samples), jax.random.key(seed + 7919), dim=dim)
        batches = max(1, int(num_samples) // min(MAX_BATCH, int(num_samples)))
        epochs = math.ceil(int(train_steps) / batches)
        params, losses = train_ddpm(jax.random.key(seed + 104729), data, settings, epochs=epochs)
        info = {
            "prior": "ddpm",
            "training_set": training,
            "pretrain_samples": int(num_samples),
            "epochs": epochs,
            "adam_steps": epochs * batches,
            "final_loss": float(np.mean(np.asarray(losses)[-50:])),
            "settings": settings._asdict(),
        }
    info["pretrain_seconds"] = time.perf_counter() - t0
    return ddpm_prior(params, settings, num_actions), info
