"""MovieLens rating files: formats, loading with clear errors, synthetic ratings in the same
formats, download with checksum verification. The data are never shipped.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "BASE_URL",
    "DATASETS",
    "FORMATS",
    "Ratings",
    "detect_format",
    "download",
    "file_checksum",
    "from_arrays",
    "load_ratings",
    "resolve_file",
    "synthetic_ratings",
    "verify_checksum",
    "write_ratings",
]


#: Format name -> the file name GroupLens gives it.
FORMATS = {"100k": "u.data", "1m": "ratings.dat", "latest": "ratings.csv"}

_SEPARATORS = {"100k": "\t", "1m": "::", "latest": ","}

_LATEST_HEADER = ("userId", "movieId", "rating", "timestamp")

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


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


def resolve_file(path) -> tuple[Path, str | None]:
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
    file, fmt = resolve_file(path)
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
    file, named = resolve_file(path)
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


#: Archives :func:`download` knows: name -> (URL, MD5 published by GroupLens or None).
#: The MD5 of the fixed releases is the value GroupLens publishes next to the archive
#: (``<archive>.zip.md5``); the "latest" archives change over time, so their checksum is
#: read from that published file at download time.
DATASETS: dict[str, tuple[str, str | None]] = {
    "ml-100k": (BASE_URL + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": (BASE_URL + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-latest-small": (BASE_URL + "ml-latest-small.zip", None),
}
