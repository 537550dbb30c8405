"""Build the teaching notebooks from their readable sources and store them executed.

Each notebook is written as a plain Python file in `notebooks/source/` in the "percent" format
that VS Code, PyCharm and jupytext understand: `# %%` starts a code cell, `# %% [markdown]` starts
a markdown cell whose lines are comments (`# ` is stripped). This script reads every source with
jupytext, writes it as `notebooks/NAME.ipynb`, runs it top to bottom on the `python3` kernel with
nbclient, and saves it with its outputs, so the notebooks read well on a code host and the diff of
a change is the diff of a .py file.

    python notebooks/build.py                  # build and execute all notebooks
    python notebooks/build.py 02_masked_attention --no-execute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "source"
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600


def sources() -> list[Path]:
    """The notebook sources, in teaching order."""
    return sorted(SOURCE_DIR.glob("[0-9][0-9]_*.py"))


def parse_percent(text: str) -> list[tuple[str, str]]:
    """(cell_type, source) of each non-empty cell of a percent-format text: 'code' or 'markdown'."""
    return [(c.cell_type, c.source) for c in jupytext.reads(text, fmt="py:percent").cells if c.source.strip()]


def notebook_from_source(path: Path) -> nbformat.NotebookNode:
    """An unexecuted notebook with the cells of one percent-format source."""
    nb = nbformat.v4.new_notebook()
    for kind, src in parse_percent(path.read_text(encoding="utf-8")):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(src))
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # Stable cell ids keep the stored files from changing when nothing in them did.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{path.stem[:2]}-{i:03d}"
    return nb


@contextmanager
def this_python_kernel():
    """Within the block, the kernel named 'python3' is this interpreter, whatever kernels are registered.

    A 'python3' kernelspec in the user's Jupyter folders may point at another Python without
    scratchllm; a temporary spec first on JUPYTER_PATH wins over it and registers nothing.
    """
    with tempfile.TemporaryDirectory() as root:
        spec = Path(root) / "kernels" / KERNEL_NAME
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python",
            # Figures are stored in the notebook, even if MPLBACKEND names a non-interactive backend.
            "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
        }), encoding="utf-8")
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = root + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE) -> nbformat.NotebookNode:
    """Run every cell in order on a kernel of this interpreter; raise CellExecutionError on an error."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    with this_python_kernel():
        client.execute()
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate and write a notebook atomically (temp file, then rename)."""
    nbformat.validate(nb)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Build (and by default execute) the notebooks named on the command line, or all of them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (e.g. 01_self_attention); default all")
    ap.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    args = ap.parse_args(argv)
    paths = sources()
    if args.names:
        by_name = {p.stem: p for p in paths}
        missing = [n for n in args.names if n not in by_name]
        if missing:
            ap.error(f"unknown notebook(s): {', '.join(missing)}; have {', '.join(by_name)}")
        paths = [by_name[n] for n in args.names]
    for src in paths:
        nb = notebook_from_source(src)
        t0 = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        write(nb, HERE / f"{src.stem}.ipynb")
        print(f"{src.stem}.ipynb: {len(nb.cells)} cells, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
