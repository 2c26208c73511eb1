"""Orbax checkpoints of hyperoptax states: a resumed run equals the uninterrupted one bitwise.

Each case trains a small regression model for `STEPS` steps in one go, and again with
the params and optimizer state saved by `orbax.checkpoint` after `SAVE_AT` steps,
restored into freshly built objects (a new transform, a new jitted step, a restore
target made from `tx.init` on fresh params) and continued. The two final states and
every later step must be identical to the bit, learned hyperparameters included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import hyperoptax

STEPS = 8
SAVE_AT = 3

TRANSFORMS = {
    "adam_hd": lambda: hyperoptax.adam_hd(0.05, 1e-4),
    "sgd_hd_nesterov_leaf": lambda: hyperoptax.sgd_hd(
        0.05, 1e-2, momentum=0.9, nesterov=True, granularity="leaf"
    ),
    "chain_adamw_hd_element_log": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        hyperoptax.adamw_hd(0.05, granularity="element", rule="log"),
    ),
    "hyperoptimize_adam": lambda: hyperoptax.hyperoptimize(
        optax.adam, hyper_optimizer=optax.adam(1e-2), learn=("learning_rate", "b1"),
        learning_rate=0.05, b1=0.9,
    ),
    "hyperoptimize_stack": lambda: hyperoptax.hyperoptimize(
        optax.sgd, learning_rate=0.05, momentum=0.5, learn=("learning_rate", "momentum"),
        hyper_optimizer=hyperoptax.adam_hd(1e-2, 1e-5),
    ),
}


def _batch(step):
  """A different minibatch at each step, from NumPy (no eager XLA compilations)."""
  rng = np.random.default_rng(step)
  x = rng.normal(size=(16, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)
  return x, y


def _fresh_params():
  return {"w": np.zeros(3, np.float32), "b": np.zeros((), np.float32)}


def _make_step(tx):
  def loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def _run(tx, step_fn, params, opt_state, start, stop):
  trajectory = []
  for t in range(start, stop):
    params, opt_state = step_fn(params, opt_state, *_batch(t))
    trajectory.append(jax.device_get((params, opt_state)))
  return params, opt_state, trajectory


def _assert_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes(), f"{x} != {y}"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_resumed_run_equals_uninterrupted_run(name, tmp_path):
  # The uninterrupted run.
  tx = TRANSFORMS[name]()
  step_fn = _make_step(tx)
  params = _fresh_params()
  _, _, full = _run(tx, step_fn, params, tx.init(params), 0, STEPS)

  # The interrupted run: SAVE_AT steps, save, forget everything.
  params = _fresh_params()
  params, opt_state, _ = _run(tx, step_fn, params, tx.init(params), 0, SAVE_AT)
  path = tmp_path / "checkpoint"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": params, "opt_state": opt_state})
  del tx, step_fn, params, opt_state

  # Fresh objects: a new transform, a new step function, the restore target from init.
  tx = TRANSFORMS[name]()
  step_fn = _make_step(tx)
  fresh = _fresh_params()
  target = jax.tree.map(
      ocp.utils.to_shape_dtype_struct, {"params": fresh, "opt_state": tx.init(fresh)}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, target)
  _assert_bitwise_equal(restored, {"params": full[SAVE_AT - 1][0],
                                   "opt_state": full[SAVE_AT - 1][1]})
  assert type(restored["opt_state"]) is type(full[0][1])

  _, _, resumed = _run(tx, step_fn, restored["params"], restored["opt_state"], SAVE_AT, STEPS)
  _assert_bitwise_equal(resumed, full[SAVE_AT:])
  # The learned hyperparameters did move, so the equality above is not vacuous.
  before = hyperoptax.get_hyperparams(full[SAVE_AT - 1][1])
  after = hyperoptax.get_hyperparams(full[-1][1])
  assert any(
      not np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
  )
