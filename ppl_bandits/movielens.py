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
A rank-``d`` factorization (:func:`ppl_bandits.embeddings.fit_embeddings`) gives user
vectors :math:`x_j` and movie vectors :math:`\theta_i`; a Gaussian mixture with ``L``
components on the movie vectors gives the proxy mixed-effect prior
(:func:`ppl_bandits.embeddings.proxy_prior`). Each run samples ``K`` movies without
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
import re
import shutil
import tempfile
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "FORMATS",
    "MovieLensDTSPrior",
    "MovieLensStructure",
    "PretrainedMovies",
    "Ratings",
    "detect_format",
    "download",
    "file_checksum",
    "from_arrays",
    "load_ratings",
    "movielens_dts_environment",
    "movielens_environment",
    "movielens_structure",
    "pretrain_movie_prior",
    "reading",
    "register_experiments",
    "synthetic_ratings",
    "verify_checksum",
    "write_ratings",
]

#: Format name -> the file name GroupLens gives it.
FORMATS = {"100k": "u.data", "1m": "ratings.dat", "latest": "ratings.csv"}
_SEPARATORS = {"100k": "\t", "1m": "::", "latest": ","}
_LATEST_HEADER = ("userId", "movieId", "rating", "timestamp")

_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
#: Archives :func:`download` knows: name -> (URL, MD5 published by GroupLens or None).
#: The MD5 of the fixed releases is the value GroupLens publishes next to the archive
#: (``<archive>.zip.md5``); the "latest" archives change over time, so their checksum is
#: read from that published file at download time.
DATASETS: dict[str, tuple[str, str | None]] = {
    "ml-100k": (_BASE_URL + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": (_BASE_URL + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-latest-small": (_BASE_URL + "ml-latest-small.zip", None),
}


class Ratings(NamedTuple):
    """A ratings data set in compact form (numpy arrays; n ratings, U users, I items)."""

    user: np.ndarray
    """(n,) int32 user index in 0..U-1."""
    item: np.ndarray
    """(n,) int32 item index in 0..I-1."""
    rating: np.ndarray
    """(n,) float64 rating."""
    user_ids: np.ndarray
    """(U,) int64 original user ids, sorted."""
    item_ids: np.ndarray
    """(I,) int64 original item (movie) ids, sorted."""
    source: str
    """The file the ratings were read from ("" when built in memory)."""
    format: str
    """One of :data:`FORMATS` ("" when built in memory)."""

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def num_ratings(self) -> int:
        return int(self.rating.shape[0])


# --------------------------------------------------------------------------- loading


def _resolve_file(path) -> tuple[Path, str | None]:
    """The ratings file inside ``path`` (a file or an unpacked archive) and its format."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(
            f"MovieLens path {str(p)!r} does not exist; expected a ratings file (u.data, "
            "ratings.dat or ratings.csv) or a directory holding one"
        )
    if p.is_dir():
        found = [(p / name, fmt) for fmt, name in FORMATS.items() if (p / name).is_file()]
        if not found:
            found = [
                (sub / name, fmt)
                for sub in sorted(p.iterdir())
                if sub.is_dir()
                for fmt, name in FORMATS.items()
                if (sub / name).is_file()
            ]
        if not found:
            raise ValueError(
                f"directory {str(p)!r} holds no MovieLens ratings file; expected one of "
                f"{', '.join(FORMATS.values())} in it or in a subdirectory"
            )
        if len(found) > 1:
            names = ", ".join(str(f) for f, _ in found)
            raise ValueError(
                f"directory {str(p)!r} holds several ratings files ({names}); give the path "
                "of one of them"
            )
        return found[0]
    for fmt, name in FORMATS.items():
        if p.name == name:
            return p, fmt
    return p, None


def detect_format(path) -> str:
    """The format ("100k", "1m" or "latest") of a ratings file or unpacked archive.

    The file name decides when it is one of GroupLens's names; otherwise the first
    non-empty line: a ``userId,movieId,...`` header means "latest", ``::`` means "1m", a
    tab means "100k".
    """
    file, fmt = _resolve_file(path)
    if fmt is not None:
        return fmt
    with open(file, "rb") as fh:
        head = fh.read(4096).decode("utf-8", "replace")
    first = next((line for line in head.splitlines() if line.strip()), "")
    if not first:
        raise ValueError(f"MovieLens file {str(file)!r} is empty; expected ratings lines")
    if first.replace(" ", "").lower().startswith("userid,"):
        return "latest"
    if "::" in first:
        return "1m"
    if "\t" in first:
        return "100k"
    raise ValueError(
        f"cannot tell the format of MovieLens file {str(file)!r} from its first line "
        f"{first[:80]!r}; expected user<TAB>item<TAB>rating<TAB>timestamp (100k), "
        "user::item::rating::timestamp (1m) or a userId,movieId,rating,timestamp header (latest)"
    )


def _bad_line(file: Path, lines: list[str], start: int, sep: str, what: str) -> str:
    """Describe the first line that is not four numeric fields (slow path, errors only)."""
    for number, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != 4:
            return (
                f"MovieLens file {str(file)!r}, line {number}: {len(fields)} fields "
                f"{line[:80]!r}; expected 4 ({what}) separated by {sep!r}"
            )
        for name, text in zip(("user", "item", "rating", "timestamp"), fields, strict=True):
            try:
                ok = np.isfinite(float(text))
            except ValueError:
                ok = False
            if not ok:
                return (
                    f"MovieLens file {str(file)!r}, line {number}: {name} is {text.strip()!r}; "
                    "expected a finite number"
                )
    return f"MovieLens file {str(file)!r} could not be parsed; expected lines of {what}"


def load_ratings(path, *, format: str | None = None) -> Ratings:
    """Read MovieLens ratings from a file or an unpacked archive directory.

    Parameters
    ----------
    path : str or Path
        ``u.data``, ``ratings.dat``, ``ratings.csv`` (or a file in one of those formats
        under another name), or a directory holding one of them (directly or one level
        down, e.g. the directory that holds ``ml-1m/``).
    format : {"100k", "1m", "latest"}, optional
        Skip detection (:func:`detect_format`).

    Raises
    ------
    ValueError
        Naming the file and the problem: a missing path, an empty file, a line with the
        wrong number of fields or a non-numeric field (with its line number), a wrong
        header, non-integer ids or non-finite ratings.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "u.data").write_text("1\\t10\\t4\\t881250949\\n2\\t10\\t3\\t881250950\\n")
    >>> r = load_ratings(d)
    >>> r.format, r.num_users, r.num_items, r.rating.tolist()
    ('100k', 2, 1, [4.0, 3.0])
    """
    file, named = _resolve_file(path)
    if format is None:
        format = named or detect_format(file)
    if format not in FORMATS:
        raise ValueError(f"format is {format!r}; expected one of {tuple(FORMATS)}")
    sep = _SEPARATORS[format]
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.splitlines()
    start = 1
    what = "user, item, rating, timestamp"
    if format == "latest":
        header = next((i for i, line in enumerate(lines) if line.strip()), None)
        if header is None:
            raise ValueError(f"MovieLens file {str(file)!r} is empty; expected a header and rows")
        names = tuple(h.strip() for h in lines[header].split(","))
        if names != _LATEST_HEADER:
            raise ValueError(
                f"MovieLens file {str(file)!r} has header {lines[header].strip()[:80]!r}; "
                f"expected columns {','.join(_LATEST_HEADER)}"
            )
        start = header + 2
        lines = lines[header + 1 :]
    body = [line for line in lines if line.strip()]
    if not body:
        raise ValueError(f"MovieLens file {str(file)!r} is empty; expected ratings lines ({what})")
    joined = "\n".join(body)
    flat = joined.replace(sep, " ")
    # Four non-empty fields per line, then numbers only: anything else takes the slow path
    # that finds the first bad line.
    fields_ok = all(line.count(sep) == 3 for line in body)
    empty = re.search(rf"(^|{re.escape(sep)})[ \t]*({re.escape(sep)}|$)", joined, re.M)
    values = None
    if fields_ok and empty is None and re.search(r"[^0-9eE+\-.\s]", flat) is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                values = np.fromstring(flat, dtype=np.float64, sep=" ")
            except (ValueError, DeprecationWarning):
                values = None
    if values is None or values.size != 4 * len(body):
        raise ValueError(_bad_line(file, lines, start, sep, what))
    table = values.reshape(len(body), 4)
    ids = table[:, :2]
    if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
        bad_rows = ~np.all(np.isfinite(ids), axis=1) | np.any(ids != np.round(ids), axis=1)
        row = int(np.flatnonzero(bad_rows)[0])
        raise ValueError(
            f"MovieLens file {str(file)!r}: rating {row + 1} has user/item ids "
            f"{ids[row].tolist()}; expected integers"
        )
    if not np.all(np.isfinite(table[:, 2])):
        raise ValueError(f"MovieLens file {str(file)!r} has non-finite ratings; expected numbers")
    ratings = from_arrays(table[:, 0], table[:, 1], table[:, 2])
    return ratings._replace(source=str(file), format=format)


def from_arrays(users, items, ratings) -> Ratings:
    """A :class:`Ratings` from arrays of original user ids, item ids and ratings."""
    users = np.asarray(users)
    items = np.asarray(items)
    rating = np.asarray(ratings, np.float64)
    if not (users.shape == items.shape == rating.shape) or users.ndim != 1:
        raise ValueError(
            f"users, items, ratings have shapes {users.shape}, {items.shape}, {rating.shape}; "
            "expected equal 1-d shapes"
        )
    if users.size == 0:
        raise ValueError("ratings are empty; expected at least one rating")
    user_ids, u = np.unique(users.astype(np.int64), return_inverse=True)
    item_ids, i = np.unique(items.astype(np.int64), return_inverse=True)
    return Ratings(u.astype(np.int32), i.astype(np.int32), rating, user_ids, item_ids, "", "")


def write_ratings(path, ratings: Ratings, format: str, *, timestamps=None) -> Path:
    """Write ``ratings`` (original ids) in one of :data:`FORMATS` (tests and benchmarks)."""
    if format not in FORMATS:
        raise ValueError(f"format is {format!r}; expected one of {tuple(FORMATS)}")
    path = Path(path)
    n = ratings.num_ratings
    ts = np.arange(n, dtype=np.int64) + 978300000 if timestamps is None else timestamps
    u = ratings.user_ids[ratings.user]
    i = ratings.item_ids[ratings.item]
    r = ratings.rating
    integral = np.all(r == np.round(r)) and format != "latest"
    rs = r.astype(np.int64).astype(str) if integral else np.char.mod("%.1f", r)
    sep = _SEPARATORS[format]
    rows = [
        f"{a}{sep}{b}{sep}{c}{sep}{t}"
        for a, b, c, t in zip(
            u.tolist(), i.tolist(), rs.tolist(), np.asarray(ts).tolist(), strict=True
        )
    ]
    head = ",".join(_LATEST_HEADER) + "\n" if format == "latest" else ""
    path.write_text(head + "\n".join(rows) + "\n")
    return path


def synthetic_ratings(
    num_users: int = 6040,
    num_items: int = 3706,
    num_ratings: int = 1_000_000,
    *,
    rank: int = 5,
    noise_sd: float = 0.8,
    seed: int = 0,
    half_stars: bool = False,
) -> Ratings:
    """Ratings from a low-rank model, rounded to 1..5 stars (ML-1M-sized by default).

    Latent user and item vectors are N(0, I/√rank) (so x·θ has unit variance); a rating is
    round(3.6 + 0.9 (x_uᵀθ_i) + noise) clipped to [1, 5] (half stars with ``half_stars``).
    Which (user, item) pairs are rated follows a Zipf-like popularity of items, as in real
    data. Used by tests and benchmarks where the real data (not redistributable) are absent.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(num_users, rank)) / rank**0.25
    T = rng.normal(size=(num_items, rank)) / rank**0.25
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    pop = rng.permutation(pop / pop.sum())
    num_ratings = min(int(num_ratings), num_users * num_items)
    # Draw pairs with replacement, keep unique ones, top up until there are enough.
    keys = np.empty(0, np.int64)
    while keys.size < num_ratings:
        m = int(1.3 * (num_ratings - keys.size)) + 10
        uu = rng.integers(0, num_users, m)
        ii = rng.choice(num_items, m, p=pop)
        keys = np.unique(np.concatenate([keys, uu.astype(np.int64) * num_items + ii]))
    keys = rng.permutation(keys)[:num_ratings]
    u, i = keys // num_items, keys % num_items
    z = np.einsum("nk,nk->n", X[u], T[i])
    step = 2.0 if half_stars else 1.0
    r = np.clip(np.round((3.6 + 0.9 * z + noise_sd * rng.normal(size=z.size)) * step) / step, 1, 5)
    return from_arrays(u + 1, i + 1, r)


# --------------------------------------------------------------------------- download


def file_checksum(path, algorithm: str = "md5") -> str:
    """Hex digest of a file (``algorithm`` is any :mod:`hashlib` name: md5, sha256, ...)."""
    try:
        h = hashlib.new(algorithm)
    except ValueError:
        raise ValueError(f"algorithm is {algorithm!r}; expected a hashlib name") from None
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path, expected: str, algorithm: str | None = None) -> str:
    """Check a file's digest against ``expected``; return the digest.

    ``algorithm`` defaults to MD5 for a 32-digit ``expected`` and SHA-256 for a 64-digit
    one (the two GroupLens and mirrors publish).

    Raises
    ------
    ValueError
        Naming the file, the expected and the actual digest when they differ.
    """
    expected = str(expected).strip().lower().split()[0] if str(expected).strip() else ""
    if algorithm is None:
        algorithm = {32: "md5", 64: "sha256"}.get(len(expected))
        if algorithm is None:
            raise ValueError(
                f"expected checksum is {expected!r}; expected 32 (MD5) or 64 (SHA-256) hex digits"
            )
    actual = file_checksum(path, algorithm)
    if actual != expected:
        raise ValueError(
            f"file {str(path)!r} has {algorithm} {actual}; expected {expected} (a corrupt or "
            "changed download: delete it and download again)"
        )
    return actual


def _published_md5(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url + ".md5", timeout=timeout) as resp:
        text = resp.read().decode("ascii", "replace")
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise ValueError(f"{url}.md5 holds no MD5 digest; got {text[:80]!r}")
    return match.group(0).lower()


def download(name: str, dest, *, checksum: str | None = None, timeout: float = 60.0) -> Path:
    """Download and unpack a MovieLens archive into ``dest``; return the unpacked directory.

    The archive is verified before unpacking: against ``checksum`` if given (MD5 or
    SHA-256), else against the MD5 GroupLens publishes (:data:`DATASETS`, or the
    ``.md5`` file next to the archive for the "latest" archives). By using the data you
    accept the GroupLens licence (no redistribution). An existing unpacked directory is
    reused without a download.
    """
    if name not in DATASETS:
        raise ValueError(f"name is {name!r}; expected one of {', '.join(DATASETS)}")
    url, md5 = DATASETS[name]
    dest = Path(dest).expanduser()
    target = dest / name
    if target.is_dir() and any(target.iterdir()):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    expected = checksum or md5 or _published_md5(url, timeout)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / Path(url).name
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        verify_checksum(archive, expected)
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ValueError(f"archive {url} has an unsafe member {member!r}")
            zf.extractall(dest)
    if not target.is_dir():
        raise ValueError(f"archive {url} did not unpack into {str(target)!r}")
    return target


# --------------------------------------------------------------------------- environment

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
    file, _ = _resolve_file(data)
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
            "ratings.csv or an unpacked archive; see ppl_bandits.movielens.download)"
        )
    key = _ratings_key(data)
    if isinstance(data, Ratings):
        return data, key
    return _cached(("ratings", key), lambda: load_ratings(data)), key


class MovieLensStructure(NamedTuple):
    """Embeddings and proxy structure of a ratings set (cached per data, rank, seed, L)."""

    embeddings: object
    """:class:`ppl_bandits.embeddings.Embeddings`."""
    movies: np.ndarray
    """(N,) indices of the movies with a training rating (the candidate actions)."""
    users: np.ndarray
    """(U',) indices of the users with a training rating (the candidate contexts)."""
    proxy: object
    """:class:`ppl_bandits.embeddings.ProxyStructure` fit on the candidate movies' vectors."""


def movielens_structure(
    data, *, rank: int = 5, num_effects: int = 5, seed: int = 0, reg: float = 0.1, holdout=0.1
) -> MovieLensStructure:
    """Embeddings (ALS) and GMM proxy structure of a ratings set, cached in memory."""
    from ppl_bandits.embeddings import fit_embeddings, fit_proxy_structure

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

    from ppl_bandits.environments import MixedEffectParams
    from ppl_bandits.types import Environment

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

    from ppl_bandits.spec import mixed_effect_prior

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
    :func:`ppl_bandits.environments.mixed_effect_environment`: ``K`` movies sampled
    without replacement among those with a training rating; θ_i their vectors; the prior
    :func:`ppl_bandits.embeddings.proxy_prior` with their GMM memberships as b_i;
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
        Passed to :func:`ppl_bandits.embeddings.fit_embeddings`. The embeddings and the
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


# --------------------------------------------------------------------------- dTS


class MovieLensDTSPrior(NamedTuple):
    """What the agents of the dTS MovieLens experiment are told (each reads its own part)."""

    diffusion: object
    """:class:`models.diffusion.DiffusionPrior`: the DDPM pre-trained on movie vectors (dTS)."""
    mixed: object
    """:class:`ppl_bandits.spec.MixedEffectPrior`: the GMM proxy on the same vectors."""


def reading(agent, field: str):
    """``agent`` with ``init`` reading ``prior.<field>`` (an agent for one part of a prior)."""
    from ppl_bandits.types import Agent

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
    """:class:`ppl_bandits.ddpm.DDPMSettings`."""
    scale: np.ndarray
    """(d,) s: the prior and the actions live in θ/s, the contexts are x ⊙ s (exact)."""
    pretrain: np.ndarray
    """(P, d) scaled vectors the DDPM and the mixture were fit on."""
    actions: np.ndarray
    """(N, d) scaled vectors of the held-out movies the runs sample their actions from."""
    proxy: object
    """:class:`ppl_bandits.embeddings.ProxyStructure` fit on ``pretrain``."""
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
    DDPM (:func:`ppl_bandits.ddpm.train_ddpm`) and a GMM proxy are fit on the first half
    (at most ``pretrain_samples`` of it), the runs draw their actions from the second, so
    the prior never saw the actions' own vectors. Each dimension is divided by its
    standard deviation s over the pre-training half (and the contexts multiplied by it),
    an exact reparametrization of the bandit that puts the data on the DDPM's unit scale.
    With ``prior_dir``, weights saved there by an earlier call are loaded (same settings)
    instead of trained, and newly trained weights are saved there.
    """
    import jax

    from ppl_bandits.ddpm import DDPMSettings, load_ddpm, save_ddpm, train_ddpm
    from ppl_bandits.embeddings import fit_proxy_structure

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
    :class:`MovieLensDTSPrior`: the DDPM's :func:`ppl_bandits.ddpm.ddpm_prior` for dTS,
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

        from ppl_bandits.ddpm import ddpm_prior

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


# --------------------------------------------------------------------------- experiments

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
    from ppl_bandits.experiments import check_positive_ints

    if settings["data"] is None:
        raise ValueError(
            f"experiment {name!r} needs the MovieLens ratings: give --data PATH (u.data, "
            "ratings.dat, ratings.csv or an unpacked archive; the licence forbids shipping "
            "them, see ppl_bandits.movielens.download)"
        )
    check_positive_ints(settings, ("num_actions", "num_effects", "dim"))
    if settings["rank"] is None:
        settings["rank"] = settings["dim"]
    if not float(settings["noise_sd"]) > 0:
        raise ValueError(f"noise_sd is {settings['noise_sd']!r}; expected a positive number")


def _mets_builder(reward: str, default_agents: tuple[str, ...]):
    def build(settings: dict, agents):
        from ppl_bandits.experiments import mixed_effect_agents

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
    from ppl_bandits.agents import AGENT_NAMES, make_agent, resolve_agent_name
    from ppl_bandits.diffusion import DIFFUSION_AGENT_NAMES, make_diffusion_agent
    from ppl_bandits.experiments import check_positive_ints

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
    from ppl_bandits.experiments import ExperimentSpec

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
    try:
        from ppl_bandits.supervised import register_experiments as register_supervised
    except ImportError:  # pragma: no cover - the supervised module is optional
        return
    register_supervised(register)
