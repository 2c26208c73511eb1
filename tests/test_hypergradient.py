"""The `hypergradient` wrapper as an Optax citizen: jit, vmap, composition, dtypes, errors.

The numerical correctness of the learning-rate update is in `test_reference.py`; here
the expected values come from re-running the same optimizer by hand on transformed
gradients (clipped, decayed, accumulated) or from independent single runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax as hx

CURVATURES = {"a": jnp.array([1.0, 4.0, 0.25]), "b": jnp.array([[2.0, 0.5], [1.0, 3.0]])}
TARGETS = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.3, -1.0], [2.0, 0.0]])}


def quadratic(p):
  """f(θ) = ½ Σ c_i (θ_i - t_i)², over two leaves."""
  return sum(
      0.5 * jnp.sum(c * (x - t) ** 2)
      for x, c, t in zip(jax.tree.leaves(p), jax.tree.leaves(CURVATURES), jax.tree.leaves(TARGETS))
  )


def zeros(dtype=jnp.float32):
  return jax.tree.map(lambda t: jnp.zeros_like(t, dtype), TARGETS)


def run(opt, params, steps, grad_fn=jax.grad(quadratic), **extra):
  """`steps` eager steps; returns the final params, state and the list of updates."""
  state = opt.init(params)
  updates = []
  for _ in range(steps):
    u, state = opt.update(grad_fn(params), state, params, **extra)
    params = optax.apply_updates(params, u)
    updates.append(u)
  return params, state, updates


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ---------------------------------------------------------------------------------------
# jit, extra args, vmap.


@pytest.mark.parametrize(
    "make",
    [
        lambda: hx.sgd_hd(0.1, 0.01, momentum=0.9),
        lambda: hx.adam_hd(1e-2, rule="log", granularity="element",
                           hyper_optimizer=optax.adam(0.01), min_learning_rate=1e-4),
    ],
    ids=["sgdm-additive-global", "adam-log-element-bounded"],
)
def test_jit_does_not_recompile_and_ignores_extra_args(make):
  opt = make()
  params = zeros()
  state = opt.init(params)
  traced = []

  def update(g, s, p):
    traced.append(1)
    return opt.update(g, s, p, foo=1, bar=jnp.ones(3))  # unknown extra args: ignored

  update_jit = jax.jit(update)
  grad_fn = jax.grad(quadratic)
  eager_params, eager_state, _ = run(opt, params, 6)
  for _ in range(6):
    u, new_state = update_jit(grad_fn(params), state, params)
    # `init` returns exactly what `update` returns: structure, shapes, dtypes, weak types.
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    jax.tree.map(
        lambda a, b: (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
        or pytest.fail(f"{a.aval} != {b.aval}"),
        state, new_state,
    )
    params, state = optax.apply_updates(params, u), new_state
  assert len(traced) == 1
  assert update_jit._cache_size() == 1
  assert_trees_close(params, eager_params, rtol=1e-5)
  assert_trees_close(hx.get_learning_rate(state), hx.get_learning_rate(eager_state), rtol=1e-5)
  # The learning rate moved (the test is not about a frozen α).
  assert not np.allclose(jax.tree.leaves(hx.get_learning_rate(state))[0], 0.1 if
                         jax.tree.leaves(hx.get_learning_rate(state))[0].ndim == 0 else 1e-2)


def _final_loss_and_lr(alpha0, hyper_lr, steps=25):
  opt = hx.sgd_hd(alpha0, hyper_lr)
  params = zeros()

  def step(carry, _):
    p, s = carry
    u, s = opt.update(jax.grad(quadratic)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (p, s), _ = jax.lax.scan(step, (params, opt.init(params)), length=steps)
  return quadratic(p), s.learning_rate


def test_vmap_over_initial_learning_rate_equals_separate_runs():
  alphas = jnp.geomspace(1e-3, 0.3, 8)
  sweep = jax.jit(jax.vmap(_final_loss_and_lr, in_axes=(0, None)))
  losses, lrs = sweep(alphas, 3e-3)
  single = jax.jit(_final_loss_and_lr)
  for i, a in enumerate(alphas):
    loss_i, lr_i = single(a, 3e-3)
    np.testing.assert_allclose(losses[i], loss_i, rtol=1e-5)
    np.testing.assert_allclose(lrs[i], lr_i, rtol=1e-5)
  assert single._cache_size() == 1  # α0 is traced: one program for all eight runs
  assert np.all(np.isfinite(lrs)) and np.all(np.isfinite(losses))
  assert len(set(np.round(np.asarray(lrs), 6))) == 8  # the eight runs really differ


# ---------------------------------------------------------------------------------------
# Composition with other Optax transforms.


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"rule": "log", "granularity": "leaf"}])
def test_inject_hyperparams_equals_direct_use(options):
  # inject_hyperparams turns α0, β (and momentum) into state entries; the learned α
  # still lives in the inner HypergradientState, so the runs coincide.
  injected = optax.inject_hyperparams(hx.sgd_hd)(learning_rate=0.05, hyper_lr=0.01, **options)
  p1, s1, _ = run(injected, zeros(), 6)
  p2, s2, _ = run(hx.sgd_hd(0.05, 0.01, **options), zeros(), 6)
  assert_trees_close(p1, p2)
  assert_trees_close(hx.get_learning_rate(s1), hx.get_learning_rate(s2))
  # β as a schedule: one that is 0 from the start freezes α at α0.
  frozen = optax.inject_hyperparams(hx.sgd_hd)(
      learning_rate=0.05, hyper_lr=optax.constant_schedule(0.0), **options)
  _, s3, _ = run(frozen, zeros(), 6)
  jax.tree.map(lambda a: np.testing.assert_allclose(a, 0.05, rtol=1e-6),
               hx.get_learning_rate(s3))


def test_chain_after_clip_by_global_norm_equals_adam_hd_on_clipped_gradients():
  params = {"a": jnp.array([3.0, -4.0, 1.0]), "b": jnp.full((2, 2), 5.0)}
  grads = jax.grad(quadratic)
  chained = optax.chain(optax.clip_by_global_norm(1.0), hx.adam_hd(0.05, 1e-3))

  def clipped(p):
    g = grads(p)
    norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
    return jax.tree.map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), g)

  p1, s1, _ = run(chained, params, 8)
  p2, s2, _ = run(hx.adam_hd(0.05, 1e-3), params, 8, grad_fn=clipped)
  assert_trees_close(p1, p2)
  np.testing.assert_allclose(hx.get_learning_rate(s1), hx.get_learning_rate(s2), rtol=1e-6)
  assert hx.get_learning_rate(s1) != 0.05


def test_chain_after_add_decayed_weights_is_l2_in_the_gradient():
  params = {"a": jnp.array([3.0, -4.0, 1.0]), "b": jnp.full((2, 2), 5.0)}
  chained = optax.chain(optax.add_decayed_weights(1e-2), hx.sgd_hd(0.1, 0.01))

  def l2_grad(p):
    return jax.grad(lambda q: quadratic(q) + 0.5e-2 * sum(jnp.sum(x**2) for x in
                                                           jax.tree.leaves(q)))(p)

  p1, s1, _ = run(chained, params, 8)
  p2, s2, _ = run(hx.sgd_hd(0.1, 0.01), params, 8, grad_fn=l2_grad)
  assert_trees_close(p1, p2)
  np.testing.assert_allclose(hx.get_learning_rate(s1), hx.get_learning_rate(s2), rtol=1e-6)


def test_multisteps_equals_hd_on_averaged_gradients():
  # Gradients evaluated at fixed params, alternating between two batches (noise).
  grad_pair = [jax.tree.map(lambda t: t * k, TARGETS) for k in (1.0, 3.0)]
  multi = optax.MultiSteps(hx.sgd_hd(0.1, 0.05), every_k_schedule=2)
  plain = hx.sgd_hd(0.1, 0.05)
  params = zeros()
  ms, ps = multi.init(params), plain.init(params)
  update = jax.jit(multi.update)
  p_multi = p_plain = params
  for step in range(8):
    u, ms = update(grad_pair[step % 2], ms, p_multi)
    p_multi = optax.apply_updates(p_multi, u)
    if step % 2 == 1:
      mean = jax.tree.map(lambda a, b: (a + b) / 2, *grad_pair)
      u, ps = plain.update(mean, ps, p_plain)
      p_plain = optax.apply_updates(p_plain, u)
      assert_trees_close(p_multi, p_plain)
  assert update._cache_size() == 1
  np.testing.assert_allclose(hx.get_learning_rate(ms), hx.get_learning_rate(ps), rtol=1e-6)
  assert hx.get_learning_rate(ms) > 0.1  # α grew: consecutive mean gradients agree


def test_apply_if_finite_and_own_finite_guard():
  opt = optax.apply_if_finite(hx.sgd_hd(0.1, 0.05), max_consecutive_errors=3)
  params = zeros()
  state = opt.init(params)
  update = jax.jit(opt.update)
  grad_fn = jax.grad(quadratic)
  for k in range(6):
    g = grad_fn(params)
    if k == 3:
      g = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g)
      before = state
    u, state = update(g, state, params)
    if k == 3:
      assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
      assert_trees_close(hx.get_learning_rate(state), hx.get_learning_rate(before), 0, 0)
    params = optax.apply_updates(params, u)
  assert update._cache_size() == 1
  assert np.isfinite(hx.get_learning_rate(state))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))

  # Without the wrapper, the core's own guard skips the step the same way.
  bare = hx.sgd_hd(0.1, 0.05)
  s = bare.init(params)
  _, s = bare.update(grad_fn(params), s, params)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.inf), params)
  u, s2 = bare.update(bad, s, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  jax.tree.map(np.testing.assert_array_equal, s2, s)


# ---------------------------------------------------------------------------------------
# dtypes and state access.


def test_bfloat16_params_keep_dtype_and_float32_learning_rate():
  opt = hx.adam_hd(1e-2, 1e-4)
  params = zeros(jnp.bfloat16)
  grads = jax.tree.map(lambda x: jnp.ones_like(x), params)
  state = opt.init(params)
  assert state.learning_rate.dtype == jnp.float32
  for _ in range(3):
    u, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, u)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  assert state.learning_rate.dtype == jnp.float32
  assert state.learning_rate > 1e-2  # constant gradients: d_{t-1}·g_t > 0, α grows
  for granularity in ("leaf", "element"):
    s = hx.sgd_hd(1e-2, 1e-3, granularity=granularity).init(params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s.learning_rate))


def test_float64_learning_rate_with_float64_params(x64):
  opt = hx.sgd_hd(0.1, 0.01)
  params = zeros(jnp.float64)
  _, state, updates = run(opt, params, 3)
  assert state.learning_rate.dtype == jnp.float64
  assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(updates[-1]))
  # Mixed float32/float64 leaves: the single α is float64.
  mixed = {"a": jnp.zeros(3, jnp.float32), "b": jnp.zeros(2, jnp.float64)}
  assert opt.init(mixed).learning_rate.dtype == jnp.float64


def test_tree_get_and_get_learning_rate():
  params = zeros()
  opt = hx.sgd_hd(0.1, 0.01)
  _, state, _ = run(opt, params, 3)
  lr = optax.tree_utils.tree_get(state, "learning_rate")
  assert lr.shape == () and lr == hx.get_learning_rate(state) and lr != 0.1

  chained = optax.chain(optax.clip(1.0), hx.adam_hd(1e-2, 1e-4))
  _, cstate, _ = run(chained, params, 3)
  assert optax.tree_utils.tree_get(cstate, "learning_rate") == hx.get_learning_rate(cstate)

  multi = optax.MultiSteps(hx.sgd_hd(0.1, 0.01), every_k_schedule=2)
  _, mstate, _ = run(multi, params, 4)
  assert hx.get_learning_rate(mstate) != 0.1

  labels = {"a": "hd", "b": "plain"}
  mt = optax.multi_transform({"hd": hx.sgd_hd(0.1, 0.01, granularity="leaf"),
                              "plain": optax.sgd(0.1)}, labels)
  _, tstate, _ = run(mt, params, 3)
  lr = hx.get_learning_rate(tstate)
  assert lr["a"].shape == () and lr["a"] != 0.1

  element = hx.sgd_hd(0.1, 0.01, granularity="element")
  _, estate, _ = run(element, params, 2)
  lr = hx.get_learning_rate(estate)
  assert jax.tree.map(jnp.shape, lr) == jax.tree.map(jnp.shape, params)

  with pytest.raises(ValueError, match="no hyperoptax transform"):
    hx.get_learning_rate(optax.adam(1e-3).init(params))
  two = optax.multi_transform({"hd": hx.sgd_hd(0.1, 0.01), "plain": hx.adam_hd()}, labels)
  with pytest.raises(ValueError, match="2 hyperoptax transforms"):
    hx.get_learning_rate(two.init(params))


# ---------------------------------------------------------------------------------------
# Construction errors: each names its argument.

ERRORS = [
    (lambda: hx.sgd_hd(0.1, -1e-3), "hyper_lr"),
    (lambda: hx.adam_hd(1e-3, 1e-7, b1=1.0), "b1"),
    (lambda: hx.adam_hd(1e-3, 1e-7, b1=-0.1), "b1"),
    (lambda: hx.adam_hd(1e-3, 1e-7, b2=1.5), "b2"),
    (lambda: hx.adamw_hd(1e-3, 1e-7, b2=1.0), "b2"),
    (lambda: hx.nadam_hd(1e-3, 1e-7, b1=1.0), "b1"),
    (lambda: hx.sgd_hd(0.1, 1e-3, nesterov=True), "nesterov"),
    (lambda: hx.sgd_hd(0.1, 1e-3, momentum=1.0), "momentum"),
    (lambda: hx.sgd_hd("0.1", 1e-3), "learning_rate"),
    (lambda: hx.sgd_hd(optax.constant_schedule(0.1), 1e-3), "learning_rate"),
    (lambda: hx.sgd_hd(None, 1e-3), "learning_rate"),
    (lambda: hx.adam_hd(jnp.ones(3), 1e-7), "learning_rate"),
    (lambda: hx.sgd_hd(float("nan"), 1e-3), "learning_rate"),
    (lambda: hx.sgd_hd(0.1, "big"), "hyper_lr"),
    (lambda: hx.sgd_hd(0.1, 1e-3, rule="exponential"), "rule"),
    (lambda: hx.sgd_hd(0.1, 1e-3, granularity="layer"), "granularity"),
    (lambda: hx.sgd_hd(0.1, 1e-3, hyper_optimizer=optax.sgd(1e-3)), "hyper_optimizer"),
    (lambda: hx.sgd_hd(0.1, 1e-3, min_learning_rate=1.0, max_learning_rate=0.1),
     "min_learning_rate"),
    (lambda: hx.sgd_hd(0.1, rule="log", min_learning_rate=0.0), "min_learning_rate"),
    (lambda: hx.sgd_hd(-0.1, rule="log"), "learning_rate"),
    (lambda: hx.sgd_hd(0.1, 1.0, rule="multiplicative"), "hyper_lr"),
    (lambda: hx.sgd_hd(0.1, hyper_optimizer=optax.sgd), "hyper_optimizer"),
    (lambda: hx.hypergradient(optax.sgd, 0.1, 1e-3), "direction"),
    (lambda: hx.hypergradient(optax.identity(), 0.1), "hyper_lr"),
    (lambda: hx.sgd_hd(0.0, 0.1, rule="multiplicative"), "learning_rate"),
    (lambda: hx.adam_hd(eps=-1e-8), "eps"),
    (lambda: hx.nadam_hd(eps=-1e-8), "eps"),
    (lambda: hx.rmsprop_hd(eps=-1e-8), "eps"),
    (lambda: hx.adagrad_hd(eps=-1e-8), "eps"),
    (lambda: hx.adafactor_hd(decay_rate=-0.8), "decay_rate"),
    (lambda: hx.adamw_hd(weight_decay=-1e-4), "weight_decay"),
]


@pytest.mark.parametrize("make,name", ERRORS, ids=[f"{i}-{n}" for i, (_, n) in
                                                    enumerate(ERRORS)])
def test_construction_errors_name_the_argument(make, name):
  with pytest.raises(ValueError, match=f"`{name}[`=]"):
    make()


@pytest.mark.parametrize("make", [lambda: hx.adamw_hd(1e-3, 1e-7),
                                  lambda: hx.lion_hd(1e-4, 1e-7)])
def test_decoupled_weight_decay_without_params_raises(make):
  opt = make()
  params = zeros()
  state = opt.init(params)
  with pytest.raises(ValueError, match="params"):
    opt.update(params, state)


# ---------------------------------------------------------------------------------------
# Convergence.


def _scan_run(opt, loss, params, steps):
  def step(carry, _):
    p, s = carry
    u, s = opt.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), loss(p)

  (p, s), losses = jax.jit(lambda p0: jax.lax.scan(step, (p0, opt.init(p0)),
                                                    length=steps))(params)
  return p, s, losses


def test_parabola_sgd_hd_learns_a_useful_rate_from_a_tiny_one():
  # SGD with α0 = 1e-3 barely moves in 100 steps; SGD-HD grows α and converges.
  hd_p, hd_s, _ = _scan_run(hx.sgd_hd(1e-3, 3e-3), quadratic, zeros(), 100)
  sgd_p, _, _ = _scan_run(optax.sgd(1e-3), quadratic, zeros(), 100)
  assert quadratic(hd_p) < 1e-6
  assert quadratic(sgd_p) > 0.5 * quadratic(zeros())
  # The stable range of plain GD here is α < 2 / max c = 0.5; α must have learned that.
  assert 0.05 < hd_s.learning_rate < 0.5


def test_rosenbrock_adam_hd_converges():
  def rosenbrock(p):
    return (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2

  start = {"x": jnp.array(-1.2), "y": jnp.array(1.0)}
  p, s, losses = _scan_run(hx.adam_hd(1e-3, 1e-4), rosenbrock, start, 2000)
  assert rosenbrock(p) < 1e-4
  np.testing.assert_allclose([p["x"], p["y"]], [1.0, 1.0], atol=2e-2)
  assert s.learning_rate > 1e-2  # it learned a rate ten times larger than α0
  _, _, adam_losses = _scan_run(optax.adam(1e-3), rosenbrock, start, 2000)
  assert losses[-1] < adam_losses[-1]
