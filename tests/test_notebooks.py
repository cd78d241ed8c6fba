"""The teaching notebooks: stored without outputs, and executed top to bottom.

Each notebook's first code cell is tagged ``parameters`` and sets ``SIZE = "small"``, the
size executed here (seconds per notebook; JAX compilation dominates). ``make notebooks``
renders them at ``SIZE = "teaching"`` with ``notebooks/render.py``, whose
:func:`execute_notebook` runs them here too: the kernel is the Python running the tests
(the project's ``.venv``), through a temporary kernelspec that points at ``sys.executable``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]
#: Wall-clock limit of one cell at the small size (a hang fails instead of blocking).
CELL_TIMEOUT_S = 300


def _render_module():
    spec = importlib.util.spec_from_file_location("notebooks_render", ROOT / "notebooks/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def cell_seconds(nb) -> list[tuple[int, float]]:
    """(cell index, seconds) of each executed code cell, from nbclient's timing metadata."""
    from datetime import datetime

    out = []
    for i, c in enumerate(nb.cells):
        timing = c.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            out.append((i, (end - start).total_seconds()))
    return out


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 5, NAMES


def check_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_stored_without_outputs(path):
    """No stored outputs or execution counts: the repository holds sources, not stale results."""
    check_no_outputs(path)


def test_dirty_notebook_is_detected(tmp_path):
    """Negative control of the outputs check: a notebook with an output is flagged."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", text="stale\n")]
    cell.execution_count = 1
    path = tmp_path / NOTEBOOKS[0].name
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="have outputs"):
        check_no_outputs(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_parameters_cell(path):
    """The first code cell is tagged ``parameters`` and sets the small size."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), path.name
    assert 'SIZE = "small"' in first.source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_executes(path, tmp_path):
    """Every cell runs without error at the small size (nbclient raises CellExecutionError)."""
    nb, seconds, cpu = render.execute_notebook(path, tmp_path, timeout=CELL_TIMEOUT_S)
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    slowest = sorted(cell_seconds(nb), key=lambda t: -t[1])[:3]
    cells = ", ".join(f"cell {i}: {s:.1f} s" for i, s in slowest)
    print(f"\n{path.name}: {seconds:.1f} s wall, {cpu:.1f} s kernel CPU (slowest {cells})")


def test_cell_error_fails(tmp_path):
    """Negative control of the runner: a notebook with a failing cell raises."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell('SIZE = "small"', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("raise RuntimeError('broken cell')"),
        ]
    )
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="broken cell"):
        render.execute_notebook(path, tmp_path, timeout=60)


def test_size_is_injected(tmp_path):
    """``render.inject_size`` puts ``SIZE = "teaching"`` right after the parameters cell."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    render.inject_size(nb, "teaching")
    assert nb.cells[index + 1].source == "SIZE = 'teaching'"
    with pytest.raises(ValueError, match="size is 'huge'"):
        render.inject_size(nb, "huge")


@pytest.mark.slow
def test_coupling_checks_cell_executes(tmp_path):
    """The HCSA notebook's full-battery cell (skipped at the small size) runs when forced."""
    path = ROOT / "notebooks" / "05_hcsa_coupling.ipynb"
    nb, seconds, cpu = render.execute_notebook(
        path, tmp_path, inject="COUPLING_CHECKS = True", timeout=1200
    )
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "verdict:" in text and "skipped at this size" not in text
    print(
        f"\n05_hcsa_coupling.ipynb with the coupling checks: {seconds:.1f} s wall, {cpu:.1f} s CPU"
    )
