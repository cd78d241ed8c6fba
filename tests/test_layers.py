"""The layers of the house, checked by the import-linter contracts in pyproject.toml.

The command line is on top, then validation, then the fast path, then the models; the
contracts say which arrow may not exist. The negative control copies the tree, adds one
forbidden import (models importing the fast path) and checks that the contracts break.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "tree"
    for name in ("ppl_bandits", "models", "validation"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_every_layer_contract_is_kept(tmp_path):
    res = _lint(_copy(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_a_forbidden_import_is_caught(tmp_path):
    """Negative control: models importing the fast path breaks the first contract."""
    tree = _copy(tmp_path)
    checks = tree / "models" / "checks.py"
    checks.write_text(checks.read_text() + "\nimport ppl_bandits.core.types  # noqa: E402,F401\n")
    res = _lint(tree)
    assert res.returncode != 0, res.stdout
    assert "models know no one in the project BROKEN" in res.stdout
    assert "models.checks -> ppl_bandits.core.types" in res.stdout
