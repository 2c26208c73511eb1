"""Precision: bf16/f16 params with a float32 learning rate, float64 under x64, no promotion.

The hypergradient `h_t = -g_t · d_{t-1}` is a sum over every coordinate; in bf16
(8 significant bits) or f16 (max 65504) that sum is wrong or overflows long before
it would in float32, so it must be accumulated in α's dtype (≥ float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax

GRANULARITIES = ("global", "leaf", "element")
LOW = (jnp.bfloat16, jnp.float16)


def _params(dtype, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((16, 8)), dtype),
          "b": jnp.asarray(rng.standard_normal((8,)), dtype)}


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_params_float32_learning_rate_no_promotion(dtype):
  opts = {(name, g): getattr(hyperoptax, name)(1e-2, 1e-3, granularity=g)
          for name in ("sgd_hd", "adam_hd") for g in GRANULARITIES}
  params = _params(dtype)
  states = {k: opt.init(params) for k, opt in opts.items()}
  loss = lambda p: sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(p))

  @jax.jit
  def step(all_params, states):
    out = {}
    for k, opt in opts.items():
      updates, s = opt.update(jax.grad(loss)(all_params[k]), states[k], all_params[k])
      out[k] = (optax.apply_updates(all_params[k], updates), s, updates)
    return out

  all_params = dict.fromkeys(opts, params)
  for _ in range(3):
    out = step(all_params, states)
    all_params = {k: o[0] for k, o in out.items()}
    states = {k: o[1] for k, o in out.items()}
  for k, (new_params, state, updates) in out.items():
    for tree in (new_params, updates, state.prev_direction):
      for leaf in jax.tree.leaves(tree):
        assert leaf.dtype == dtype, k  # no promotion of params, updates or stored direction
    for a in jax.tree.leaves(state.learning_rate):
      assert a.dtype == jnp.float32, k
    # `init` returns exactly what `update` returns.
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
    assert shapes(state) == shapes(opts[k].init(params)), k
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(new_params))
    assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates)), k


def _alpha_after_two_steps(g1, g2, granularity="global"):
  """α_2 of SGD-HD with α0 = 0 and β = 1: exactly `g_2 · g_1` (per group)."""
  opt = hyperoptax.sgd_hd(0.0, 1.0, granularity=granularity)
  params = {"x": g1}
  state = opt.init(params)
  _, state = jax.jit(opt.update)({"x": g1}, state, params)
  _, state = jax.jit(opt.update)({"x": g2}, state, params)
  return state.learning_rate


def test_bf16_dot_product_accumulates_in_float32():
  rng = np.random.default_rng(1)
  n = 8192
  g1 = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.bfloat16)
  g2 = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.bfloat16)
  exact = np.dot(np.asarray(g1, np.float64), np.asarray(g2, np.float64))
  for granularity in ("global", "leaf"):
    alpha = jax.tree.leaves(_alpha_after_two_steps(g1, g2, granularity))[0]
    assert alpha.dtype == jnp.float32
    np.testing.assert_allclose(float(alpha), exact, rtol=1e-5)
  # The tolerance above tells the two apart: a bf16 accumulator (each partial sum
  # rounded to bf16) stalls once its spacing exceeds the terms, missing by far more.
  products = (np.asarray(g1, np.float32) * np.asarray(g2, np.float32)).astype(g1.dtype)
  acc = products[0]
  for x in products[1:]:
    acc = (acc + x).astype(g1.dtype)
  assert abs(float(acc) - exact) / exact > 1e-2


def test_f16_dot_product_does_not_overflow():
  # Each product 300·300 = 9e4 > 65504 = the largest float16: in f16 h would be inf and
  # the finite guard would skip the step; accumulated in float32 it is 64·9e4 exactly.
  g = jnp.full((64,), 300.0, jnp.float16)
  alpha = _alpha_after_two_steps(g, g)
  assert float(alpha) == 64 * 300.0 * 300.0
  opt = hyperoptax.sgd_hd(1e-9, 1e-12)
  update = jax.jit(opt.update)
  _, state = update({"x": g}, opt.init({"x": g}))
  updates, state = update({"x": g}, state)
  assert updates["x"].dtype == jnp.float16 and np.all(np.asarray(updates["x"]) != 0)


def test_element_products_in_float32():
  # Per coordinate, 300·300 overflows f16 too: α_i must still move by β g_i d_i.
  g = jnp.full((4,), 300.0, jnp.float16)
  alpha = _alpha_after_two_steps(g, g, "element")
  assert alpha["x"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(alpha["x"]), np.full(4, 9e4, np.float32))


def _numpy_sgd_hd(theta, grad_fn, alpha, beta, steps):
  """Baydin et al. Alg. 1 in float64 NumPy: α_t = α_{t-1} + β g_t·g_{t-1}; θ -= α_t g_t."""
  prev, alphas = np.zeros_like(theta), []
  for _ in range(steps):
    g = grad_fn(theta)
    alpha = alpha + beta * np.dot(g, prev)
    theta = theta - alpha * g
    prev = g
    alphas.append(alpha)
  return np.array(alphas), theta


def test_float64_under_x64(x64):
  rng = np.random.default_rng(2)
  a = np.diag(rng.uniform(0.5, 2.0, 10))
  theta0 = rng.standard_normal(10)
  ref_alphas, ref_theta = _numpy_sgd_hd(theta0, lambda t: a @ t, 0.1, 0.01, 25)
  for granularity in GRANULARITIES:
    opt = hyperoptax.sgd_hd(0.1, 0.01, granularity=granularity)
    theta = jnp.asarray(theta0)
    assert theta.dtype == jnp.float64
    def body(carry, _, opt=opt):
      theta, state = carry
      updates, state = opt.update(jnp.asarray(a) @ theta, state, theta)
      assert updates.dtype == jnp.float64
      return (optax.apply_updates(theta, updates), state), state.learning_rate

    (theta, state), alphas = jax.jit(
        lambda t: jax.lax.scan(body, (t, opt.init(t)), length=25)
    )(theta)
    assert theta.dtype == jnp.float64
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(state.learning_rate))
    if granularity != "element":  # one α for the single leaf: the paper's scalar
      np.testing.assert_allclose(np.ravel(alphas), ref_alphas, rtol=1e-12)
      np.testing.assert_allclose(np.asarray(theta), ref_theta, rtol=1e-10, atol=1e-14)
  # float32 params under x64 keep a float32 α and float32 updates.
  opt = hyperoptax.adam_hd(1e-3)
  p32 = jnp.ones(3, jnp.float32)
  u, s = jax.jit(opt.update)(jnp.ones(3, jnp.float32), opt.init(p32), p32)
  assert s.learning_rate.dtype == jnp.float32 and u.dtype == jnp.float32


def test_mixed_dtypes_global_alpha():
  """A float32 leaf next to a bf16 leaf: one float32 α; each update keeps its leaf's dtype."""
  params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  opt = hyperoptax.adam_hd(1e-2, 1e-3)
  state = opt.init(params)
  for _ in range(2):
    updates, state = jax.jit(opt.update)(params, state, params)
  assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  assert state.learning_rate.dtype == jnp.float32
