"""hyperoptax inside Flax: Linen `TrainState` and `nnx.Optimizer` match a plain Optax loop.

Each case trains a small MLP with a hyperoptax transform through the Flax API, reads
the learned learning rate with `hyperoptax.get_learning_rate`, and compares params and
α step by step with the same transform driven by a hand-written `tx.update` /
`optax.apply_updates` loop on the same initial params. The SGD-HD reference is itself
checked against the paper's update `α_t = α_{t-1} + β g_t·g_{t-1}`,
`θ_t = θ_{t-1} - α_t g_t` (Baydin et al., 2018, Alg. 1), in NumPy.

Compilation dominates the cost on CPU, so the data and initial params are NumPy and
each reference trajectory is computed once and shared by the Linen and NNX tests.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import hyperoptax

STEPS = 10
ALPHA0 = 0.05
SGD_BETA = 1e-2

TRANSFORMS = {
    "adam_hd": lambda: hyperoptax.adam_hd(ALPHA0, 1e-4),
    "sgd_hd": lambda: hyperoptax.sgd_hd(ALPHA0, SGD_BETA),
    "chain_clip_adam_hd_leaf": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), hyperoptax.adam_hd(ALPHA0, 1e-4, granularity="leaf")
    ),
}


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 4)).astype(np.float32)
  w = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
  y = (np.tanh(x @ w) + 0.1 * np.sin(3 * x[:, :1])).astype(np.float32)
  return x, y


def _init_params():
  """Initial params as a plain dict, named as Linen names them (Dense_0, Dense_1)."""
  rng = np.random.default_rng(1)
  layer = lambda n_in, n_out: {
      "kernel": (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
      "bias": (0.1 * rng.normal(size=(n_out,))).astype(np.float32),
  }
  return {"Dense_0": layer(4, 8), "Dense_1": layer(8, 1)}


def _mlp(params, x):
  hidden = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
  return hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def _loss(params):
  x, y = _data()
  return jnp.mean((_mlp(params, x) - y) ** 2)


@functools.cache
def _reference(name):
  """The plain Optax loop: per step, (params, learned α, gradient), as NumPy."""
  tx = TRANSFORMS[name]()
  params = _init_params()
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(_loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads

  out = []
  for _ in range(STEPS):
    params, opt_state, grads = step(params, opt_state)
    out.append(jax.device_get((params, hyperoptax.get_learning_rate(opt_state), grads)))
  return out


def _assert_close(actual, expected):
  chex.assert_trees_all_close(actual, expected, rtol=1e-6, atol=1e-7)


def _assert_learned(alpha):
  """α moved away from α0 (so it was learned, not just carried)."""
  for a in jax.tree.leaves(alpha):
    assert float(a) != pytest.approx(ALPHA0, rel=1e-6)


def test_sgd_hd_reference_follows_the_paper():
  """The shared reference is SGD-HD: α_1 = α_0 (h_1 = 0), α_t = α_{t-1} + β g_t·g_{t-1}."""
  flat = lambda tree: np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)]).astype(
      np.float64
  )
  theta, alpha, prev_g = flat(_init_params()), ALPHA0, None
  for params, learned_alpha, grads in _reference("sgd_hd"):
    g = flat(grads)
    if prev_g is not None:
      alpha = alpha + SGD_BETA * float(g @ prev_g)
    theta = theta - alpha * g
    np.testing.assert_allclose(float(learned_alpha), alpha, rtol=1e-5)
    np.testing.assert_allclose(flat(params), theta, rtol=1e-5, atol=1e-6)
    prev_g = g
  assert alpha != ALPHA0


# ---------------------------------------------------------------------------------------
# Linen: flax.training.train_state.TrainState


class _LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    hidden = jnp.tanh(nn.Dense(8)(x))  # Dense_0
    return nn.Dense(1)(hidden)  # Dense_1


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_linen_train_state_matches_plain_optax(name):
  x, y = _data()
  model = _LinenMLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=_init_params(), tx=TRANSFORMS[name]()
  )

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

  for ref_params, ref_alpha, _ in _reference(name):
    state = train_step(state)
    _assert_close(state.params, ref_params)
    _assert_close(hyperoptax.get_learning_rate(state.opt_state), ref_alpha)
  assert int(state.step) == STEPS
  _assert_learned(hyperoptax.get_learning_rate(state.opt_state))
  assert _loss(state.params) < 0.7 * _loss(_init_params())


# ---------------------------------------------------------------------------------------
# NNX: flax.nnx.Optimizer(model, tx, wrt=nnx.Param)


class _NNXMLP(nnx.Module):

  def __init__(self, params):
    rngs = nnx.Rngs(0)
    # Attribute names match the Linen/reference params so the states compare directly.
    self.Dense_0 = nnx.Linear(4, 8, rngs=rngs)
    self.Dense_1 = nnx.Linear(8, 1, rngs=rngs)
    state = nnx.state(self, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(self, state)

  def __call__(self, x):
    return self.Dense_1(jnp.tanh(self.Dense_0(x)))


def _pure(tree):
  """Plain arrays from nnx Variables (nnx.Optimizer wraps every array of its state)."""
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else nnx.as_pure(tree)


def _nnx_params(model):
  return _pure(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_nnx_optimizer_matches_plain_optax(name):
  x, y = _data()
  model = _NNXMLP(_init_params())
  _assert_close(_nnx_params(model), _init_params())
  optimizer = nnx.Optimizer(model, TRANSFORMS[name](), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  for ref_params, ref_alpha, _ in _reference(name):
    train_step(model, optimizer)
    alpha = _pure(hyperoptax.get_learning_rate(optimizer.opt_state))
    _assert_close(_nnx_params(model), ref_params)
    _assert_close(alpha, ref_alpha)
  assert int(optimizer.step[...]) == STEPS
  _assert_learned(alpha)


def test_nnx_leaf_granularity_gives_one_learning_rate_per_param():
  model = _NNXMLP(_init_params())
  optimizer = nnx.Optimizer(
      model, hyperoptax.sgd_hd(ALPHA0, SGD_BETA, granularity="leaf"), wrt=nnx.Param
  )
  alpha = _pure(hyperoptax.get_learning_rate(optimizer.opt_state))
  assert jax.tree.structure(alpha) == jax.tree.structure(_nnx_params(model))
  for a in jax.tree.leaves(alpha):
    assert a.shape == () and a.dtype == jnp.float32 and float(a) == pytest.approx(ALPHA0)
