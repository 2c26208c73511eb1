"""Unusual or wrong inputs: each either works or raises a `ValueError` naming the problem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax

GRANULARITIES = ("global", "leaf", "element")


def _opt(granularity="global", **kw):
  return hyperoptax.sgd_hd(0.1, 0.01, granularity=granularity, **kw)


def _two_steps(opt, params, grads):
  """Two jitted updates (the second one sees d_{t-1} ≠ 0); returns (updates, state)."""
  update = jax.jit(opt.update)
  state = opt.init(params)
  _, state = update(grads, state, params)
  return update(grads, state, params)


PARAMS = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}


@pytest.mark.parametrize(
    "grads, message",
    [
        ({"a": jnp.ones(3), "c": jnp.ones((2, 2))}, "tree structure"),  # a renamed key
        ({"a": jnp.ones(3)}, "tree structure"),  # a missing leaf
        ([jnp.ones(3), jnp.ones((2, 2))], "tree structure"),  # another container
        ({"a": jnp.ones((3, 1)), "b": jnp.ones((2, 2))}, r"\['a'\] has shape \(3, 1\)"),
        ({"a": jnp.ones(1), "b": jnp.ones((2, 2))}, r"\['a'\] has shape \(1,\)"),
        ({"a": jnp.ones(3), "b": jnp.ones(4)}, r"\['b'\] has shape \(4,\)"),
    ],
)
def test_gradients_that_do_not_match_the_params(grads, message):
  # (3, 1) against (3,) would broadcast silently to a (3, 3) update without the check.
  for granularity in GRANULARITIES:
    opt = _opt(granularity)
    state = opt.init(PARAMS)
    with pytest.raises(ValueError, match=message):
      opt.update(grads, state, PARAMS)
    with pytest.raises(ValueError, match=message):
      jax.jit(opt.update)(grads, state, PARAMS)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_non_float_params_are_rejected_by_name(dtype):
  params = {"w": jnp.ones(3), "step": jnp.zeros((), dtype)}
  for granularity in GRANULARITIES:
    with pytest.raises(ValueError, match=r"params.*\['step'\].*" + jnp.dtype(dtype).name):
      _opt(granularity).init(params)


def test_non_float_leaves_can_be_routed_around():
  """The message's advice works: integer leaves under `optax.multi_transform`'s other branch."""
  params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
  opt = optax.multi_transform(
      {"hd": _opt(), "frozen": optax.set_to_zero()}, {"w": "hd", "step": "frozen"}
  )
  grads = {"w": jnp.full(3, 0.5), "step": jnp.zeros((), jnp.int32)}
  updates, state = _two_steps(opt, params, grads)
  np.testing.assert_allclose(updates["w"], -float(hyperoptax.get_learning_rate(state)) * 0.5)
  assert int(updates["step"]) == 0


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_none_leaves_are_empty_subtrees(granularity):
  params = {"a": jnp.ones(2), "frozen": None}
  grads = {"a": jnp.full(2, 2.0), "frozen": None}
  updates, state = _two_steps(_opt(granularity), params, grads)
  assert updates["frozen"] is None
  # α_2 = α_1 + β g·g = 0.1 + 0.01 · (2·2 + 2·2) for global; per leaf/element likewise.
  expected = {"global": 0.1 + 0.01 * 8, "leaf": 0.1 + 0.01 * 8, "element": 0.1 + 0.01 * 4}
  for a in jax.tree.leaves(state.learning_rate):
    np.testing.assert_allclose(np.asarray(a), expected[granularity], rtol=1e-6)
  np.testing.assert_allclose(updates["a"], -expected[granularity] * 2.0, rtol=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("empty", [{}, [], (), None])
def test_empty_params(granularity, empty):
  opt = _opt(granularity)
  updates, state = _two_steps(opt, empty, empty)
  assert updates == empty
  assert jax.tree.structure(state) == jax.tree.structure(opt.init(empty))
  if granularity == "global":  # one α, which has nothing to learn from
    assert float(state.learning_rate) == pytest.approx(0.1)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_masked_node_leaves(granularity):
  """Inside `optax.masked` the wrapped transform sees `MaskedNode`s for the masked leaves."""
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = {"a": jnp.full(3, 1.0), "b": jnp.full(2, 5.0)}
  masked = optax.masked(_opt(granularity), {"a": True, "b": False})
  updates, state = _two_steps(masked, params, grads)
  # The masked-out leaf passes through unchanged; its gradient does not enter α.
  np.testing.assert_array_equal(updates["b"], grads["b"])
  alpha = 0.1 + 0.01 * (3.0 if granularity != "element" else 1.0)
  np.testing.assert_allclose(updates["a"], -alpha * 1.0, rtol=1e-6)
  inner = state.inner_state
  assert isinstance(inner.prev_direction["b"], optax.MaskedNode)
  # multi_transform: two hyperoptax transforms, each learning from its own group only.
  multi = optax.multi_transform(
      {"x": _opt(granularity), "y": _opt(granularity)}, {"a": "x", "b": "y"}
  )
  updates, state = _two_steps(multi, params, grads)
  for key, g, n in (("a", 1.0, 3), ("b", 5.0, 2)):
    per = 1 if granularity == "element" else n
    np.testing.assert_allclose(updates[key], -(0.1 + 0.01 * g * g * per) * g, rtol=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize(
    "scalar", [1.5, np.float32(1.5), np.array(1.5, np.float32), jnp.float32(1.5)],
    ids=["python", "numpy_scalar", "numpy_0d", "jax_0d"],
)
def test_scalar_params(granularity, scalar):
  opt = _opt(granularity)
  updates, state = _two_steps(opt, scalar, scalar)
  assert jnp.shape(updates) == ()
  alpha = 0.1 + 0.01 * 1.5 * 1.5
  np.testing.assert_allclose(np.asarray(updates), -alpha * 1.5, rtol=1e-6)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
      lambda x: (x.shape, x.dtype), opt.init(scalar))


def _deep(depth, leaf):
  tree = leaf
  for _ in range(depth):
    tree = {"x": tree, "y": [jnp.ones(1)]}
  return tree


def test_very_deep_trees():
  """Depth 30 works like a shallow tree. (JAX's own pytree functions stop near depth
  1000 with a recursion error, for every Optax transform alike.)"""
  depth = 30
  params, grads = _deep(depth, jnp.ones(2)), _deep(depth, jnp.full(2, 0.5))
  updates, _ = _two_steps(_opt("leaf"), params, grads)
  leaves = jax.tree.leaves(updates)  # the innermost (2,) leaf first, then the ones(1)
  assert len(leaves) == depth + 1
  np.testing.assert_allclose(leaves[0], -(0.1 + 0.01 * 2 * 0.25) * 0.5, rtol=1e-6)
  for leaf in leaves[1:]:
    np.testing.assert_allclose(leaf, [-(0.1 + 0.01)], rtol=1e-6)
  # Global: α_2 = 0.1 + β Σ g·g over every leaf.
  _, state = _two_steps(_opt("global"), params, grads)
  np.testing.assert_allclose(float(state.learning_rate), 0.1 + 0.01 * (depth + 0.5), rtol=1e-5)


def test_invalid_configuration_names_the_argument():
  bad = [
      (dict(rule="cubic"), "rule"),
      (dict(granularity="row"), "granularity"),
      (dict(min_learning_rate=1.0, max_learning_rate=0.1), "min_learning_rate"),
      (dict(max_learning_rate=float("nan")), "max_learning_rate"),
      (dict(hyper_optimizer="adam"), "hyper_optimizer"),
  ]
  for kwargs, name in bad:
    with pytest.raises(ValueError, match=name):
      hyperoptax.sgd_hd(0.1, **kwargs)
  for args, name in [((float("inf"),), "learning_rate"), ((0.1, -1.0), "hyper_lr"),
                     ((0.1, "big"), "hyper_lr"), ((jnp.ones(2),), "learning_rate")]:
    with pytest.raises(ValueError, match=name):
      hyperoptax.sgd_hd(*args)
  with pytest.raises(ValueError, match="direction"):
    hyperoptax.hypergradient("sgd", 0.1, 0.01)
