"""The one result writer: provenance fields, strict JSON and the output-directory check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ppl_bandits.results import prepare_out_dir, provenance, strict_json, write_json

PROVENANCE_KEYS = {"command", "seed", "wall_seconds", "versions"}


def _strict_load(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_provenance_has_every_field():
    p = provenance(seed=7, wall_seconds=np.float32(2.5), command="ppl-bandits simulate x")
    assert set(p) == PROVENANCE_KEYS
    assert p["seed"] == 7 and p["wall_seconds"] == 2.5 and isinstance(p["wall_seconds"], float)
    assert p["command"] == "ppl-bandits simulate x"
    assert {"python", "jax", "numpyro", "numpy"} <= set(p["versions"])


def test_provenance_defaults_to_this_process_command():
    assert provenance(seed=None, wall_seconds=None)["command"].split()[0]


def test_written_records_are_strict_json(tmp_path):
    record = {
        "se": float("nan"),
        "values": np.array([1.0, np.inf, -np.inf]),
        "n": np.int64(3),
        "path": tmp_path / "x",
        **provenance(seed=1, wall_seconds=0.1),
    }
    path = write_json(tmp_path / "sub" / "r.json", record)
    loaded = _strict_load(path.read_text())
    assert loaded["se"] is None and loaded["values"] == [1.0, None, None]
    assert loaded["n"] == 3 and loaded["path"] == str(tmp_path / "x")
    assert PROVENANCE_KEYS <= set(loaded)


def test_strict_json_negative_control():
    """Without the conversion, Python's encoder writes NaN, which a strict parser refuses."""
    with pytest.raises(ValueError, match="non-strict"):
        _strict_load(json.dumps({"se": math.nan}))
    assert _strict_load(json.dumps(strict_json({"se": math.nan}))) == {"se": None}


def test_prepare_out_dir_creates_and_names_the_option(tmp_path):
    out = prepare_out_dir(tmp_path / "a" / "b", "--out")
    assert out.is_dir() and not any(out.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"^--out is .*which is a file; expected a directory"):
        prepare_out_dir(blocker, "--out")
    with pytest.raises(ValueError, match=r"^out_dir is .*cannot be created or written"):
        prepare_out_dir(blocker / "sub", "out_dir")
    with pytest.raises(ValueError, match=r"^--out is int; expected a directory path"):
        prepare_out_dir(3, "--out")


def test_prepare_out_dir_refuses_a_directory_where_a_file_goes(tmp_path):
    (tmp_path / "audit.json").mkdir()
    with pytest.raises(ValueError, match=r"audit\.json exists and cannot be overwritten"):
        prepare_out_dir(tmp_path, "--out", files=("audit.json",))
    assert prepare_out_dir(tmp_path, "--out", files=("report.html",)) == Path(tmp_path)
