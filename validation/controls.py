r"""Negative controls: deliberately wrong versions of a claimed posterior.

An audit that cannot fail proves nothing. Every audit therefore also feeds its test a few
*negative controls*, transformations of the claimed posterior that are known to be wrong,
and counts the audit as meaningful only when each of them is rejected. This module is the
one home of every control, the generic ones and, in :data:`FAMILY_CONTROLS`, those a model
family registers; both the posterior audits (:mod:`validation.families`) and the
calibration studies (:mod:`validation.calibration`) apply them from here, through
:func:`family_controls`.

A control acts on a claim from :mod:`ppl_bandits.core.claims`:

=========================  ===============================  ===================================
name                       on a :class:`GaussianClaim`      on a :class:`SampledClaim` (draws)
=========================  ===============================  ===================================
``covariance-x1.3``        :math:`\Sigma \to 1.3\,\Sigma`   draws scaled about their mean by
                                                            :math:`\sqrt{1.3}`
``mean-shift-0.5sd``       :math:`\mu_i \to \mu_i + 0.5     draws shifted by 0.5 of each
                           \,\Sigma_{ii}^{1/2}`             coordinate's sd (from the draws)
``correlations-dropped``   :math:`\Sigma \to                each coordinate permuted
                           \operatorname{diag}(\Sigma)`     independently across draws
``blocks-decoupled``       cross-site blocks of             each site's block permuted
                           :math:`\Sigma` set to zero       independently across draws
=========================  ===============================  ===================================

Permuting a coordinate (or a site's block of coordinates) across a batch of independent
draws keeps its marginal law and makes it independent of the rest: the product of the
marginals, the draws analogue of a diagonal (block-diagonal) covariance.

The family-specific controls also read the agent state the claim was read from
(:data:`FamilyControl`), one run's state for one claim or a batch of states for a batch of
claims (:func:`read_claim`):

===========================  ================  =========================================
name                         families          what the control claims
===========================  ================  =========================================
``coupling-dropped``         mixed-effect,     ``blocks-decoupled`` with every row of a
                             diffusion         matrix-shaped site a site of its own:
                                               covariances between Ψ and θ, between
                                               actions (and between diffusion levels ψ_ℓ)
                                               set to zero
``published-factored-mean``  mixed-effect      the effect means of the paper's eq. 43, the
                                               mean of ``mets_posterior(state,
                                               "published")``; covariance unchanged
``dts-approximation``        diffusion         ``dts_approximation_claim(state)``: the dTS
                                               approximation, wrong on linear links unless
                                               every W_ℓ = I
===========================  ================  =========================================

A control that leaves the claim as it is, e.g. ``blocks-decoupled`` for a claim with one
site or ``correlations-dropped`` for a diagonal covariance, is *not applicable*: it cannot
be rejected and must not be counted (:func:`identical_claims`).

Gaussian controls accept NumPy arrays (computed in float64) or JAX arrays (computed
with ``jax.numpy``, so they also work under ``jit`` and ``vmap`` and on batched claims).
Sampled controls transform concrete draws in float64 NumPy and traced draws with
``jax.numpy``; their randomness (the permutations) is derived from the sampling key.

>>> import numpy as np
>>> from ppl_bandits.core.claims import GaussianClaim
>>> claim = GaussianClaim(np.zeros(2), np.array([[1.0, 0.5], [0.5, 4.0]]), (("a", (2,)),))
>>> apply_control("mean-shift-0.5sd", claim).mean
array([0.5, 1. ])
>>> identical_claims(claim, apply_control("blocks-decoupled", claim))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl_bandits.core.claims import Claim, GaussianClaim, SampledClaim, site_slices, sites_dim
from ppl_bandits.diffusion.agents import dts_approximation_claim
from ppl_bandits.mixed_effect.agents import mets_posterior

__all__ = [
    "COVARIANCE_FACTOR",
    "FAMILY_CONTROLS",
    "GENERIC_CONTROLS",
    "MEAN_SHIFT_SD",
    "ControlFunction",
    "ControlSet",
    "FamilyControl",
    "UnknownControlError",
    "apply_control",
    "family_controls",
    "gaussian_control",
    "identical_claims",
    "read_claim",
]

#: Factor of the inflated covariance of ``covariance-x1.3``.
COVARIANCE_FACTOR: float = 1.3
#: Shift of ``mean-shift-0.5sd``, in posterior standard deviations (every coordinate).
MEAN_SHIFT_SD: float = 0.5
#: The generic controls, in the order they are run and reported.
GENERIC_CONTROLS: tuple[str, ...] = (
    "covariance-x1.3",
    "mean-shift-0.5sd",
    "correlations-dropped",
    "blocks-decoupled",
)

#: A control: a function from a claim to a (wrong) claim of the same kind and sites.
ControlFunction = Callable[[Claim], Claim]
#: A family's control: ``(claim, state) -> claim``, with ``state`` the agent state the claim
#: was read from (one run's, or a batch with a leading replication axis for a batched claim).
FamilyControl = Callable[[Claim, Any], Claim]


class UnknownControlError(KeyError, ValueError):
    """A control name that is not registered (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- helpers


def _xp(*arrays):
    """``jax.numpy`` if any array is a JAX array (or tracer), else NumPy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _as_float(x):
    return x if isinstance(x, jax.Array) else np.asarray(x, dtype=np.float64)


def _block_mask(sites) -> np.ndarray:
    """(p, p) boolean mask of the within-site blocks of the flattened vector."""
    p = sites_dim(sites)
    mask = np.zeros((p, p), dtype=bool)
    for sl in site_slices(sites).values():
        mask[sl, sl] = True
    return mask


def _check_claim(claim, name: str) -> None:
    if not isinstance(claim, GaussianClaim | SampledClaim):
        raise ValueError(
            f"claim is {type(claim).__name__}; control {name!r} expects a GaussianClaim or a "
            "SampledClaim (ppl_bandits.core.claims)"
        )


def _wrap_sampler(claim: SampledClaim, transform) -> SampledClaim:
    """A sampled claim whose draws are a random ``transform`` of ``claim``'s own draws.

    The base draws use the same key as ``claim``'s, so the control transforms the very
    draws the claim would give. Concrete draws are transformed in float64 NumPy with a
    generator seeded from a key folded from ``key``; traced draws (under ``jit`` or
    ``vmap``) with ``jax.numpy`` and that key.
    """
    base = claim.draw

    def draw(params, key, num):
        x = base(params, key, num)
        sub = jax.random.fold_in(key, _SALT)
        try:
            concrete = np.asarray(x, dtype=np.float64)
            bits = np.asarray(_key_bits(sub)).ravel()
        except jax.errors.TracerArrayConversionError:
            return transform(jnp, sub, jnp.asarray(x))
        return transform(np, np.random.default_rng([int(b) for b in bits]), concrete)

    return SampledClaim(draw, claim.params, claim.sites)


_SALT = 0x5EED


def _key_bits(key):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _scaled(xp, _rng, x):
    m = x.mean(axis=0)
    return m + math.sqrt(COVARIANCE_FACTOR) * (x - m)


def _shifted(xp, _rng, x):
    return x + MEAN_SHIFT_SD * x.std(axis=0)


def _permuted(groups: tuple[tuple[int, ...], ...], xp, rng, x):
    """Permute the rows of each column group of ``x`` (n, p) independently."""
    n = x.shape[0]
    if xp is np:
        out = x.copy()
        for cols in groups:
            out[:, list(cols)] = x[rng.permutation(n)][:, list(cols)]
        return out
    out = x
    for k, cols in zip(jax.random.split(rng, len(groups)), groups, strict=True):
        idx = np.asarray(cols)
        out = out.at[:, idx].set(x[jax.random.permutation(k, n)][:, idx])
    return out


# --------------------------------------------------------------------------- controls


def _covariance_inflated(claim: Claim) -> Claim:
    if isinstance(claim, GaussianClaim):
        return GaussianClaim(claim.mean, _as_float(claim.cov) * COVARIANCE_FACTOR, claim.sites)
    return _wrap_sampler(claim, _scaled)


def _mean_shifted(claim: Claim) -> Claim:
    if isinstance(claim, GaussianClaim):
        mean, cov = _as_float(claim.mean), _as_float(claim.cov)
        xp = _xp(mean, cov)
        sd = xp.sqrt(xp.diagonal(cov, axis1=-2, axis2=-1))
        return GaussianClaim(mean + MEAN_SHIFT_SD * sd, cov, claim.sites)
    return _wrap_sampler(claim, _shifted)


def _correlations_dropped(claim: Claim) -> Claim:
    p = sites_dim(claim.sites)
    if isinstance(claim, GaussianClaim):
        cov = _as_float(claim.cov)
        xp = _xp(cov)
        return GaussianClaim(claim.mean, cov * xp.eye(p, dtype=cov.dtype), claim.sites)
    if p == 1:
        return claim
    groups = tuple((j,) for j in range(p))
    return _wrap_sampler(claim, partial(_permuted, groups))


def _blocks_decoupled(claim: Claim) -> Claim:
    if len(claim.sites) < 2:
        return claim
    if isinstance(claim, GaussianClaim):
        cov = _as_float(claim.cov)
        xp = _xp(cov)
        return GaussianClaim(claim.mean, xp.where(_block_mask(claim.sites), cov, 0.0), claim.sites)
    groups = tuple(tuple(range(sl.start, sl.stop)) for sl in site_slices(claim.sites).values())
    return _wrap_sampler(claim, partial(_permuted, groups))


_GENERIC: dict[str, ControlFunction] = {
    "covariance-x1.3": _covariance_inflated,
    "mean-shift-0.5sd": _mean_shifted,
    "correlations-dropped": _correlations_dropped,
    "blocks-decoupled": _blocks_decoupled,
}


# --------------------------------------------------------------------------- registry


class ControlSet(Mapping[str, ControlFunction]):
    """An ordered, immutable registry of negative controls: name -> ``callable(claim) -> claim``.

    ``ControlSet.generic()`` holds :data:`GENERIC_CONTROLS`; a model family adds its own
    with ``ControlSet.generic({"published-factored-mean": fn})`` or
    :meth:`extended`. Looking up an unknown name raises :class:`UnknownControlError`
    (a ``ValueError`` and a ``KeyError``) that lists the known names.

    Parameters
    ----------
    controls : mapping of str to callable, optional
        The controls, in order. Each callable takes a claim and returns a claim of the same
        kind over the same sites; returning the claim itself (or one with identical
        moments) marks the control as not applicable to that claim.

    Examples
    --------
    >>> import numpy as np
    >>> from ppl_bandits.core.claims import GaussianClaim
    >>> halve = lambda c: GaussianClaim(c.mean, 0.5 * c.cov, c.sites)
    >>> controls = ControlSet.generic({"covariance-x0.5": halve})
    >>> list(controls)[-1], len(controls)
    ('covariance-x0.5', 5)
    >>> claim = GaussianClaim(np.zeros(1), np.eye(1), (("mu", ()),))
    >>> controls.apply("covariance-x0.5", claim).cov
    array([[0.5]])
    """

    __slots__ = ("_controls",)

    def __init__(self, controls: Mapping[str, ControlFunction] | None = None):
        items = dict(controls or {})
        for name, fn in items.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"controls has the name {name!r}; expected non-empty strings")
            if not callable(fn):
                raise ValueError(
                    f"controls[{name!r}] is {type(fn).__name__}; expected a callable(claim) -> "
                    "claim"
                )
        self._controls = items

    @classmethod
    def generic(cls, extra: Mapping[str, ControlFunction] | None = None) -> ControlSet:
        """The generic controls, followed by ``extra`` (family-specific) ones."""
        return cls(_GENERIC).extended(extra or {})

    def extended(self, extra: Mapping[str, ControlFunction]) -> ControlSet:
        """A new set with ``extra`` appended; a name already present raises ``ValueError``."""
        clash = [name for name in extra if name in self._controls]
        if clash:
            raise ValueError(
                f"extra has the controls {clash}, which are already registered; expected new "
                f"names (registered: {list(self._controls)})"
            )
        return ControlSet({**self._controls, **dict(extra)})

    def __getitem__(self, name: str) -> ControlFunction:
        try:
            return self._controls[name]
        except (KeyError, TypeError):
            raise UnknownControlError(
                f"negative control {name!r} is unknown; expected one of {list(self._controls)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._controls)

    def __len__(self) -> int:
        return len(self._controls)

    def __repr__(self) -> str:
        return f"ControlSet({list(self._controls)})"

    def apply(self, name: str, claim: Claim) -> Claim:
        """The control ``name`` applied to ``claim``."""
        fn = self[name]
        _check_claim(claim, name)
        out = fn(claim)
        if not isinstance(out, type(claim)):
            raise ValueError(
                f"control {name!r} returned {type(out).__name__}; expected a "
                f"{type(claim).__name__} like the claim it was given"
            )
        if tuple(out.sites) != tuple(claim.sites):
            raise ValueError(
                f"control {name!r} returned a claim over the sites {out.sites}; expected the "
                f"claim's sites {claim.sites}"
            )
        return out


_GENERIC_SET = ControlSet(_GENERIC)


def apply_control(name: str, claim: Claim) -> Claim:
    """Apply the generic control ``name`` (one of :data:`GENERIC_CONTROLS`) to ``claim``.

    Parameters
    ----------
    name : str
        One of :data:`GENERIC_CONTROLS`.
    claim : GaussianClaim or SampledClaim
        The claim to make wrong. A :class:`SampledClaim` control draws the claim's own
        draws with the same key and transforms them.

    Returns
    -------
    GaussianClaim or SampledClaim
        Of the same kind and sites; ``claim`` itself when the control does not apply
        (``blocks-decoupled`` with one site, ``correlations-dropped`` with one coordinate).

    Raises
    ------
    ValueError
        If ``name`` is unknown (:class:`UnknownControlError`, listing the known controls)
        or ``claim`` is not a claim.
    """
    return _GENERIC_SET.apply(name, claim)


def gaussian_control(name: str, mean, cov, sites) -> tuple[np.ndarray, np.ndarray]:
    """The generic control ``name`` of the Gaussian claim N(mean, cov), as float64 arrays.

    Parameters
    ----------
    name : str
        One of :data:`GENERIC_CONTROLS`.
    mean : array_like, shape (p,)
    cov : array_like, shape (p, p)
    sites : sequence of (name, shape)
        The flattening of the latent vector (:data:`ppl_bandits.core.claims.Sites`).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The control's mean (p,) and covariance (p, p).

    Examples
    --------
    >>> import numpy as np
    >>> cov = np.array([[1.0, 0.3, 0.2], [0.3, 1.0, 0.1], [0.2, 0.1, 1.0]])
    >>> _, c = gaussian_control("blocks-decoupled", np.zeros(3), cov, (("a", (2,)), ("b", ())))
    >>> c
    array([[1. , 0.3, 0. ],
           [0.3, 1. , 0. ],
           [0. , 0. , 1. ]])
    """
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    claim = GaussianClaim(mean, cov, sites)
    p = claim.dim
    if mean.shape != (p,) or cov.shape != (p, p):
        raise ValueError(
            f"mean has shape {mean.shape} and cov {cov.shape}; expected ({p},) and ({p}, {p}) "
            f"for sites {claim.sites}"
        )
    out = apply_control(name, claim)
    return np.asarray(out.mean, dtype=np.float64), np.asarray(out.cov, dtype=np.float64)


def identical_claims(claim: Claim, control: Claim, *, rtol: float = 1e-10) -> bool:
    """Whether ``control`` is the claim unchanged, so that it is not applicable.

    True when ``control`` is ``claim`` itself, or when both are Gaussian with the same
    sites and means and covariances equal to within ``rtol`` (relative to the largest
    entry). Two distinct sampled claims are never considered identical.
    """
    if control is claim:
        return True
    if not (isinstance(claim, GaussianClaim) and isinstance(control, GaussianClaim)):
        return False
    if tuple(claim.sites) != tuple(control.sites):
        return False
    pairs: list[tuple[Any, Any]] = [(claim.mean, control.mean), (claim.cov, control.cov)]
    for a, b in pairs:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return False
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-300)
        if not np.allclose(a, b, rtol=0.0, atol=rtol * scale):
            return False
    return True


# --------------------------------------------------------------------------- family controls


def read_claim(posterior: Callable[[Any], Claim], state, *, batched: bool = False) -> Claim:
    """The claim ``posterior(state)``, or ``jax.vmap(posterior)(state)`` for a batch of states.

    Run op by op (not jitted): a replication's claim in a batch is then the one
    ``posterior`` gives for that run's state alone, as the audits read it (a fused program
    rounds float32 differently). A Gaussian claim comes back in float64 NumPy.

    Parameters
    ----------
    posterior : callable
        One run's state -> claim (an agent's ``posterior`` or a family's claim function).
    state : pytree
        One run's state, or with ``batched`` a batch of them (leading replication axis).
    batched : bool
        Whether ``state`` has a leading replication axis.
    """
    claim = jax.vmap(posterior)(state) if batched else posterior(state)
    if isinstance(claim, GaussianClaim):
        f64 = partial(np.asarray, dtype=np.float64)
        return GaussianClaim(f64(claim.mean), f64(claim.cov), claim.sites)
    return claim


def _read_like(claim: GaussianClaim, posterior: Callable[[Any], Claim], state) -> Claim:
    """``posterior`` of ``state``, batched when ``claim`` is (its mean has a leading axis)."""
    return read_claim(posterior, state, batched=np.ndim(claim.mean) > 1)


def _resited(claim: Claim, sites) -> Claim:
    """The same claim over other ``sites`` (of the same total size)."""
    if isinstance(claim, GaussianClaim):
        return GaussianClaim(claim.mean, claim.cov, sites)
    return SampledClaim(claim.draw, claim.params, sites, claim.whiten)


def _require_gaussian(claim: Claim, name: str) -> None:
    if not isinstance(claim, GaussianClaim):
        raise ValueError(
            f"claim is {type(claim).__name__}; control {name!r} expects a GaussianClaim"
        )


def _coupling_dropped(claim: Claim, state=None) -> Claim:
    """``blocks-decoupled`` with every row of a matrix-shaped site a site of its own.

    A meTS claim, sites ``psi`` (Ld,) and ``theta`` (K, d), keeps Ψ's block and each θ_i's;
    a dTS claim, ``psi`` (L, d) and ``theta`` (K, d), keeps each ψ_ℓ's and each θ_a's.
    Every other covariance is set to zero (a sampled claim: the blocks permuted
    independently across draws). ``state`` is not read.
    """
    del state
    rows = []
    for name, shape in claim.sites:
        if len(shape) >= 2:
            rows += [(f"{name}[{i}]", shape[1:]) for i in range(shape[0])]
        else:
            rows.append((name, shape))
    return _resited(_blocks_decoupled(_resited(claim, rows)), claim.sites)


def _published_factored_mean(claim: Claim, state) -> GaussianClaim:
    """The effect means of the paper's eq. 43 (the mean of the meTS family's "published"
    claim, which drops the coupling between effects), the claimed covariance unchanged."""
    _require_gaussian(claim, "published-factored-mean")
    published = _read_like(claim, partial(mets_posterior, factored="published"), state)
    return GaussianClaim(published.mean, claim.cov, claim.sites)


def _dts_approximation(claim: Claim, state) -> GaussianClaim:
    """The dTS approximation (W_ℓ dropped from the upward recursion) of a state with linear
    links, in place of the claim: wrong unless every W_ℓ = I."""
    _require_gaussian(claim, "dts-approximation")
    return _read_like(claim, dts_approximation_claim, state)


#: The family-specific controls, ``family -> {name -> (claim, state) -> claim}``, one
#: entry per family; each control is built from the family's own public claim functions
#: (:func:`ppl_bandits.mixed_effect.agents.mets_posterior`,
#: :func:`ppl_bandits.diffusion.agents.dts_approximation_claim`):
#:
#: - ``"mixed-effect"`` (meTS, HierTS): ``coupling-dropped`` (covariances between Ψ and θ
#:   and between actions' θ_i set to 0) and ``published-factored-mean`` (the mean of
#:   ``mets_posterior(state, "published")``, covariance unchanged);
#: - ``"diffusion"`` (dTS): ``coupling-dropped`` (covariances between different ψ_ℓ and
#:   θ_a set to 0) and ``dts-approximation`` (``dts_approximation_claim(state)``, for
#:   linear links).
#:
#: Each takes one claim and one run's state, or a batch of claims (leading replication
#: axis) and the batch of states they were read from.
FAMILY_CONTROLS: dict[str, dict[str, FamilyControl]] = {
    "mixed-effect": {
        "coupling-dropped": _coupling_dropped,
        "published-factored-mean": _published_factored_mean,
    },
    "diffusion": {
        "coupling-dropped": _coupling_dropped,
        "dts-approximation": _dts_approximation,
    },
}


def family_controls(family: str, state) -> ControlSet:
    """The generic controls and those of ``family`` (:data:`FAMILY_CONTROLS`), bound to ``state``.

    Parameters
    ----------
    family : str
        A key of :data:`FAMILY_CONTROLS`.
    state : pytree
        The agent state the claims to control were read from: one run's state, or a batch
        of states for batched claims (see :func:`read_claim`).

    Returns
    -------
    ControlSet
        :data:`GENERIC_CONTROLS` then the family's controls, each ``callable(claim)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ppl_bandits.core.claims import GaussianClaim
    >>> controls = family_controls("diffusion", state=None)
    >>> list(controls)[len(GENERIC_CONTROLS):]
    ['coupling-dropped', 'dts-approximation']
    >>> claim = GaussianClaim(np.zeros(4), np.full((4, 4), 0.5) + 0.5 * np.eye(4),
    ...                       (("psi", (1, 2)), ("theta", (1, 2))))
    >>> controls.apply("coupling-dropped", claim).cov
    array([[1. , 0.5, 0. , 0. ],
           [0.5, 1. , 0. , 0. ],
           [0. , 0. , 1. , 0.5],
           [0. , 0. , 0.5, 1. ]])
    """
    if family not in FAMILY_CONTROLS:
        raise ValueError(f"family is {family!r}; expected one of {list(FAMILY_CONTROLS)}")
    bound = {name: partial(fn, state=state) for name, fn in FAMILY_CONTROLS[family].items()}
    return ControlSet.generic(bound)
