"""Packaging: the wheel holds only the package (with py.typed) at the one version."""

import pathlib
import subprocess
import sys
import zipfile

import hyperoptax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_contains_only_the_package(tmp_path):
  # --no-build-isolation: the build backend (hatchling) is in the test extra, so this
  # needs no network and takes a few seconds.
  result = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(tmp_path), str(ROOT)],
      capture_output=True, text=True, timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (wheel,) = tmp_path.glob("*.whl")
  assert wheel.name == f"hyperoptax-{hyperoptax.__version__}-py3-none-any.whl"
  names = zipfile.ZipFile(wheel).namelist()
  dist_info = f"hyperoptax-{hyperoptax.__version__}.dist-info/"
  stray = [n for n in names if not (n.startswith("hyperoptax/") or n.startswith(dist_info))]
  assert not stray, f"files outside the package in the wheel: {stray}"
  assert "hyperoptax/py.typed" in names
  assert "hyperoptax/__init__.py" in names
  assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
  sources = {n for n in names if n.endswith(".py")}
  expected = {
      str(p.relative_to(ROOT)) for p in (ROOT / "hyperoptax").rglob("*.py")
  }
  assert sources == expected
