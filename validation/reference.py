r"""NUTS ground truth with posteriordb-style provenance.

A *reference* is the posterior of a NumPyro model conditioned on recorded data, sampled
with NUTS and accepted only if it passes the gates of :mod:`validation.diagnostics`.
It is stored as data with provenance (Magnusson et al., posteriordb):

- ``draws.nc``: the ArviZ ``InferenceData`` (posterior, sample stats, observed data);
- ``reference.json``: model name and function, a SHA-256 hash of the data, the seed,
  the command and wall time of the run, the sampler settings, library versions, the
  diagnostics that were checked and the verdict, the creation time and the SHA-256 of
  ``draws.nc``.

A refused reference is still returned (so that its report can be read) but
:meth:`Reference.require_accepted` raises :class:`ReferenceRefused`, and
:func:`save_reference` refuses to store it unless asked to. :func:`load_reference`
re-checks the gates on the stored draws and raises :class:`ReferenceMismatch` if the
stored verdict disagrees.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from ppl_bandits.results import provenance, write_json
from validation.diagnostics import GateReport, check_gates

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import (once a day).
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "CHAIN_METHODS",
    "DRAWS_FILE",
    "RECORD_FILE",
    "NUTSSettings",
    "Reference",
    "ReferenceMismatch",
    "ReferenceRefused",
    "build_reference",
    "checked_nuts_settings",
    "data_hash",
    "load_reference",
    "run_nuts",
    "save_reference",
]

#: File name of the stored draws (ArviZ InferenceData as netCDF).
DRAWS_FILE = "draws.nc"
#: File name of the stored JSON record.
RECORD_FILE = "reference.json"
#: Accepted values of ``chain_method`` (``None`` picks one, see :func:`run_nuts`).
CHAIN_METHODS = ("parallel", "sequential", "vectorized")
#: Version of the layout of ``reference.json``.
SCHEMA_VERSION = 1
#: Extra NUTS fields kept as ``sample_stats``: energy (for E-BFMI), leapfrog steps (tree
#: depth), acceptance probability and potential energy (``lp``); ``diverging`` is always kept.
EXTRA_FIELDS = ("energy", "num_steps", "accept_prob", "potential_energy")

_RECORD_KEYS = (
    "model_name",
    "data_hash",
    "seed",
    "sampler",
    "var_names",
    "versions",
    "diagnostics",
    "accepted",
    "created",
)


class ReferenceRefused(RuntimeError):
    """A reference failed the acceptance gates and must not be used as ground truth."""


class ReferenceMismatch(ValueError):
    """A stored reference disagrees with itself (verdict, gates or draws were altered)."""


# --------------------------------------------------------------------------- provenance


def _canonical_array(x) -> np.ndarray:
    """``x`` as a contiguous little-endian array of canonical dtype (float64/int64/...)."""
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind == "f":
        arr = arr.astype("<f8")
    elif kind == "c":
        arr = arr.astype("<c16")
    elif kind == "i":
        arr = arr.astype("<i8")
    elif kind == "u":
        arr = arr.astype("<u8")
    elif kind == "b":
        arr = arr.astype("?")
    else:
        raise TypeError(
            f"array of dtype {arr.dtype} cannot be hashed; expected a numeric or boolean array"
        )
    return np.ascontiguousarray(arr)


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray | np.generic | jax.Array)


def _feed(h, x) -> None:
    """Feed an unambiguous, type-tagged serialisation of ``x`` into the hash ``h``."""
    if _is_array(x):
        arr = _canonical_array(x)
        h.update(f"array:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    elif isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple: names and fields
        h.update(f"namedtuple:{type(x).__qualname__}:{len(x)};".encode())
        for name, value in zip(x._fields, x, strict=True):
            h.update(f"field:{name};".encode())
            _feed(h, value)
    elif is_dataclass(x) and not isinstance(x, type):
        fs = fields(x)
        h.update(f"dataclass:{type(x).__qualname__}:{len(fs)};".encode())
        for f in fs:
            h.update(f"field:{f.name};".encode())
            _feed(h, getattr(x, f.name))
    elif isinstance(x, list | tuple):
        h.update(f"{type(x).__name__}:{len(x)};".encode())
        for value in x:
            _feed(h, value)
    elif isinstance(x, Mapping):
        keys = sorted(x, key=repr)
        h.update(f"mapping:{len(keys)};".encode())
        for k in keys:
            h.update(f"key:{k!r};".encode())
            _feed(h, x[k])
    else:
        text = repr(x)
        h.update(f"repr:{len(text)}:{text};".encode())


def data_hash(*args, **kwargs) -> str:
    r"""SHA-256 of the data a model is conditioned on, as ``"sha256:<hex>"``.

    Array arguments (NumPy, JAX, NumPy scalars) contribute their shape and the bytes of
    their values in a canonical dtype (floats as little-endian float64, signed integers as
    int64, unsigned as uint64, booleans as bytes), so the hash does not depend on JAX's x64
    setting for integer data or on the byte order. NamedTuples, dataclasses, tuples,
    lists and dicts are hashed field by field with their names; any other argument (a
    Python number, a string, ``None``) contributes its ``repr``. Every piece is tagged with
    its position or keyword, so moving a value between arguments changes the hash.

    Parameters
    ----------
    *args, **kwargs
        The model's data arguments, exactly as passed to the model.

    Returns
    -------
    str
        ``"sha256:"`` followed by 64 hexadecimal digits.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0.5, 1.0, -2.0])
    >>> data_hash(y, sigma=1.0) == data_hash(y.copy(), sigma=1.0)
    True
    >>> data_hash(y, sigma=1.0) == data_hash(np.array([0.5, 1.0, -2.5]), sigma=1.0)
    False
    """
    h = hashlib.sha256()
    h.update(b"ppl-bandits data_hash v1;")
    for i, value in enumerate(args):
        h.update(f"arg:{i};".encode())
        _feed(h, value)
    for name in sorted(kwargs):
        h.update(f"kwarg:{name};".encode())
        _feed(h, kwargs[name])
    return "sha256:" + h.hexdigest()


def _describe(x) -> Any:
    """A short JSON-ready description of a data argument (dtype and shape of arrays)."""
    if _is_array(x):
        arr = np.asarray(x)
        return f"{arr.dtype}{list(arr.shape)}"
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {
            "type": type(x).__qualname__,
            **{n: _describe(v) for n, v in zip(x._fields, x, strict=True)},
        }
    if isinstance(x, list | tuple):
        return [_describe(v) for v in x]
    if isinstance(x, Mapping):
        return {str(k): _describe(v) for k, v in x.items()}
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return type(x).__qualname__


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- sampling


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} is {value!r}; expected an integer >= {minimum}")
    return int(value)


class NUTSSettings(NamedTuple):
    """The settings of a NUTS run (:func:`run_nuts`), checked by :meth:`check`.

    The seed is not one of them: it is provenance, passed on its own. The defaults are
    those of a reference run (4 chains of 1000 draws after 1000 warm-up iterations).

    Examples
    --------
    >>> NUTSSettings(num_warmup=500).check().num_warmup
    500
    >>> NUTSSettings(num_chains=0).check()
    Traceback (most recent call last):
    ...
    ValueError: num_chains is 0; expected an integer >= 1
    """

    num_chains: int = 4
    """Independent chains (the acceptance gates of :mod:`validation.diagnostics` need 4)."""
    num_warmup: int = 1000
    """Warm-up (adaptation) iterations per chain, not kept; at least 0."""
    num_samples: int = 1000
    """Kept draws per chain; at least 1."""
    target_accept: float = 0.9
    """Target mean acceptance probability of the step-size adaptation, in (0, 1)."""
    dense_mass: bool = False
    """Adapt a dense (instead of diagonal) mass matrix."""
    max_tree_depth: int = 10
    """Maximum NUTS tree depth (at most 2**depth - 1 leapfrog steps per draw); at least 1."""
    chain_method: str | None = None
    """How chains run: ``None`` (``"parallel"`` when ``jax.local_device_count() >=
    num_chains``, else ``"sequential"``) or one of :data:`CHAIN_METHODS`."""

    def check(self) -> NUTSSettings:
        """These settings with numbers as Python ``int``/``float``, or a ``ValueError``.

        The message names the field, the value given and what is expected. Nothing is
        sampled; :func:`run_nuts` calls this before it starts.
        """
        num_chains = _check_int("num_chains", self.num_chains, 1)
        num_warmup = _check_int("num_warmup", self.num_warmup, 0)
        num_samples = _check_int("num_samples", self.num_samples, 1)
        max_tree_depth = _check_int("max_tree_depth", self.max_tree_depth, 1)
        if isinstance(self.target_accept, bool) or not (
            isinstance(self.target_accept, float | int | np.floating)
            and 0.0 < self.target_accept < 1.0
        ):
            raise ValueError(
                f"target_accept is {self.target_accept!r}; expected a number in (0, 1)"
            )
        if not isinstance(self.dense_mass, bool):
            raise ValueError(f"dense_mass is {self.dense_mass!r}; expected True or False")
        if self.chain_method is not None and self.chain_method not in CHAIN_METHODS:
            raise ValueError(
                f"chain_method is {self.chain_method!r}; expected None or one of {CHAIN_METHODS}"
            )
        return NUTSSettings(
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            target_accept=float(self.target_accept),
            dense_mass=self.dense_mass,
            max_tree_depth=max_tree_depth,
            chain_method=self.chain_method,
        )


def checked_nuts_settings(nuts: NUTSSettings | None) -> NUTSSettings:
    """``nuts`` (None for the defaults) checked, or a ``ValueError`` naming it.

    >>> checked_nuts_settings(None).num_chains
    4
    >>> checked_nuts_settings({"num_chains": 4})
    Traceback (most recent call last):
    ...
    ValueError: nuts is dict; expected a validation.reference.NUTSSettings
    """
    if nuts is None:
        return NUTSSettings()
    if not isinstance(nuts, NUTSSettings):
        raise ValueError(
            f"nuts is {type(nuts).__name__}; expected a validation.reference.NUTSSettings"
        )
    return nuts.check()


def _reject_settings_as_model_kwargs(model_kwargs: Mapping[str, Any]) -> None:
    """The NUTS settings were keywords of run_nuts once; they must not reach the model."""
    clash = sorted(set(model_kwargs) & set(NUTSSettings._fields))
    if clash:
        raise TypeError(
            f"{clash[0]} was passed as a model keyword argument; NUTS settings go in "
            f"nuts=NUTSSettings({clash[0]}=...), and a model keyword argument must not be "
            f"named like one of them ({', '.join(NUTSSettings._fields)})"
        )


def _sampler_settings(nuts: NUTSSettings, seed) -> dict[str, Any]:
    seed = _check_int("seed", seed, 0)
    chain_method = nuts.chain_method
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= nuts.num_chains else "sequential"
    return {
        "algorithm": "NUTS",
        "library": "numpyro",
        "num_chains": nuts.num_chains,
        "num_warmup": nuts.num_warmup,
        "num_samples": nuts.num_samples,
        "seed": seed,
        "target_accept": nuts.target_accept,
        "dense_mass": nuts.dense_mass,
        "max_tree_depth": nuts.max_tree_depth,
        "chain_method": chain_method,
        "extra_fields": list(EXTRA_FIELDS),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
    }


def run_nuts(
    model: Callable[..., Any],
    *model_args,
    nuts: NUTSSettings | None = None,
    seed: int = 0,
    progress_bar: bool = False,
    **model_kwargs,
):
    r"""Sample the posterior of a NumPyro model with NUTS and return ArviZ InferenceData.

    Runs :class:`numpyro.infer.NUTS` (Hoffman and Gelman 2014, with Stan's windowed
    adaptation of step size and mass matrix during ``nuts.num_warmup``) on
    :math:`p(\text{latent} \mid \text{data}) \propto p(\text{latent}, \text{data})`, where the
    data are the observed sites of ``model(*model_args, **model_kwargs)``.

    Parameters
    ----------
    model : callable
        A NumPyro model.
    *model_args, **model_kwargs
        Passed to the model (the data it is conditioned on). A keyword named like a field
        of :class:`NUTSSettings` raises ``TypeError`` (settings go in ``nuts``).
    nuts : NUTSSettings, optional
        Chains, warm-up, draws, target acceptance, mass matrix, tree depth and how the
        chains run; ``None`` for the defaults. Checked (:meth:`NUTSSettings.check`) before
        anything is sampled. ``chain_method=None`` uses ``"parallel"`` when
        ``jax.local_device_count() >= num_chains`` and ``"sequential"`` otherwise. (Set
        the device count with ``numpyro.set_host_device_count`` before JAX starts; this
        module never does.)
    seed : int
        Seed of ``jax.random.PRNGKey``, at least 0; the run is reproducible for a fixed
        seed, JAX version, backend and x64 setting.
    progress_bar : bool
        Show NumPyro's progress bar.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (every latent and deterministic site), ``sample_stats`` with
        ``diverging``, ``energy``, ``n_steps``, ``tree_depth``, ``acceptance_rate`` and
        ``lp``, and ``observed_data``. The sampler settings (the checked ``nuts``, the
        resolved ``chain_method`` and the seed) are stored as JSON in
        ``idata.posterior.attrs["sampler_settings"]``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro
    >>> import numpyro.distributions as dist
    >>> def normal_mean(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> nuts = NUTSSettings(num_warmup=200, num_samples=200, chain_method="vectorized")
    >>> idata = run_nuts(normal_mean, jnp.array([0.3, -0.1, 0.8]), nuts=nuts)
    >>> dict(idata.posterior.sizes)
    {'chain': 4, 'draw': 200}
    >>> sorted(v for v in ("diverging", "energy") if v in idata.sample_stats)
    ['diverging', 'energy']
    """
    if not callable(model):
        raise TypeError(f"model is {model!r}; expected a NumPyro model (a callable)")
    _reject_settings_as_model_kwargs(model_kwargs)
    nuts = checked_nuts_settings(nuts)
    settings = _sampler_settings(nuts, seed)
    kernel = NUTS(
        model,
        target_accept_prob=nuts.target_accept,
        dense_mass=nuts.dense_mass,
        max_tree_depth=nuts.max_tree_depth,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=nuts.num_warmup,
        num_samples=nuts.num_samples,
        num_chains=nuts.num_chains,
        chain_method=settings["chain_method"],
        progress_bar=progress_bar,
    )
    mcmc.run(
        jax.random.PRNGKey(settings["seed"]),
        *model_args,
        extra_fields=EXTRA_FIELDS,
        **model_kwargs,
    )
    idata = az.from_numpyro(mcmc, log_likelihood=False)
    idata.posterior.attrs["sampler_settings"] = json.dumps(settings, sort_keys=True)
    return idata


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """An MCMC reference posterior: draws, the gate verdict and the provenance record."""

    idata: Any
    """arviz.InferenceData with the NUTS draws and sample stats."""
    gate: GateReport
    """The acceptance-gate report of the draws."""
    record: dict[str, Any]
    """JSON-ready provenance (see :func:`build_reference`)."""

    @property
    def accepted(self) -> bool:
        """Whether every acceptance gate passed."""
        return bool(self.gate.accepted)

    def require_accepted(self) -> Reference:
        """Return ``self`` if accepted; otherwise raise :class:`ReferenceRefused`.

        The message lists every failed gate (value, where, threshold) and the advice.
        """
        if self.gate.accepted:
            return self
        name = self.record.get("model_name", "?")
        failed = "; ".join(
            f"{g.name} = {g.value:.5g} at {g.coordinate} (needs {g.comparison} {g.threshold:g})"
            for g in self.gate.failed
        )
        advice = "\n".join(f"  - {a}" for a in self.gate.advice)
        raise ReferenceRefused(
            f"reference {name!r} is refused: failed gates: {failed}.\nAdvice:\n{advice}"
        )


def build_reference(
    model: Callable[..., Any],
    *model_args,
    model_name: str,
    var_names: Sequence[str] | str | None = None,
    nuts: NUTSSettings | None = None,
    seed: int = 0,
    progress_bar: bool = False,
    **model_kwargs,
) -> Reference:
    r"""Run NUTS, check the acceptance gates and record the provenance of the result.

    Parameters
    ----------
    model : callable
        A NumPyro model, conditioned on ``model_args`` and ``model_kwargs``.
    *model_args, **model_kwargs
        The data (and any other arguments) passed to the model; hashed by
        :func:`data_hash`.
    model_name : str
        A name for the model and parameterisation, e.g. ``"mixed_effect/noncentered"``.
    var_names : sequence of str, str or None
        Posterior variables the gates are checked on; ``None`` checks all of them.
    nuts : NUTSSettings, optional
        Sampler settings (``None`` for the defaults), see :func:`run_nuts`.
    seed : int
        Seed of the chains, recorded as the reference's seed.
    progress_bar : bool
        Show NumPyro's progress bar.

    Returns
    -------
    Reference
        Also when the gates fail (``accepted`` is then false and
        :meth:`Reference.require_accepted` raises). ``record`` holds ``schema_version,
        model_name, model_function, data_hash, data_summary, sampler, var_names``, the
        provenance of :func:`ppl_bandits.results.provenance` (``command, seed, wall_seconds``
        of the NUTS run, ``versions``), ``diagnostics`` (:meth:`GateReport.to_dict`),
        ``accepted`` and ``created`` (UTC, ISO 8601).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpyro
    >>> import numpyro.distributions as dist
    >>> def normal_mean(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> nuts = NUTSSettings(num_warmup=500, num_samples=500, chain_method="vectorized")
    >>> ref = build_reference(normal_mean, jnp.array([0.3, -0.1, 0.8]),
    ...                       model_name="normal_mean", nuts=nuts)
    >>> ref.accepted, ref.record["data_hash"][:7], ref.record["sampler"]["num_chains"]
    (True, 'sha256:', 4)
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name is {model_name!r}; expected a non-empty string")
    started = time.perf_counter()
    idata = run_nuts(
        model, *model_args, nuts=nuts, seed=seed, progress_bar=progress_bar, **model_kwargs
    )
    gate = check_gates(idata, var_names=var_names)
    settings = json.loads(idata.posterior.attrs["sampler_settings"])
    record = {
        "schema_version": SCHEMA_VERSION,
        "model_name": model_name,
        "model_function": f"{getattr(model, '__module__', '?')}."
        f"{getattr(model, '__qualname__', type(model).__qualname__)}",
        "data_hash": data_hash(*model_args, **model_kwargs),
        "data_summary": {
            "args": [_describe(a) for a in model_args],
            "kwargs": {k: _describe(v) for k, v in sorted(model_kwargs.items())},
        },
        "sampler": settings,
        "var_names": list(gate.var_names),
        **provenance(seed=settings["seed"], wall_seconds=time.perf_counter() - started),
        "diagnostics": gate.to_dict(),
        "accepted": bool(gate.accepted),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return Reference(idata=idata, gate=gate, record=record)


def save_reference(
    ref: Reference,
    directory: str | Path,
    *,
    overwrite: bool = False,
    allow_refused: bool = False,
) -> Path:
    """Write ``directory/draws.nc`` and ``directory/reference.json``.

    Parameters
    ----------
    ref : Reference
        The reference to store.
    directory : str or Path
        Created if missing (with parents).
    overwrite : bool
        Replace existing files; otherwise an existing file raises ``FileExistsError``.
    allow_refused : bool
        Store a refused reference (for inspection). By default a refused reference
        raises :class:`ReferenceRefused`: refused references are never used.

    Returns
    -------
    Path
        The directory. The JSON record written there is ``ref.record`` plus ``files``
        (file names and the SHA-256 of ``draws.nc``, checked by :func:`load_reference`).
    """
    if not isinstance(ref, Reference):
        raise TypeError(f"ref is {type(ref).__name__}; expected a validation.reference.Reference")
    if not ref.accepted and not allow_refused:
        try:
            ref.require_accepted()
        except ReferenceRefused as err:
            raise ReferenceRefused(
                f"{err}\nNot saved to {directory}; pass allow_refused=True to store it anyway."
            ) from None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"directory is {directory}, which is a file; expected a folder")
    directory.mkdir(parents=True, exist_ok=True)
    draws_path, record_path = directory / DRAWS_FILE, directory / RECORD_FILE
    if not overwrite:
        for path in (draws_path, record_path):
            if path.exists():
                raise FileExistsError(
                    f"{path} already exists; pass overwrite=True or choose another directory"
                )
    # The JSON is written last, so an interrupted save leaves no record behind.
    record_path.unlink(missing_ok=True)
    ref.idata.to_netcdf(str(draws_path))
    record = dict(ref.record)
    record["files"] = {
        "draws": DRAWS_FILE,
        "draws_sha256": _file_sha256(draws_path),
        "record": RECORD_FILE,
    }
    write_json(record_path, record, sort_keys=True)
    return directory


def _compare_verdicts(stored: dict[str, Any], gate: GateReport, path: Path) -> None:
    problems = []
    if bool(stored["accepted"]) != gate.accepted:
        problems.append(f"accepted is {stored['accepted']} but the draws give {gate.accepted}")
    diag = stored["diagnostics"]
    if bool(diag.get("accepted")) != gate.accepted:
        problems.append(
            f"diagnostics.accepted is {diag.get('accepted')} but the draws give {gate.accepted}"
        )
    stored_gates = {g["name"]: bool(g["passed"]) for g in diag.get("gates", [])}
    for g in gate.gates:
        if g.name not in stored_gates:
            problems.append(f"gate {g.name} is missing from diagnostics.gates")
        elif stored_gates[g.name] != g.passed:
            problems.append(
                f"gate {g.name} is stored as passed={stored_gates[g.name]} but the draws give "
                f"passed={g.passed} (value {g.value:.5g} at {g.coordinate})"
            )
    if problems:
        raise ReferenceMismatch(
            f"{path}: the stored verdict disagrees with the gates recomputed from "
            f"{DRAWS_FILE}: " + "; ".join(problems)
        )


def load_reference(directory: str | Path, recheck: bool = True) -> Reference:
    """Read a reference written by :func:`save_reference`, optionally re-checking it.

    Parameters
    ----------
    directory : str or Path
        Folder holding ``draws.nc`` and ``reference.json``.
    recheck : bool
        Recompute the acceptance gates from the stored draws (on the recorded
        ``var_names``) and raise :class:`ReferenceMismatch` if the stored verdict or any
        gate's pass/fail disagrees. The SHA-256 of ``draws.nc`` is checked either way.

    Returns
    -------
    Reference
        With the recomputed :class:`GateReport` when ``recheck``, else the stored one.
        A refused reference loads, but :meth:`Reference.require_accepted` raises.

    Raises
    ------
    FileNotFoundError
        If the directory or one of its two files is missing.
    ReferenceMismatch
        If ``draws.nc`` does not match its recorded hash or the verdict disagrees.
    ValueError
        If ``reference.json`` is not valid JSON or lacks required keys.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(
            f"reference directory {directory} does not exist; expected a folder written by "
            "save_reference"
        )
    if not directory.is_dir():
        raise NotADirectoryError(f"directory is {directory}, which is a file; expected a folder")
    draws_path, record_path = directory / DRAWS_FILE, directory / RECORD_FILE
    for path in (record_path, draws_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; a stored reference needs {RECORD_FILE} and {DRAWS_FILE}"
            )
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{record_path} is not valid JSON: {err}") from err
    if not isinstance(record, dict):
        raise ValueError(f"{record_path} holds a {type(record).__name__}; expected an object")
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"{record_path} lacks the keys {missing}; expected {list(_RECORD_KEYS)}")
    expected_sha = record.get("files", {}).get("draws_sha256")
    if expected_sha is not None:
        actual_sha = _file_sha256(draws_path)
        if actual_sha != expected_sha:
            raise ReferenceMismatch(
                f"{draws_path} has {actual_sha} but {record_path} records {expected_sha}; "
                "the draws were changed after the reference was saved"
            )
    with az.rc_context({"data.load": "eager"}):
        idata = az.from_netcdf(str(draws_path))
    if recheck:
        gate = check_gates(idata, var_names=record["var_names"])
        _compare_verdicts(record, gate, record_path)
    else:
        gate = GateReport.from_dict(record["diagnostics"])
    return Reference(idata=idata, gate=gate, record=record)
