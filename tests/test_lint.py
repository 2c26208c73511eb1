"""The code base is ruff-clean under the project's configuration (pyproject.toml)."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
  ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
  paths = ["hyperoptax", "tests", "benchmarks", "colabs/_make_notebooks.py"]
  result = subprocess.run(
      [ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stdout + result.stderr
