"""Tests of `hyperoptimize`: any hyperparameter by jvp hypergradients, and stacking.

The references are the paper's SGD-HD / Adam-HD (via `sgd_hd`/`adam_hd`, themselves
tested against NumPy in test_reference.py) and central finite differences of the
one-step lookahead loss `f(θ + u(λ))`, the inner optimizer's state held fixed.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax
from hyperoptax import hyperoptimize

# A least-squares problem with two leaves: f(θ) = ½ mean((X w + c - y)²).
_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(64, 8))
_Y = _X @ _RNG.normal(size=8) + 0.1 * _RNG.normal(size=64)
# The largest curvature; SGD's best constant step is about 1 / L.
_L = float(np.linalg.eigvalsh(np.c_[_X, np.ones(64)].T @ np.c_[_X, np.ones(64)] / 64).max())


def _loss(p):
  x, y = jnp.asarray(_X, p["w"].dtype), jnp.asarray(_Y, p["w"].dtype)
  return 0.5 * jnp.mean((x @ p["w"] + p["c"] - y) ** 2)


def _params(dtype=jnp.float32):
  return {"w": jnp.zeros(8, dtype), "c": jnp.zeros((), dtype)}


def _train(tx, steps, params=None):
  """`steps` steps of `tx` on `_loss` as one scan.

  Returns the final loss, the final state, and per step the params and the outermost
  learned values (empty for a plain optimizer).
  """
  params = _params() if params is None else params

  def body(carry, _):
    p, s = _step(tx, *carry)
    return (p, s), (p, _learned(s))

  (p, s), (ps, lams) = jax.lax.scan(body, (params, tx.init(params)), None, steps)
  return _loss(p), s, ps, lams


def _step(tx, p, s):
  u, s = tx.update(jax.grad(_loss)(p), s, p)
  return optax.apply_updates(p, u), s


def _learned(state):
  try:
    return hyperoptax.get_hyperparams(state)
  except ValueError:  # a plain Optax state
    return {}


def _recorder():
  """A hyper-optimizer that never moves λ and keeps the last gradient it was fed."""
  return optax.GradientTransformation(
      lambda z: jax.tree.map(jnp.zeros_like, z),
      lambda g, s, params=None: (jax.tree.map(jnp.zeros_like, g), g),
  )


# ---------------------------------------------------------------------------------------
# Reduction to the paper's SGD-HD and Adam-HD.


@pytest.mark.parametrize(
    "inner, reference, beta",
    [(optax.sgd, hyperoptax.sgd_hd, 1e-2), (optax.adam, hyperoptax.adam_hd, 1e-4)],
    ids=["sgd", "adam"],
)
def test_reproduces_hd_in_float64(x64, inner, reference, beta):
  alpha0 = 0.02
  tx = hyperoptimize(
      inner, hyper_optimizer=optax.sgd(beta), constraints={"learning_rate": None},
      learning_rate=alpha0,
  )
  ref = reference(alpha0, beta)
  params = _params(jnp.float64)
  _, _, ps, lams = jax.jit(lambda: _train(tx, 30, params))()
  _, _, ps_ref, lams_ref = jax.jit(lambda: _train(ref, 30, params))()
  chex.assert_trees_all_close(ps, ps_ref, rtol=0, atol=1e-12)
  lr = lams["learning_rate"]
  np.testing.assert_allclose(lr, lams_ref["learning_rate"], rtol=0, atol=1e-12)
  assert lr.dtype == jnp.float64
  # α moved: this is not a comparison of two constant-α runs.
  assert abs(float(lr[-1]) - alpha0) > 1e-2 * alpha0


# ---------------------------------------------------------------------------------------
# Finite differences of the one-step lookahead.


@pytest.mark.parametrize(
    "inner, values, constraints",
    [
        (optax.adam, {"learning_rate": 0.05, "b1": 0.8, "b2": 0.95}, None),
        (optax.sgd, {"learning_rate": 0.05, "momentum": 0.6}, {"momentum": None}),
    ],
    ids=["adam-log-logit", "sgd-momentum-raw"],
)
def test_hypergradient_matches_finite_differences(x64, inner, values, constraints):
  names = tuple(values)
  tx = hyperoptimize(
      inner, hyper_optimizer=_recorder(), learn=names, constraints=constraints, **values
  )
  eps = 1e-6

  @jax.jit
  def fed_and_finite_differences():
    # Three steps with λ fixed (the recorder's updates are zero), then the state s.
    p, s = jax.lax.fori_loop(
        0, 3, lambda _, c: _step(tx, *c), (_params(jnp.float64), tx.init(_params(jnp.float64)))
    )
    g = jax.grad(_loss)(p)

    def lookahead(z):
      """f(θ + u(z)): the same state and gradient, the unconstrained values set to z."""
      return _loss(optax.apply_updates(p, tx.update(g, s._replace(unconstrained=z), p)[0]))

    # Central differences, one name perturbed by ±eps per row, all rows in one vmap.
    k = len(names)
    z0 = jnp.stack([s.unconstrained[n] for n in names])
    rows = z0 + eps * jnp.concatenate([jnp.eye(k), -jnp.eye(k)])
    f = jax.vmap(lambda z: lookahead({n: z[i] for i, n in enumerate(names)}))(rows)
    fd = dict(zip(names, (f[:k] - f[k:]) / (2 * eps), strict=True))
    # The real step from s, then the next one, which feeds g_{t+1} · ∂u_t/∂z.
    _, s_after = _step(tx, *_step(tx, p, s))
    return s_after.hyper_state, fd

  fed, fd = fed_and_finite_differences()
  for name in names:
    assert abs(float(fd[name])) > 1e-4, name  # a non-trivial derivative
    np.testing.assert_allclose(fed[name], fd[name], rtol=1e-6, err_msg=name)


def test_first_hypergradient_is_zero():
  tx = hyperoptimize(optax.adam, hyper_optimizer=_recorder(), learning_rate=0.1)
  p = _params()
  _, s = jax.jit(tx.update)(jax.grad(_loss)(p), tx.init(p), p)
  assert float(s.hyper_state["learning_rate"]) == 0.0


# ---------------------------------------------------------------------------------------
# Stacking.


def _sgd_stack(alpha0):
  return hyperoptimize(
      optax.sgd, learning_rate=alpha0,
      hyper_optimizer=hyperoptimize(optax.sgd, learning_rate=1.0, hyper_optimizer=optax.sgd(0.1)),
  )


def _adam_stack(alpha0):
  return hyperoptimize(
      optax.adam, learning_rate=alpha0,
      hyper_optimizer=hyperoptimize(
          optax.adam, learning_rate=0.05, hyper_optimizer=optax.sgd(1e-3)
      ),
  )


@pytest.mark.parametrize(
    "stack, plain, alpha0, mid0",
    [(_sgd_stack, optax.sgd, 0.01 / _L, 1.0), (_adam_stack, optax.adam, 1e-3, 0.05)],
    ids=["sgd-sgd-sgd", "adam-adam-sgd"],
)
def test_height_three_stack_jit_vmap_and_small_alpha(stack, plain, alpha0, mid0):
  steps = 150

  @jax.jit
  def run(alphas):
    stacked = jax.vmap(lambda a: _train(stack(a), steps)[:2])(alphas)
    return stacked, _train(plain(alphas[0]), steps)[0]

  # vmap over the (traced) initial learning rate; lane 0 is 100x too small a step.
  (losses, s), loss_plain = run(jnp.asarray([alpha0, 3 * alpha0], jnp.float32))
  # The stack learned its way out of it; the plain optimizer did not.
  assert np.all(np.isfinite(losses))
  assert float(losses[0]) < 0.1 * float(loss_plain)
  assert float(hyperoptax.get_learning_rate(s)[0]) > 10 * alpha0
  # Three levels of state; the middle one learned its own learning rate too.
  mid, top = s.hyper_state, s.hyper_state.hyper_state
  assert isinstance(mid, hyperoptax.HyperoptimizeState)
  assert not isinstance(top, hyperoptax.HyperoptimizeState)
  mid_lr = hyperoptax.get_hyperparams(mid)["learning_rate"]
  assert np.all(np.abs(mid_lr - mid0) > 1e-4 * mid0)
  # Under vmap, lane 0 is the unbatched run (one more compile: only for the SGD stack).
  if stack is _sgd_stack:
    loss0 = jax.jit(lambda: _train(stack(alpha0), steps)[0])()
    np.testing.assert_allclose(losses[0], loss0, rtol=1e-4, atol=1e-7)


def test_hd_alias_as_hyper_optimizer():
  tx = hyperoptimize(
      optax.adam, learning_rate=1e-3, hyper_optimizer=hyperoptax.adam_hd(0.05, 1e-4)
  )
  loss, s, _, _ = jax.jit(lambda: _train(tx, 100))()
  assert float(loss) < float(jax.jit(lambda: _train(optax.adam(1e-3), 100)[0])())
  assert isinstance(s.hyper_state, hyperoptax.HypergradientState)
  assert float(hyperoptax.get_learning_rate(s.hyper_state)) != 0.05


# ---------------------------------------------------------------------------------------
# Domains, finite guard, state conventions.


@pytest.mark.parametrize(
    "hyper_optimizer", [optax.adam(1.0), optax.sgd(1e4)], ids=["adam-1", "sgd-1e4"]
)
def test_learned_values_stay_in_domain(hyper_optimizer):
  tx = hyperoptimize(
      optax.adam, hyper_optimizer=hyper_optimizer, learn=("learning_rate", "b1", "b2", "eps"),
      learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8,
  )
  lams = jax.jit(lambda: _train(tx, 300)[3])()
  for name, values in lams.items():
    values = np.asarray(values)
    assert np.all(np.isfinite(values)) and np.all(values > 0), name
    if name in ("b1", "b2"):
      assert np.all(values < 1), name
  # The hyper-learning-rates are large: the values did move (far).
  assert np.ptp(np.asarray(lams["learning_rate"])) > 0.1


def test_non_finite_gradient_skips_step():
  tx = hyperoptimize(
      optax.adam, hyper_optimizer=optax.sgd(1e-2), learn=("learning_rate", "b1"),
      learning_rate=0.1,
  )
  p, s = jax.jit(lambda p: _step(tx, *_step(tx, p, tx.init(p))))(_params())
  bad = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), p)
  u, s_bad = jax.jit(tx.update)(bad, s, p)
  chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
  chex.assert_trees_all_equal(s_bad, s)


def test_zero_gradient_coordinates_do_not_stall_learning():
  # A leaf the loss ignores has a zero gradient: the jvp of Adam's √v̂ there is 0·∞.
  tx = hyperoptimize(
      optax.adam, hyper_optimizer=optax.adam(0.05), learn=("learning_rate", "b2"),
      learning_rate=0.01,
  )
  params = {**_params(), "unused": jnp.zeros(3)}
  loss, s, _, lams = jax.jit(lambda: _train(tx, 20, params))()
  assert all(np.all(np.isfinite(t)) for t in jax.tree.leaves(s.tangents))
  assert float(loss) < float(_loss(params))
  for name, values in lams.items():
    assert np.all(np.diff(np.asarray(values)[1:]) != 0), name  # moved at every step


def test_init_matches_update_structure_and_dtypes():
  tx = hyperoptimize(
      optax.adam, hyper_optimizer=optax.adam(0.01), learn=("learning_rate", "b2"),
      learning_rate=1e-3,
  )
  p = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  s = tx.init(p)
  u, s1 = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, p), s, p)
  chex.assert_trees_all_equal_shapes_and_dtypes(s, s1)
  chex.assert_trees_all_equal_dtypes(u, p)
  assert s1.hyperparams["learning_rate"].dtype == jnp.float32


def test_extra_args_and_chain():
  tx = optax.chain(
      optax.clip_by_global_norm(10.0),
      hyperoptimize(optax.sgd, hyper_optimizer=optax.sgd(0.1), learning_rate=0.05, momentum=0.9),
  )
  p = _params()
  s = tx.init(p)
  u, s = jax.jit(tx.update)(jax.grad(_loss)(p), s, p, value=jnp.ones(()))
  assert set(hyperoptax.get_hyperparams(s)) == {"learning_rate"}
  np.testing.assert_allclose(hyperoptax.get_learning_rate(s), 0.05, rtol=1e-6)
  # momentum is fixed, learning_rate learned: both used by the inner sgd.
  assert float(s[1].inner_state.hyperparams["momentum"]) == pytest.approx(0.9)


def test_fixed_callables_mask_static_and_schedule():
  # `mask` is passed as is (not called with the step count); a fixed learning-rate
  # schedule is still a schedule while b1 is learned.
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 0, p)
  p = _params()
  g = jax.tree.map(jnp.zeros_like, p)
  tx = hyperoptimize(
      optax.adamw, hyper_optimizer=optax.sgd(0.1), learning_rate=0.1, weight_decay=0.5,
      mask=mask,
  )
  p1 = {"w": jnp.ones(8), "c": jnp.ones(())}
  u, _ = jax.jit(tx.update)(g, tx.init(p1), p1)
  np.testing.assert_allclose(u["w"], -0.1 * 0.5 * np.ones(8), rtol=1e-6)  # decayed
  np.testing.assert_allclose(u["c"], 0.0)  # masked out
  sched = hyperoptimize(
      optax.sgd, hyper_optimizer=optax.sgd(0.1), learn="momentum", momentum=0.5,
      learning_rate=optax.constant_schedule(0.25),
  )
  u, _ = jax.jit(sched.update)(jax.tree.map(jnp.ones_like, p), sched.init(p), p)
  np.testing.assert_allclose(u["w"], -0.25 * np.ones(8), rtol=1e-6)


def test_get_hyperparams_errors():
  with pytest.raises(ValueError, match="no hyperoptax"):
    hyperoptax.get_hyperparams(optax.adam(1e-3).init(_params()))
  two = optax.chain(
      hyperoptimize(optax.sgd, hyper_optimizer=optax.sgd(0.1), learning_rate=0.1),
      hyperoptimize(optax.sgd, hyper_optimizer=optax.sgd(0.1), learning_rate=0.1),
  )
  with pytest.raises(ValueError, match="2 hyperoptax"):
    hyperoptax.get_hyperparams(two.init(_params()))
  only_b1 = hyperoptimize(optax.adam, hyper_optimizer=optax.sgd(0.1), learn="b1", learning_rate=0.1)
  s = only_b1.init(_params())
  assert set(hyperoptax.get_hyperparams(s)) == {"b1"}
  with pytest.raises(ValueError, match="does not learn `learning_rate`"):
    hyperoptax.get_learning_rate(s)


# ---------------------------------------------------------------------------------------
# Clear errors at construction.


def _uses_python_control_flow(learning_rate):
  if learning_rate > 0.5:
    return optax.sgd(0.5)
  return optax.sgd(learning_rate)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learn": ("learning_rate", "gamma")}, "gamma"),
        ({"learn": ()}, "learn"),
        ({"learn": ("b1", "b1")}, "repeated"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"learning_rate": optax.constant_schedule(0.1)}, "learning_rate"),
        ({"learning_rate": jnp.ones(3)}, "learning_rate"),
        ({"constraints": {"learning_rate": "softplus"}}, "constraints"),
        ({"constraints": {"b1": "logit"}}, "not learned"),
        ({"learn": ("learning_rate", "b1"), "b1": 1.5}, "b1"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"hyper_optimizer": optax.sgd}, "hyper_optimizer"),
    ],
)
def test_clear_errors(kwargs, match):
  args = {"hyper_optimizer": optax.sgd(0.1), "learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    hyperoptimize(optax.adam, **args)


def test_errors_for_non_numeric_default_and_bad_factories():
  with pytest.raises(ValueError, match="momentum"):  # optax.sgd's default momentum is None
    hyperoptimize(optax.sgd, hyper_optimizer=optax.sgd(0.1), learn="momentum", learning_rate=0.1)
  with pytest.raises(ValueError, match="optimizer"):
    hyperoptimize(optax.sgd(0.1), hyper_optimizer=optax.sgd(0.1), learning_rate=0.1)
  with pytest.raises(ValueError, match="optimizer"):
    hyperoptimize(lambda learning_rate: 3, hyper_optimizer=optax.sgd(0.1), learning_rate=0.1)
  with pytest.raises(ValueError, match="inject_hyperparams"):
    hyperoptimize(_uses_python_control_flow, hyper_optimizer=optax.sgd(0.1), learning_rate=0.1)
  # With no constraint, a value outside the default domain is allowed.
  hyperoptimize(
      optax.sgd, hyper_optimizer=optax.sgd(0.1), constraints={"learning_rate": None},
      learning_rate=-0.1,
  )
