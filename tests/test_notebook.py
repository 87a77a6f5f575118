"""examples/demo.ipynb runs end to end on the embedded model, and is committed without outputs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "demo.ipynb"
# The run here is small: these values go in a cell after the notebook's "parameters" cell, as papermill does (the
# full sizes, 5 layers x 3 prompts, took ~2 min on one thread; the figure is still drawn with 2 layers).
SMALL = "layers = [7, 10]\nn_prompts = 1\ncompare_tokens = 8\nsweep_tokens = 6"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None for cell in nb.cells if cell.cell_type == "code"
    )


def with_parameters(nb, source: str):
    """``nb`` with a cell of ``source`` after its cell tagged "parameters", which must set every name it sets."""
    (index,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    names = {line.split("=")[0].strip() for line in source.splitlines()}
    assert names <= {line.split("=")[0].strip() for line in nb.cells[index].source.splitlines()}, names
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def test_notebook_runs(tmp_path, smol):  # smol: the model cache is warm before the kernel loads it
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), SMALL)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the sweep figure was drawn
