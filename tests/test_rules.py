"""Rules beyond the paper's additive one: granularity, multiplicative and log rules, bounds,
the finite guard, any hyper-optimizer and stacking (issue 3).

The problems are diagonal quadratics `f(x) = ½ Σ c_i x_i²` with SGD directions, where the
best per-coordinate step is known in closed form: `α_i = 1 / c_i` (one step to the
minimum), and plain gradient descent with one rate α gives `x_i ← (1 - α c_i) x_i`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax as hx


def _trajectory(opt, curvatures, steps, noise=0.0, x0=None, nan_at=None):
  """Runs `opt` on ½ Σ c_i x_i² (traceable), with optional gradient noise and a NaN step.

  Returns the final loss and the per-step (loss, learning rate) trajectories.
  """
  c = jnp.asarray(curvatures, jnp.float32)
  x0 = jnp.ones_like(c) if x0 is None else x0

  def loss(x):
    return 0.5 * jnp.sum(c * x**2)

  def step(carry, inputs):
    x, s = carry
    t, key = inputs
    g = jax.grad(loss)(x) + noise * jax.random.normal(key, x.shape)
    if nan_at is not None:
      g = jnp.where(t == nan_at, jnp.nan, g)
    u, s = opt.update(g, s, x)
    x = optax.apply_updates(x, u)
    return (x, s), (loss(x), hx.get_learning_rate(s))

  keys = jax.random.split(jax.random.key(0), steps)
  (x, _), (losses, lrs) = jax.lax.scan(step, (x0, opt.init(x0)), (jnp.arange(steps), keys))
  return loss(x), losses, lrs


def run_quadratic(opt, curvatures, steps, **kwargs):
  """`_trajectory` of one optimizer, jitted."""
  return jax.jit(lambda: _trajectory(opt, curvatures, steps, **kwargs))()


def sweep_quadratic(make, betas, curvatures, steps, **kwargs):
  """`_trajectory` of `make(β)` for each β, as one vmapped program (β is traced)."""
  return jax.jit(jax.vmap(lambda b: _trajectory(make(b), curvatures, steps, **kwargs)))(
      jnp.asarray(betas, jnp.float32))


# ---------------------------------------------------------------------------------------
# Per-element rates on an ill-conditioned quadratic.


def test_element_multiplicative_learns_inverse_curvature():
  curvatures = np.logspace(-2, 2, 5)  # 1e-2 … 1e2
  final, _, lrs = run_quadratic(
      hx.sgd_hd(1e-3, 0.05, rule="multiplicative", granularity="element"), curvatures, 300
  )
  alpha = np.asarray(lrs[-1])
  # Inversely ordered with curvature, and each within ±10% of its own 1/c_i.
  assert np.all(np.diff(alpha) < 0)
  np.testing.assert_allclose(alpha * curvatures, 1.0, rtol=0.1)
  assert final < 1e-10


def test_element_multiplicative_beats_global_and_any_single_rate():
  curvatures = np.logspace(-1, 1, 5)  # 1e-1 … 1e1
  steps = 200
  # The best that any *fixed* global rate can do in `steps` steps, in closed form:
  # f_T(α) = ½ Σ c_i (1 - α c_i)^{2T} (x0 = 1), minimised over a fine grid of α.
  grid = np.linspace(1e-3, 2 / curvatures.max(), 4000)[:, None]
  best_fixed = np.min(0.5 * np.sum(curvatures * (1 - grid * curvatures) ** (2 * steps), 1))
  betas = (0.05, 0.1)
  element, _, _ = sweep_quadratic(
      lambda b: hx.sgd_hd(1e-2, b, rule="multiplicative", granularity="element"),
      betas, curvatures, steps)
  global_, _, _ = sweep_quadratic(
      lambda b: hx.sgd_hd(1e-2, b, rule="multiplicative"), betas, curvatures, steps)
  assert np.all(element < 1e-3 * global_)
  assert np.all(element < 1e-3 * best_fixed)


def test_element_additive_limitation_stiff_coordinates_get_the_largest_rates():
  # Documented limitation: per element, the additive signal is β g_i d_i ∝ c_i², so the
  # stiffest coordinate's rate grows fastest — the opposite of 1/c_i.
  curvatures = np.logspace(-2, 2, 5)
  _, _, lrs = run_quadratic(hx.sgd_hd(1e-3, 1e-7, granularity="element"), curvatures, 20)
  growth = np.asarray(lrs[-1]) - np.float32(1e-3)
  assert np.all(growth >= 0) and growth[-1] > 0  # (the softest one's is below f32 eps)
  assert np.all(np.diff(growth) > 0)  # ordered WITH curvature
  # …and a β that is still tiny for the soft coordinates blows the stiff one up.
  final, _, _ = run_quadratic(hx.sgd_hd(1e-3, 1e-4, granularity="element"), curvatures, 50)
  assert not np.isfinite(final) or final > 1e6


# ---------------------------------------------------------------------------------------
# Granularities that must coincide.


# (The log rule's leaf and global forms are each checked against the NumPy reference in
# test_reference.py.)
@pytest.mark.parametrize("rule,beta", [("additive", 1e-2), ("multiplicative", 0.05)])
def test_leaf_equals_global_for_one_leaf_and_element_for_one_element(rule, beta):
  curvatures = [0.5, 2.0, 1.0]
  ref = run_quadratic(hx.sgd_hd(1e-2, beta, rule=rule), curvatures, 30, noise=0.1)
  leaf = run_quadratic(hx.sgd_hd(1e-2, beta, rule=rule, granularity="leaf"), curvatures, 30,
                       noise=0.1)
  np.testing.assert_allclose(leaf[1], ref[1], rtol=1e-6)
  np.testing.assert_allclose(leaf[2], ref[2], rtol=1e-6)
  assert not np.allclose(ref[2][-1], 1e-2)  # α moved

  one = [3.0]
  ref1 = run_quadratic(hx.sgd_hd(1e-2, beta, rule=rule), one, 30, noise=0.1)
  elem = run_quadratic(hx.sgd_hd(1e-2, beta, rule=rule, granularity="element"), one, 30,
                       noise=0.1)
  np.testing.assert_allclose(elem[1], ref1[1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(elem[2])[:, 0], ref1[2], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Sign preservation, bounds, finite guard.


@pytest.mark.parametrize("granularity", ["global", "element"])
def test_multiplicative_and_log_never_change_the_sign_of_alpha(granularity):
  curvatures = [0.1, 1.0, 10.0]
  for rule, betas in (("multiplicative", (0.01, 0.3, 0.9)), ("log", (0.01, 1.0, 30.0))):
    _, _, lrs = sweep_quadratic(
        lambda b, rule=rule: hx.sgd_hd(0.05, b, rule=rule, granularity=granularity),
        betas, curvatures, 150, noise=1.0,
    )
    for beta, lr in zip(betas, np.asarray(lrs)):
      assert np.all(lr > 0), (rule, beta, lr.min())
      assert np.all(np.isfinite(lr))
      assert lr.max() > 1.01 * lr.min()  # it did move
  # The additive rule, for contrast, drives α negative on the same noisy problem.
  _, _, lrs = run_quadratic(hx.sgd_hd(0.05, 0.3, granularity=granularity), curvatures, 150,
                            noise=1.0)
  assert np.min(lrs) < 0


@pytest.mark.parametrize("rule,beta", [("additive", 0.3), ("log", 3.0),
                                       ("multiplicative", 0.5)])
def test_bounds_hold_at_every_step(rule, beta):
  lo, hi = 0.02, 0.15
  _, _, lrs = run_quadratic(
      hx.sgd_hd(0.05, beta, rule=rule, granularity="element", min_learning_rate=lo,
                max_learning_rate=hi),
      [0.1, 1.0, 10.0], 150, noise=1.0,
  )
  lrs = np.asarray(lrs)
  assert np.all(lrs >= np.float32(lo)) and np.all(lrs <= np.float32(hi))
  # Both bounds were active at some step (otherwise the test proves nothing).
  assert np.any(lrs == np.float32(lo)) and np.any(lrs == np.float32(hi))


@pytest.mark.parametrize("rule", ["additive", "multiplicative", "log"])
def test_nan_gradient_at_step_k_is_skipped_and_training_continues(rule):
  curvatures = [0.1, 1.0, 3.0]
  opt = hx.sgd_hd(0.05, 0.05 if rule != "additive" else 0.01, rule=rule)
  final, losses, lrs = run_quadratic(opt, curvatures, 40, nan_at=10)
  losses, lrs = np.asarray(losses), np.asarray(lrs)
  assert np.all(np.isfinite(lrs)) and np.all(np.isfinite(losses))
  assert lrs[10] == lrs[9] and losses[10] == losses[9]  # step 10 skipped entirely
  assert lrs[-1] != lrs[11]  # α kept learning afterwards
  assert final < 0.1 * losses[0]
  clean_final, _, _ = run_quadratic(opt, curvatures, 39)
  # Skipping one step is the same as running one step fewer.
  np.testing.assert_allclose(final, clean_final, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Any hyper-optimizer; stacking.


def test_adam_on_log_alpha_takes_adams_step():
  # hyper_optimizer=optax.adam(η) on z = log α, fed ∂f/∂z = α h. At step 1, h = 0. At
  # step 2, with s = α h_2 the only non-zero gradient seen so far, Adam's bias-corrected
  # step is -η m̂/(√v̂ + ε) with m̂ = 0.1 s/(1 - 0.9²), v̂ = 0.001 s²/(1 - 0.999²).
  eta = 0.02
  opt = hx.hypergradient(optax.identity(), 0.1, rule="log",
                         hyper_optimizer=optax.adam(eta))
  c = jnp.array([1.0, 2.0])
  x0 = jnp.array([1.0, -1.0])
  s = opt.init(x0)
  g1 = c * x0
  u, s = opt.update(g1, s, x0)
  np.testing.assert_allclose(s.learning_rate, 0.1, rtol=1e-6)  # h_1 = 0
  x1 = x0 + u
  g2 = c * x1
  _, s2 = opt.update(g2, s, x1)
  h2 = -float(jnp.dot(g2, g1))
  m_hat = 0.1 / (1 - 0.81)
  v_hat = 0.001 / (1 - 0.999**2)
  step = -eta * m_hat * np.sign(h2) / np.sqrt(v_hat)
  np.testing.assert_allclose(np.log(s2.learning_rate) - np.log(0.1), step, rtol=1e-4)
  assert abs(step) > 0.01

  # And over a run it learns a rate that converges on an ill-conditioned problem.
  final, _, lrs = run_quadratic(
      hx.adam_hd(1e-3, rule="log", hyper_optimizer=optax.adam(0.05)), [0.1, 1.0, 10.0], 300
  )
  assert np.all(np.asarray(lrs) > 0) and lrs[-1] > 1e-2 and final < 1e-6


def test_stacking_learns_the_hyper_learning_rate():
  # SGD-HD whose β is itself learned by SGD-HD (Chandra et al., 2022): composition.
  c = jnp.array([0.1, 1.0, 2.0])

  def train(hyper_hyper_lr):
    # β starts at 1e-3 and moves by the hyper-hyper-rate (0: a plain SGD-HD, β fixed).
    opt = hx.sgd_hd(1e-3, hyper_optimizer=hx.sgd_hd(1e-3, hyper_hyper_lr))
    x = jnp.full(3, 3.0, jnp.float32)  # (not weak-typed: that would retrace once)
    state = opt.init(x)
    update = jax.jit(opt.update)
    for _ in range(100):
      u, state = update(c * x, state, x)
      x = x + u
    assert update._cache_size() == 1
    return 0.5 * jnp.sum(c * x**2), state

  stacked_loss, state = train(1e-5)
  fixed_loss, fixed_state = train(0.0)
  beta = state.hyper_state.learning_rate  # the stacked transform's own α is β
  assert fixed_state.hyper_state.learning_rate == np.float32(1e-3)
  assert beta > 2e-3  # β learned to grow
  assert hx.get_learning_rate(state) == state.learning_rate  # the outer α, counted once
  assert state.learning_rate > fixed_state.learning_rate
  assert stacked_loss < 0.01 * fixed_loss


def test_defaults_of_scale_free_rules():
  # With hyper_lr=None the aliases use rules.DEFAULT_HYPER_LR for the scale-free rules.
  from hyperoptax._src import rules

  curvatures = [0.1, 1.0, 2.0]
  for rule in ("multiplicative", "log"):
    default = run_quadratic(hx.sgd_hd(0.05, rule=rule), curvatures, 30, noise=0.1)
    explicit = run_quadratic(hx.sgd_hd(0.05, rules.DEFAULT_HYPER_LR[rule], rule=rule),
                             curvatures, 30, noise=0.1)
    np.testing.assert_array_equal(default[2], explicit[2])
