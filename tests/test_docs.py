"""The documentation builds with warnings as errors and documents every public name."""

import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import hyperoptax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
  """Runs the CI docs build: `sphinx-build -W -b html docs <out>` in a subprocess."""
  out = tmp_path_factory.mktemp("html")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
       str(DOCS), str(out)],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
  )
  assert result.returncode == 0, (
      f"sphinx-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
  )
  return out


def test_docs_build_without_warnings(built_docs):
  assert (built_docs / "index.html").is_file()
  assert (built_docs / "api.html").is_file()


def test_every_public_name_is_in_the_api_reference(built_docs):
  html = (built_docs / "api.html").read_text(encoding="utf-8")
  documented = set(re.findall(r'id="hyperoptax\.([A-Za-z_][A-Za-z0-9_]*)"', html))
  missing = sorted(set(hyperoptax.__all__) - documented)
  assert not missing, f"public names missing from docs/api.rst: {missing}"


def test_the_reference_renders_the_equations(built_docs):
  # The docstrings' `.. math::` blocks must come out as MathJax, not as literal text.
  html = (built_docs / "api.html").read_text(encoding="utf-8")
  assert "math notranslate" in html
  assert ".. math::" not in html


@pytest.mark.parametrize("name", sorted(hyperoptax.__all__))
def test_public_name_has_a_google_style_docstring(name):
  obj = getattr(hyperoptax, name)
  doc = inspect.getdoc(obj)
  assert doc and len(doc.splitlines()[0]) > 10, f"{name} has no summary line"
  if inspect.isfunction(obj) and inspect.signature(obj).parameters:
    assert "Args:" in doc, f"{name}'s docstring has no Args: section"
