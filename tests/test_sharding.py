"""Scale-out on one host: 8 CPU devices (conftest's XLA_FLAGS), NamedSharding, shard_map, pmap.

The learned α must not depend on how the params and the batch are laid out: the
hypergradient is one dot product over *all* coordinates, so a sharded run has to sum
across devices. Under `jax.jit` the compiler inserts that reduction; under
`shard_map`/`pmap` (manual collectives) the transform's `axis_name` does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from multihost_worker import (
    make_optimizer,
    make_problem,
    make_train_step,
    model_parallel_specs,
)

import hyperoptax

STEPS = 100
GRANULARITIES = ("global", "leaf", "element")
CONFIGS = tuple((name, g) for name in ("sgd_hd", "adam_hd") for g in GRANULARITIES)


def _devices():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.fail(f"conftest should give 8 host devices, got {len(devices)}")
  return np.array(devices[:8])


def _layouts():
  """name -> (mesh, param specs): data-parallel (replicated params) and model-parallel."""
  devices = _devices()
  data_mesh = Mesh(devices.reshape(8, 1), ("data", "model"))
  model_mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
  replicated = {k: P() for k in model_parallel_specs()}
  return {
      "data_parallel": (data_mesh, replicated),
      "model_parallel": (model_mesh, model_parallel_specs()),
  }


def _train(params, xs, ys, *, mesh=None, specs=None):
  """STEPS jitted steps of every (optimizer, granularity) in CONFIGS, in one `lax.scan` program.

  The params are placed by `specs` on `mesh` (one device when `mesh` is None), the
  states are built eagerly from them, and the batches are split over 'data'.

  Returns:
    {config: (α trajectory (STEPS, #α), final state, final params, initial state)}.
  """
  if mesh is None:
    place = lambda v, spec: jax.device_put(v, jax.devices()[0])
    specs = dict.fromkeys(params)
  else:
    place = lambda v, spec: jax.device_put(v, NamedSharding(mesh, spec))
  params = {k: place(v, specs[k]) for k, v in params.items()}
  xs, ys = (place(v, P(None, "data", None)) for v in (xs, ys))
  steps = {c: make_train_step(make_optimizer(*c)) for c in CONFIGS}
  states = {c: make_optimizer(*c).init(params) for c in CONFIGS}

  @jax.jit
  def run(states, xs, ys):
    def body(carry, batch):
      out = {c: steps[c](*carry[c], *batch) for c in CONFIGS}
      return {c: o[:2] for c, o in out.items()}, {c: o[2] for c, o in out.items()}

    return jax.lax.scan(body, {c: (params, states[c]) for c in CONFIGS}, (xs, ys))

  final, alphas = run(states, xs, ys)
  result = {}
  for g in CONFIGS:
    traj = np.concatenate([np.reshape(a, (STEPS, -1)) for a in jax.tree.leaves(alphas[g])], 1)
    result[g] = (traj, final[g][1], final[g][0], states[g])
  return result


def test_sharded_jit_matches_one_device_and_keeps_sharding():
  params, xs, ys = make_problem(STEPS)
  reference = _train(params, xs, ys)
  for layout, (mesh, specs) in _layouts().items():
    runs = _train(params, xs, ys, mesh=mesh, specs=specs)
    replicated = NamedSharding(mesh, P())
    for name, g in CONFIGS:
      ref = reference[name, g][0]
      assert np.max(np.abs(ref[-1] / ref[0] - 1)) > 0.02, "α must move for the test to mean much"
      trajectory, state, new_params, init_state = runs[name, g]
      np.testing.assert_allclose(trajectory, ref, rtol=1e-5, atol=0, err_msg=f"{layout} {g}")
      # No silent gather: the params-shaped buffers of the state are laid out as their
      # param, both after eager `init` and after training; a scalar α is replicated.
      for s in (init_state, state):
        for k, p in new_params.items():
          want = NamedSharding(mesh, specs[k])
          assert p.sharding.is_equivalent_to(want, p.ndim), (layout, k, p.sharding)
          assert s.prev_direction[k].sharding.is_equivalent_to(want, p.ndim), (layout, g, k)
          alpha = {"global": s.learning_rate}.get(g) or s.learning_rate[k]
          if g == "element":
            assert alpha.sharding.is_equivalent_to(want, p.ndim), (layout, k)
          else:
            assert alpha.sharding.is_equivalent_to(replicated, 0), (layout, g, alpha.sharding)
          if name == "adam_hd":  # the wrapped optimizer's moments too
            for moment in (s.direction_state.mu[k], s.direction_state.nu[k]):
              assert moment.sharding.is_equivalent_to(want, p.ndim), (layout, k)


# ---------------------------------------------------------------------------------------
# Manual collectives: shard_map and pmap see only their shard, so `axis_name` must psum.

def _split_params_over_devices(params, n):
  """Each leaf split along its last axis into n shards (stacked on a new leading axis)."""
  return {k: np.stack(np.split(v, n, axis=-1)) for k, v in params.items() if v.shape[-1] % n == 0}


def _linear_problem(n_dev, steps=30, seed=1):
  """Linear least squares with params split over devices: w (IN, OUT·n) per-shard columns."""
  rng = np.random.default_rng(seed)
  w = (0.1 * rng.standard_normal((6, 4 * n_dev))).astype(np.float32)
  b = np.zeros((4 * n_dev,), np.float32)
  xs = rng.standard_normal((steps, 16, 6)).astype(np.float32)
  # A different target scale per column block, so the shards' local dot products differ.
  scales = np.repeat(np.linspace(0.2, 3.0, n_dev), 4).astype(np.float32)
  ys = (xs @ rng.standard_normal((6, 4 * n_dev)).astype(np.float32)) * scales
  return {"w": w, "b": b}, xs, ys


def _linear_loss(params, x, y):
  # A sum over output columns, so each shard's gradient is exactly its columns' gradient.
  return jnp.sum(jnp.mean((x @ params["w"] + params["b"] - y) ** 2, axis=0))


def _linear_opt(name, granularity="global", axis_name=None):
  """The optimizers of the manual-collective tests (a tamer β than `make_optimizer`'s)."""
  if name == "sgd_hd":
    return hyperoptax.sgd_hd(0.02, 0.01, granularity=granularity, axis_name=axis_name)
  return hyperoptax.adam_hd(1e-2, 1e-4, granularity=granularity, axis_name=axis_name)


def _assert_diverged(alphas, reference):
  """Per-device α (last axis) that disagree by more than 1% of the global α."""
  spread = np.ptp(alphas[-1]) / abs(reference[-1])
  assert spread > 1e-2, f"per-device α should diverge without axis_name, spread {spread}"


def _run_unsharded(opt, params, xs, ys):
  state = opt.init(params)

  def body(carry, batch):
    p, s = carry
    g = jax.grad(_linear_loss)(p, *batch)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), s.learning_rate

  _, alphas = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), (xs, ys)))(params, state)
  return np.asarray(alphas)


def _run_shard_map(opt, params, xs, ys, mesh):
  """Params split over 'x' by columns; every device sees the full batch."""
  specs = {"w": P(None, "x"), "b": P("x")}

  def train(p, xs_, ys_):
    state = opt.init(p)

    def body(carry, batch):
      p_, s = carry
      x, y = batch
      g = jax.grad(_linear_loss)(p_, x, y)
      u, s = opt.update(g, s, p_)
      return (optax.apply_updates(p_, u), s), s.learning_rate[None]

    _, alphas = jax.lax.scan(body, (p, state), (xs_, ys_))
    return alphas  # (steps, 1) per device

  y_spec = P(None, None, "x")
  fn = jax.shard_map(
      train, mesh=mesh, in_specs=(specs, P(), y_spec), out_specs=P(None, "x"), check_vma=False
  )
  sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
  return np.asarray(jax.jit(fn)(sharded, xs, ys))  # (steps, n_devices)


@pytest.mark.parametrize("name", ["sgd_hd", "adam_hd"])
def test_shard_map_axis_name_makes_alpha_global(name):
  n = 4
  mesh = Mesh(_devices()[:n], ("x",))
  params, xs, ys = _linear_problem(n)
  reference = _run_unsharded(_linear_opt(name), params, xs, ys)
  assert abs(reference[-1] / reference[0] - 1) > 0.02
  # Without the psum each device learns α from its own columns only: they disagree.
  _assert_diverged(_run_shard_map(_linear_opt(name), params, xs, ys, mesh), reference)
  synced = _run_shard_map(_linear_opt(name, axis_name="x"), params, xs, ys, mesh)
  for d in range(n):
    np.testing.assert_array_equal(synced[:, d], synced[:, 0])
    np.testing.assert_allclose(synced[:, d], reference, rtol=1e-5)


def test_shard_map_leaf_granularity_with_axis_name():
  """Per-leaf α under shard_map: a leaf's dot product sums that leaf's shards only."""
  n = 4
  mesh = Mesh(_devices()[:n], ("x",))
  params, xs, ys = _linear_problem(n)
  make = functools.partial(_linear_opt, "sgd_hd", "leaf")
  state = make().init(params)

  def body(carry, batch):
    p, s = carry
    g = jax.grad(_linear_loss)(p, *batch)
    u, s = make().update(g, s, p)
    return (optax.apply_updates(p, u), s), s.learning_rate

  _, ref = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), (xs, ys)))(params, state)
  specs = {"w": P(None, "x"), "b": P("x")}

  def train(p, xs_, ys_):
    opt = make(axis_name="x")

    def body_(carry, batch):
      p_, s = carry
      g = jax.grad(_linear_loss)(p_, *batch)
      u, s = opt.update(g, s, p_)
      return (optax.apply_updates(p_, u), s), jax.tree.map(lambda a: a[None], s.learning_rate)

    return jax.lax.scan(body_, (p, opt.init(p)), (xs_, ys_))[1]

  fn = jax.shard_map(train, mesh=mesh, in_specs=(specs, P(), P(None, None, "x")),
                     out_specs=P(None, "x"), check_vma=False)
  out = jax.jit(fn)(params, xs, ys)
  for k in ("w", "b"):
    for d in range(n):
      np.testing.assert_allclose(np.asarray(out[k])[:, d], np.asarray(ref[k]), rtol=1e-5)


@pytest.mark.parametrize("axis_name", [None, "d"])
def test_pmap_axis_name_makes_alpha_global(axis_name):
  """The same under `jax.pmap`: each device holds its columns' shard of the params."""
  n = 4
  params, xs, ys = _linear_problem(n)
  reference = _run_unsharded(_linear_opt("sgd_hd"), params, xs, ys)
  shards = _split_params_over_devices(params, n)  # leading axis: the device
  ys_dev = np.stack(np.split(ys, n, axis=-1), axis=1)  # (steps, n, B, cols/n)
  opt = _linear_opt("sgd_hd", axis_name=axis_name)

  def step(p, s, x, y):
    u, s = opt.update(jax.grad(_linear_loss)(p, x, y), s, p)
    return optax.apply_updates(p, u), s

  devices = jax.devices()[:n]
  pstep = jax.pmap(step, axis_name="d", in_axes=(0, 0, None, 0), devices=devices)
  p = jax.pmap(lambda q: q, devices=devices)(shards)
  s = jax.pmap(opt.init, devices=devices)(p)
  alphas = []
  for t in range(xs.shape[0]):
    p, s = pstep(p, s, xs[t], ys_dev[t])
    alphas.append(np.asarray(s.learning_rate))
  alphas = np.array(alphas)  # (steps, n)
  if axis_name is None:
    _assert_diverged(alphas, reference)
  else:
    for d in range(n):
      np.testing.assert_array_equal(alphas[:, d], alphas[:, 0])
      np.testing.assert_allclose(alphas[:, d], reference, rtol=1e-5)
