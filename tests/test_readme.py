"""The README's Python examples run as written, and its test command is the one CI runs."""

import pathlib
import re

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README, re.S)


def test_quickstart_runs_and_learns_a_learning_rate():
  namespace = {}
  exec(_python_blocks()[0], namespace)  # noqa: S102 - the README's own code
  params = namespace["params"]
  loss = namespace["loss"](params, namespace["x"], namespace["y"])
  assert jnp.isfinite(loss)
  alpha = namespace["hyperoptax"].get_learning_rate(namespace["opt_state"])
  assert alpha.dtype == jnp.float32 and alpha != 1e-3


def test_stacking_example_runs():
  namespace = {
      "params": {"w": jnp.zeros(3)},
  }
  exec("import optax, hyperoptax\n" + _python_blocks()[1], namespace)  # noqa: S102
  learned = namespace["hyperoptax"].get_hyperparams(namespace["state"])
  assert set(learned) == {"learning_rate", "b1", "b2"}
  middle = namespace["hyperoptax"].get_hyperparams(namespace["state"].hyper_state)
  assert set(middle) == {"learning_rate"}
  jax.tree.map(lambda v: v.block_until_ready(), (learned, middle))


def test_ci_runs_the_readme_test_command():
  commands = re.findall(r"```bash\n(.*?)```", README, re.S)
  test_command = next(c.strip() for c in commands if "pytest" in c)
  ci = (ROOT / ".ci" / "run").read_text()
  assert test_command in ci.splitlines()
