"""The course notebooks run end to end in their fast mode (GPTMINI_RAPIDO=1), cell by cell in a real Jupyter
kernel, as a learner runs them: a cell that errs fails the test. Their captured output has no carriage
returns on stderr (no bar redrawn as text there: gptmini.progress)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["05", "07", "08", "09"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for all four, as a learner runs them in order (07 goes on from 05's base, 08 and 09 from 07's
    assistant); each also runs alone, making what it needs."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_prints_no_carriage_returns(path, workdir, monkeypatch):
    monkeypatch.setenv("GPTMINI_RAPIDO", "1")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    errs = [o.text for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.get("name") == "stderr"]
    assert not [text for text in errs if "\r" in text]  # where bars would go (answers may hold any character)
