r"""The posterior an agent's state claims: the seam between the fast path and its audits.

Every agent says what distribution over the model's latent parameters its state stands
for, through ``Agent.posterior(state)``. Two kinds of claim exist:

- :class:`GaussianClaim`: the claim is a Gaussian with moments ``mean`` (p,) and ``cov``
  (p, p) over the flattened latent vector;
- :class:`SampledClaim`: the claim is known through independent draws, ``sample(key, n)``
  returning an (n, p) array (for example the dTS approximation with neural links, which is
  Gaussian only conditionally).

The flattening is documented by ``sites``: a tuple of ``(name, shape)`` pairs, in order;
the latent vector is the concatenation of each site's C-order flattening. The names are
those of the NumPyro model's latent sites (``"psi"``, ``"theta"``), so an audit can
condition the model on the same data and compare site by site.

Both claims are JAX pytrees whose ``sites`` (and a sampler's function) are static data, so
``jax.vmap(agent.posterior)(states)`` gives a batch of claims with a leading axis.

Validation reads these claims only; it never reads an agent's state fields.

>>> import jax.numpy as jnp
>>> c = GaussianClaim(jnp.zeros(3), jnp.eye(3), (("theta", (3,)),))
>>> c.dim, site_slices(c.sites)["theta"]
(3, slice(0, 3, None))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "Claim",
    "GaussianClaim",
    "SampledClaim",
    "Sites",
    "flatten_sites",
    "site_slices",
    "sites_dim",
]

#: ``((name, shape), ...)``: the order and shapes of the flattened latent vector.
Sites = tuple[tuple[str, tuple[int, ...]], ...]


def _as_sites(sites) -> Sites:
    try:
        out = tuple((str(name), tuple(int(s) for s in shape)) for name, shape in sites)
    except (TypeError, ValueError):
        raise ValueError(
            f"sites is {sites!r}; expected a sequence of (name, shape) pairs"
        ) from None
    return out


def sites_dim(sites: Sites) -> int:
    """Length of the flattened latent vector, the sum of the sites' sizes."""
    return sum(math.prod(shape) for _, shape in sites)


def site_slices(sites: Sites) -> dict[str, slice]:
    """Where each site lies in the flattened vector."""
    out, start = {}, 0
    for name, shape in sites:
        size = math.prod(shape)
        out[name] = slice(start, start + size)
        start += size
    return out


def flatten_sites(values: dict, sites: Sites, *, batch_dims: int = 0) -> np.ndarray:
    """Concatenate ``values[name]`` over ``sites``, each flattened after ``batch_dims`` axes."""
    parts = []
    for name, shape in sites:
        arr = np.asarray(values[name])
        lead = arr.shape[:batch_dims]
        if arr.shape[batch_dims:] != tuple(shape):
            raise ValueError(
                f"site {name!r} has shape {arr.shape[batch_dims:]}; expected {tuple(shape)}"
            )
        parts.append(arr.reshape(*lead, -1))
    return np.concatenate(parts, axis=-1)


@jax.tree_util.register_pytree_node_class
class GaussianClaim:
    """A Gaussian claim N(mean, cov) over the flattened latent vector described by ``sites``."""

    __slots__ = ("cov", "mean", "sites")

    def __init__(self, mean, cov, sites):
        self.mean = mean
        """(..., p) claimed posterior mean."""
        self.cov = cov
        """(..., p, p) claimed posterior covariance."""
        self.sites = _as_sites(sites)

    @property
    def dim(self) -> int:
        return sites_dim(self.sites)

    def tree_flatten(self):
        return (self.mean, self.cov), self.sites

    @classmethod
    def tree_unflatten(cls, sites, children):
        obj = object.__new__(cls)
        obj.mean, obj.cov = children
        obj.sites = sites
        return obj

    def __repr__(self) -> str:
        return f"GaussianClaim(p={self.dim}, sites={self.sites})"


@jax.tree_util.register_pytree_node_class
class SampledClaim:
    r"""A claim known through draws: ``sample(key, n)`` returns (n, p) independent draws.

    ``params`` are the arrays the sampler reads (a pytree, batched under ``vmap``); the
    sampler is called as ``draw(params, key, n)``.

    ``whiten`` (optional, static like ``draw``) is called as ``whiten(params, x)``: a map
    from a flattened latent vector x (p,) to p values that are independent standard
    normals when x is drawn from the claim. For a claim that is a chain of conditional
    Gaussians (the dTS approximation) these are the chain's whitened innovations, so that
    :math:`|z|^2` is :math:`\chi^2_p` under the claim: what a calibration needs of a
    non-Gaussian claim. None when the claim cannot whiten a point. A claim made from
    another one by transforming its draws (a negative control) does not inherit it.
    """

    __slots__ = ("draw", "params", "sites", "whiten")

    def __init__(
        self,
        draw: Callable[[Any, Any, int], Any],
        params,
        sites,
        whiten: Callable[[Any, Any], Any] | None = None,
    ):
        self.draw = draw
        self.params = params
        self.sites = _as_sites(sites)
        self.whiten = whiten

    @property
    def dim(self) -> int:
        return sites_dim(self.sites)

    def sample(self, key, num: int):
        """(num, p) independent draws of the claimed distribution."""
        return self.draw(self.params, key, int(num))

    def whitened(self, x):
        """(p,) standard normals under the claim for the flattened latent vector ``x`` (p,).

        Raises ``ValueError`` when the claim has no ``whiten`` map.
        """
        if self.whiten is None:
            raise ValueError(
                f"{self!r} has no whiten map; expected a SampledClaim built with whiten="
            )
        return self.whiten(self.params, x)

    def tree_flatten(self):
        return (self.params,), (self.draw, self.sites, self.whiten)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.draw, obj.sites, obj.whiten = aux
        (obj.params,) = children
        return obj

    def __repr__(self) -> str:
        return f"SampledClaim(p={self.dim}, sites={self.sites})"


Claim = GaussianClaim | SampledClaim
