"""The Colab notebooks run start to finish (small mode, offline) and are well-formed.

Each notebook in colabs/ is executed with nbclient in a fresh kernel with
`HYPEROPTAX_SMALL=1`; the committed files must carry the outputs of a normal run, an
"Open in Colab" badge pointing at themselves, a Colab install cell, and the same cells
as their generator, colabs/_make_notebooks.py.
"""

import importlib.util
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLABS = pathlib.Path(__file__).resolve().parents[1] / "colabs"
NOTEBOOKS = sorted(p.stem for p in COLABS.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart", "02_reproduce_the_paper", "03_optimize_the_optimizer",
    "04_flax_nnx_training", "05_sweeps_with_vmap", "06_multi_device",
]


def _read(name):
  return nbformat.read(COLABS / f"{name}.ipynb", as_version=4)


def _generator():
  spec = importlib.util.spec_from_file_location("_make_notebooks", COLABS / "_make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_all_notebooks_are_there():
  assert NOTEBOOKS == EXPECTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, monkeypatch):
  monkeypatch.setenv("HYPEROPTAX_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # The kernel gets the notebook's own device set-up, not the 8 host devices that
  # conftest.py asks for (06_multi_device asks for them itself).
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = _read(name)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = []
  NotebookClient(
      nb, timeout=900, kernel_name="python3", allow_errors=False,
      resources={"metadata": {"path": str(COLABS)}},
  ).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_well_formed_and_committed_with_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  first = nb.cells[0]
  assert first.cell_type == "markdown"
  assert (
      f"https://colab.research.google.com/github/hyperoptax/hyperoptax/blob/main/colabs/"
      f"{name}.ipynb" in first.source
  )
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert any('"google.colab" in sys.modules' in c.source and "pip install" in c.source
             for c in code[:3])
  assert any("HYPEROPTAX_SMALL" in c.source for c in code[:4])
  # Executed in normal mode, every code cell in order, without errors; plots kept.
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
  # Device-agnostic: no float64 anywhere.
  assert not any("float64" in c.source or "enable_x64" in c.source for c in code)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_generator(name):
  expected = [(c.cell_type, c.source) for c in _generator().NOTEBOOKS[name]]
  actual = [(c.cell_type, c.source) for c in _read(name).cells]
  assert actual == expected, "regenerate with: python colabs/_make_notebooks.py --execute"
