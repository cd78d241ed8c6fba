"""Recorded bandit histories: the rounds an agent played, read from and written to files.

A history is three arrays: ``contexts`` (n, d), the context of the played action in each
round; ``actions`` (n,), the played actions; ``rewards`` (n,), the observed rewards. Two
file formats:

- CSV with a header: the columns ``action`` and ``reward`` and the context columns, which
  are all the other columns in their order (for example ``x0,x1,action,reward``);
- ``.npz`` with the arrays ``contexts``, ``actions`` and ``rewards``.

``ppl-bandits audit --history FILE`` audits an agent's posterior after these rounds.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "h.csv")
>>> _ = write_history(path, [[0.5, -1.0], [1.0, 0.0]], [2, 0], [0.3, -0.1])
>>> x, a, y = load_history(path)
>>> x.shape, a.tolist(), y.tolist()
((2, 2), [2, 0], [0.3, -0.1])
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["HISTORY_FORMATS", "load_history", "write_history"]

#: File suffixes a history can be read from.
HISTORY_FORMATS = (".csv", ".npz")


def _finish(path: Path, contexts, actions, rewards):
    contexts = np.asarray(contexts, np.float64)
    rewards = np.asarray(rewards, np.float64)
    actions_f = np.asarray(actions, np.float64)
    n = rewards.shape[0] if rewards.ndim == 1 else -1
    if contexts.ndim != 2 or rewards.ndim != 1 or actions_f.ndim != 1:
        raise ValueError(
            f"history {str(path)!r} has contexts {contexts.shape}, actions {actions_f.shape} "
            f"and rewards {rewards.shape}; expected (n, d), (n,) and (n,)"
        )
    if contexts.shape[0] != n or actions_f.shape[0] != n:
        raise ValueError(
            f"history {str(path)!r} has {contexts.shape[0]} contexts, {actions_f.shape[0]} "
            f"actions and {n} rewards; expected the same number of rounds in each"
        )
    if n == 0 or contexts.shape[1] == 0:
        raise ValueError(
            f"history {str(path)!r} is empty; expected at least one round and one context column"
        )
    for name, arr in (("contexts", contexts), ("actions", actions_f), ("rewards", rewards)):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"history {str(path)!r} has a non-finite {name[:-1]} in round {row}; "
                "expected finite values"
            )
    if np.any(actions_f != np.round(actions_f)) or np.any(actions_f < 0):
        row = int(np.argmax((actions_f != np.round(actions_f)) | (actions_f < 0)))
        raise ValueError(
            f"history {str(path)!r} has action {float(actions_f[row])!r} in round {row}; expected "
            "integers >= 0"
        )
    return contexts, actions_f.astype(np.int32), rewards


def load_history(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a history from a CSV or ``.npz`` file (see the module docstring).

    Raises
    ------
    ValueError
        Naming the file, for a missing file, an unknown suffix, missing columns or arrays,
        non-numeric or non-finite entries, or actions that are not integers >= 0.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"history {str(path)!r} does not exist; expected a .csv or .npz file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            missing = [k for k in ("contexts", "actions", "rewards") if k not in data.files]
            if missing:
                raise ValueError(
                    f"history {str(path)!r} has arrays {sorted(data.files)}; expected "
                    "contexts, actions and rewards"
                )
            return _finish(path, data["contexts"], data["actions"], data["rewards"])
    if suffix != ".csv":
        raise ValueError(
            f"history {str(path)!r} has suffix {suffix!r}; expected one of {HISTORY_FORMATS}"
        )
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"history {str(path)!r} is empty; expected a header and one row per round")
    header = [h.strip() for h in rows[0]]
    if "action" not in header or "reward" not in header:
        raise ValueError(
            f"history {str(path)!r} has columns {header}; expected 'action', 'reward' and the "
            "context columns"
        )
    try:
        table = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(
            f"history {str(path)!r} has a non-numeric entry ({exc}); expected numbers"
        ) from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise ValueError(
            f"history {str(path)!r} has rows of unequal length; expected {len(header)} columns"
        )
    a, y = header.index("action"), header.index("reward")
    ctx = [j for j in range(len(header)) if j not in (a, y)]
    return _finish(path, table[:, ctx], table[:, a], table[:, y])


def write_history(path, contexts, actions, rewards) -> Path:
    """Write a history as CSV (columns ``x0..x{d-1},action,reward``) or ``.npz``."""
    path = Path(path)
    contexts, actions, rewards = _finish(path, contexts, actions, rewards)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npz":
        np.savez(path, contexts=contexts, actions=actions, rewards=rewards)
        return path
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"x{j}" for j in range(contexts.shape[1])] + ["action", "reward"])
        for x, a, y in zip(contexts, actions, rewards, strict=True):
            w.writerow([repr(float(v)) for v in x] + [int(a), repr(float(y))])
    return path
