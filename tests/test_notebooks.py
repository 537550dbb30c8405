"""The teaching notebooks: built from their sources, stored executed, and still run without error.

Each notebook asserts its own claims (hand computation == library module, SDPA == explicit,
124,439,808 parameters, ...), so executing it checks that the notebooks and the library agree.
"""

import copy
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["00_byte_pair_encoding", "01_self_attention", "02_masked_attention", "03_multihead_attention",
         "04_gpt_architecture", "05_training_step_by_hand", "06_chat_finetuning_by_hand"]
MAX_NOTEBOOK_BYTES = 200_000  # a learner reads them on a code host: small figures, short outputs
# Smaller sizes for the re-execution below, set as papermill sets parameters: every cell and every
# assertion still runs, only the notebook's longest experiment is shorter (the stored notebooks hold
# the full run).
QUICK = {"04_gpt_architecture": {"SECONDS": 3}, "05_training_step_by_hand": {"STEPS": 20, "EVAL_BATCHES": 2}}


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NB_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _stored(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def with_quick_sizes(nb, name):
    """`nb` with each QUICK setting of `name` replacing the one line that sets it (`NAME = ...`)."""
    for var, value in QUICK.get(name, {}).items():
        line = re.compile(rf"^{var} = .*$", re.MULTILINE)
        cells = [c for c in nb.cells if c.cell_type == "code" and line.search(c.source)]
        assert len(cells) == 1 and len(line.findall(cells[0].source)) == 1, f"{name}: {var} is not set once"
        cells[0].source = line.sub(f"{var} = {value!r}", cells[0].source)
    return nb


def _error_outputs(nb):
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]


def test_every_source_has_a_notebook():
    assert [p.stem for p in build.sources()] == NAMES


def test_parse_percent_splits_cells():
    text = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\n\n# %%\ny = 2\n"
    expected = [("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "y = 2")]
    assert build.parse_percent(text) == expected


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_matches_its_source(name):
    """Editing one without rebuilding the other would let the two drift apart."""
    stored = [(c.cell_type, c.source) for c in _stored(name).cells]
    source = NB_DIR / "source" / f"{name}.py"
    fresh = [(c.cell_type, c.source) for c in build.notebook_from_source(source).cells]
    assert stored == fresh, f"notebooks/{name}.ipynb is stale: run python notebooks/build.py {name}"


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_is_executed_in_order_without_errors(name):
    nb = _stored(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert _error_outputs(nb) == []
    stderr = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert stderr == [], f"warnings or errors stored in {name}: {stderr[:1]}"
    assert any(o.output_type == "display_data" and "image/png" in o.data for c in code for o in c.outputs)
    assert (NB_DIR / f"{name}.ipynb").stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name):
    """Re-execute the stored notebook on a kernel of this interpreter; any failing cell fails the test."""
    nb = with_quick_sizes(copy.deepcopy(_stored(name)), name)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    build.execute(nb)  # raises CellExecutionError, with the cell and its traceback, on any error
    assert _error_outputs(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)


def test_quick_sizes_replace_the_setting_lines():
    quick = QUICK["05_training_step_by_hand"]
    setting = nbformat.v4.new_code_cell("# sizes\nSTEPS = 200  # the run's length\nEVAL_BATCHES = 20\ny = 1")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("STEPSIZE = 3"), setting])
    with_quick_sizes(nb, "05_training_step_by_hand")
    assert nb.cells[0].source == "STEPSIZE = 3"
    expected = f"# sizes\nSTEPS = {quick['STEPS']}\nEVAL_BATCHES = {quick['EVAL_BATCHES']}\ny = 1"
    assert nb.cells[1].source == expected
    with pytest.raises(AssertionError, match="STEPS is not set once"):
        with_quick_sizes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]),
                         "05_training_step_by_hand")


def test_execute_reports_a_failing_cell():
    """The runner itself must not swallow errors, or the test above would prove nothing."""
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import scratchllm\nx = 1"),
                                         nbformat.v4.new_code_cell("assert x == 2, 'boom'")])
    with pytest.raises(CellExecutionError, match="boom"):
        build.execute(nb)
