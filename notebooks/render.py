"""Execute the teaching notebooks and render them with their outputs to HTML.

``make notebooks`` runs ``python notebooks/render.py --size teaching --out reports/notebooks``.
Each notebook's first code cell is tagged ``parameters`` and sets ``SIZE = "small"``; a
cell ``SIZE = "<size>"`` (tagged ``injected-parameters``) is inserted after it, as
papermill does with ``-p SIZE teaching``. The stored notebooks are never modified.

The kernel is the Python that runs this script (the project's ``.venv``): a kernelspec
pointing at ``sys.executable`` is written to a temporary directory and put first on
``JUPYTER_PATH``, so no ``python3`` kernelspec installed elsewhere is picked up.

``tests/test_notebooks.py`` imports :func:`execute_notebook` from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "ppl-bandits-notebook"
SIZES = ("small", "teaching")


@contextmanager
def venv_kernel():
    """Yield a kernel name whose kernelspec runs ``sys.executable`` (temporary)."""
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="ppl-bandits-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "ppl-bandits (.venv)",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        os.environ["JUPYTER_PATH"] = tmp if not old else os.pathsep.join([tmp, old])
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def inject_size(nb, size: str | None, extra: str = ""):
    """Insert ``SIZE = size`` (and ``extra`` code) after the cell tagged ``parameters``.

    This is what papermill does with ``-p SIZE teaching``; ``size=None`` injects ``extra``
    only.
    """
    import nbformat

    if size is not None and size not in SIZES:
        raise ValueError(f"size is {size!r}; expected one of {SIZES}")
    index = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None
    )
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    lines = ([f"SIZE = {size!r}"] if size is not None else []) + ([extra] if extra else [])
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    return nb


def execute_notebook(
    path, workdir, *, size: str | None = None, inject: str = "", timeout: int = 600
):
    """Execute the notebook at ``path`` with ``workdir`` as its working directory.

    Parameters
    ----------
    path : path of an ``.ipynb`` file
    workdir : directory the kernel starts in (files a notebook writes land there)
    size : {None, "small", "teaching"}
        None runs the notebook as stored (its parameters cell sets ``SIZE = "small"``).
    inject : str
        More code for the injected cell, e.g. ``"COUPLING_CHECKS = True"``.
    timeout : seconds allowed to one cell

    Returns
    -------
    (notebook, seconds, cpu_seconds)
        The executed notebook, its wall time, and the CPU time of the kernel process
        (user + system; it does not depend on how busy the machine is).

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        On the first cell that raises.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if size is not None or inject:
        inject_size(nb, size, inject)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with venv_kernel() as kernel_name:
        client = nbclient.NotebookClient(
            nb,
            kernel_name=kernel_name,
            timeout=timeout,
            resources={"metadata": {"path": str(workdir)}},
            allow_errors=False,
        )
        client.execute()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return nb, seconds, cpu


def render_html(nb, out_path: Path) -> Path:
    """Write the executed notebook ``nb`` as a standalone HTML page."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(body, encoding="utf-8")
    return out_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to render (default: all)")
    parser.add_argument("--size", choices=SIZES, default="teaching")
    parser.add_argument("--out", default="reports/notebooks", help="output directory")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="ppl-bandits-nb-") as work:
            nb, seconds, cpu = execute_notebook(path, work, size=args.size, timeout=args.timeout)
        target = render_html(nb, out / f"{path.stem}.html")
        print(f"{path.name}: {seconds:.1f} s wall, {cpu:.1f} s CPU (SIZE={args.size}) -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
