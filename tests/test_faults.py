"""Faults in long jobs: non-finite gradients, an exploding hyper_lr, restarts, donation.

Faults tried, and what must happen:

* NaN / +inf / -inf in every gradient entry, or in one entry of one leaf, at random
  steps (and a run of consecutive ones): the step is skipped, so α, the params and
  the whole optimizer state are bit-for-bit those of a run that never saw that batch.
  The same inside `optax.apply_if_finite`, also once its `max_consecutive_errors` is
  exceeded and it lets the non-finite update through (our guard still zeroes it).
* A hyper_lr (β) far too large: α stays finite under every rule (finite guard), and
  which rule *contains* it is asserted below: `"multiplicative"` on its own (β < 1 is
  enforced and each step scales α by at most 1 ± β); `"additive"` and `"log"` only
  with both bounds (`min_learning_rate`, `max_learning_rate`). The log rule keeps
  α > 0 even when `exp` underflows.
* Checkpoint at step k (`jax.device_get` of the state, saved to `.npz`, rebuilt with
  the state's tree structure): the continuation is bit-identical.
* Buffer donation (`donate_argnums`) of params and state: same results, and the
  donated buffers are consumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax

RULES = ("additive", "log", "multiplicative")
GRANULARITIES = ("global", "leaf", "element")
STEPS = 40
# Fault codes: 0 none, 1 all NaN, 2 all +inf, 3 one -inf entry, 4 one NaN entry in one leaf.
FAULTS = (1, 2, 3, 4)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.standard_normal((5, 3)).astype(np.float32),
            "b": np.zeros((3,), np.float32)}
  xs = rng.standard_normal((STEPS, 8, 5)).astype(np.float32)
  ys = rng.standard_normal((STEPS, 8, 3)).astype(np.float32)
  return params, xs, ys


def _loss(p, x, y):
  return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def _inject(grads, code):
  """The gradient with fault `code` injected (unchanged for code 0)."""
  nan, inf = jnp.float32(jnp.nan), jnp.float32(jnp.inf)
  whole = jnp.select([code == 1, code == 2], [nan, inf], jnp.float32(1))
  w = grads["w"] * whole
  w = w.at[1, 2].set(jnp.where(code == 3, -inf, w[1, 2]))
  b = grads["b"].at[0].set(jnp.where(code == 4, nan, grads["b"][0]))
  return {"w": w, "b": b}


def _configs():
  for rule in RULES:
    for g in GRANULARITIES:
      yield f"sgd_hd/{rule}/{g}", hyperoptax.sgd_hd(0.05, rule=rule, granularity=g)
  yield "adam_hd/log/element", hyperoptax.adam_hd(0.01, rule="log", granularity="element")


def _run_all(opts, params, xs, ys, codes):
  """All optimizers through the same batches and fault codes, in one scan program."""

  def body(carry, batch):
    x, y, code = batch
    new, traj = {}, {}
    for name, opt in opts.items():
      p, s = carry[name]
      u, s = opt.update(_inject(jax.grad(_loss)(p, x, y), code), s, p)
      p = optax.apply_updates(p, u)
      new[name], traj[name] = (p, s), hyperoptax.get_learning_rate(s)
    return new, traj

  init = {name: (params, opt.init(params)) for name, opt in opts.items()}
  return jax.jit(lambda c, b: jax.lax.scan(body, c, b))(init, (xs, ys, codes))


def _fault_codes(seed):
  rng = np.random.default_rng(seed)
  codes = np.zeros(STEPS, np.int32)
  steps = rng.choice(np.arange(1, STEPS - 6), size=8, replace=False)
  codes[steps] = rng.choice(FAULTS, size=8)
  codes[STEPS - 5:STEPS - 1] = FAULTS  # four consecutive faults near the end
  codes[1] = 1  # right after the first step (d_{t-1} just became nonzero)
  return codes


def _assert_skipped_faults(opts, wrap):
  params, xs, ys = _problem()
  codes = _fault_codes(seed=7)
  bad = codes != 0
  # The same batches with every faulty one moved to the end: the first n_good steps
  # see exactly the good batches, in order, with nothing in between.
  order = np.concatenate([np.flatnonzero(~bad), np.flatnonzero(bad)])
  n_good = int(np.sum(~bad))
  wrapped = {k: wrap(o) for k, o in opts.items()}
  faulty_final, faulty_traj = _run_all(wrapped, params, xs, ys, codes)
  clean_final, clean_traj = _run_all(wrapped, params, xs[order], ys[order], codes[order])
  for name in opts:
    traj = jax.tree.map(np.asarray, faulty_traj[name])
    for leaf in jax.tree.leaves(traj):
      assert np.all(np.isfinite(leaf)), f"{name}: α became non-finite"
      # A faulty step leaves α exactly where it was.
      idx = np.flatnonzero(bad)
      np.testing.assert_array_equal(leaf[idx], leaf[idx - 1], err_msg=name)
    good = jax.tree.map(lambda a: np.asarray(a)[~bad], faulty_traj[name])
    ref = jax.tree.map(lambda a: np.asarray(a)[:n_good], clean_traj[name])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=name), good, ref)
    # Final params and state: as if the faulty batches had never been seen.
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b, err_msg=name),
        _strip_counters(faulty_final[name]), _strip_counters(clean_final[name]),
    )
  return faulty_final


def _strip_counters(tree):
  """Drops `apply_if_finite`'s bookkeeping (it counts the faults, which differ by design)."""
  if isinstance(tree, optax.ApplyIfFiniteState):
    return tree.inner_state
  if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
    return tuple(map(_strip_counters, tree))
  return tree


def test_non_finite_gradients_are_skipped_exactly():
  _assert_skipped_faults(dict(_configs()), lambda o: o)


def test_non_finite_gradients_inside_apply_if_finite():
  # max_consecutive_errors=2 < the run of four consecutive faults: apply_if_finite then
  # forwards the non-finite update, and the hypergradient guard must still skip it.
  opts = dict(list(_configs())[::3])
  final = _assert_skipped_faults(opts, lambda o: optax.apply_if_finite(o, 2))
  for name in opts:
    params, state = final[name]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), name
    assert int(state.total_notfinite) == int(np.sum(_fault_codes(seed=7) != 0)), name


# ---------------------------------------------------------------------------------------
# An exploding hyper_lr.

_A = np.diag(np.linspace(0.5, 4.0, 6)).astype(np.float32)  # curvature 4: SGD stable iff α < 0.5


def _quadratic(p):
  return 0.5 * p @ _A @ p


BETAS = np.array([10.0, 1e3, 1e6], np.float32)


def _explode(make_opt, betas=BETAS, steps=300):
  """α and loss trajectories of `make_opt(β)` on the quadratic, for each β (one vmapped program)."""

  def run(beta):
    opt = make_opt(beta)

    def body(carry, _):
      p, s = carry
      u, s = opt.update(jax.grad(_quadratic)(p), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), (hyperoptax.get_learning_rate(s), _quadratic(p))

    p0 = jnp.ones(6, jnp.float32)
    return jax.lax.scan(body, (p0, opt.init(p0)), length=steps)[1]

  alphas, losses = jax.jit(jax.vmap(run))(jnp.asarray(betas))
  f0 = _quadratic(np.ones(6, np.float32))
  return np.asarray(alphas), np.concatenate([np.full((len(betas), 1), f0), losses], 1)


def _contained(losses):
  """Per β: finite losses that fell by 1000x."""
  return np.all(np.isfinite(losses), axis=1) & (losses[:, -1] < 1e-3 * losses[:, 0])


@pytest.mark.parametrize("rule", ["additive", "log"])
def test_exploding_hyper_lr_is_contained_by_bounds_only(rule):
  for bounded in (False, True):
    bounds = dict(min_learning_rate=1e-4, max_learning_rate=0.4) if bounded else {}
    alphas, losses = _explode(lambda b: hyperoptax.sgd_hd(0.01, b, rule=rule, **bounds))
    assert np.all(np.isfinite(alphas)), bounded  # the finite guard, always
    if rule == "log":
      assert np.all(alphas > 0), "the log rule must keep α > 0"
    if bounded:  # α within the stable range: converges whatever β
      assert np.all((alphas >= 1e-4) & (alphas <= 0.4))
      assert np.all(_contained(losses)), bounded
    else:  # not contained for some β: α overshoots the stable range (or goes negative)
      assert not np.all(_contained(losses))
      assert np.max(alphas) > 0.5 or np.min(alphas) < 0


def test_multiplicative_rule_contains_the_largest_allowed_hyper_lr():
  betas = np.array([0.5, 0.9, 0.99], np.float32)
  alphas, losses = _explode(lambda b: hyperoptax.sgd_hd(0.01, b, rule="multiplicative"), betas)
  assert np.all(np.isfinite(alphas)) and np.all(alphas > 0)
  # Per step α changes by a factor within [MIN_FACTOR, 1 + β]: it cannot explode.
  ratios = alphas[:, 1:] / alphas[:, :-1]
  assert np.all(ratios <= 1 + betas[:, None] + 1e-6) and np.all(ratios >= 1e-3 * (1 - 1e-6))
  assert np.all(_contained(losses))
  with pytest.raises(ValueError, match="hyper_lr"):
    hyperoptax.sgd_hd(0.01, 1.0, rule="multiplicative")


def test_log_rule_alpha_never_underflows_to_zero():
  """exp(log α + Δ) underflows for a huge negative Δ: α must stay > 0 (and log α finite)."""
  opt = hyperoptax.sgd_hd(1.0, 1e30, rule="log")
  p = jnp.ones(3)
  s = opt.init(p)
  for g in (jnp.ones(3), -jnp.ones(3), -jnp.ones(3)):  # g·d_{t-1} < 0: α shrinks hugely
    _, s = opt.update(g, s, p)
  alpha = float(s.learning_rate)
  assert 0 < alpha < 1e-30
  assert np.isfinite(np.log(alpha))


# ---------------------------------------------------------------------------------------
# Restarts and donation.

def _step_fn(opt):
  def step(params, state, x, y):
    u, state = opt.update(jax.grad(_loss)(params, x, y), state, params)
    return optax.apply_updates(params, u), state
  return step


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_checkpoint_restore_continues_bit_identically(tmp_path, granularity):
  params, xs, ys = _problem(1)
  opt = optax.chain(
      optax.clip_by_global_norm(10.0),
      hyperoptax.adam_hd(0.01, 1e-4, granularity=granularity),
  )
  step = jax.jit(_step_fn(opt))
  k = 7
  p, s = jax.tree.map(jnp.asarray, params), opt.init(params)
  trajectory = []
  for t in range(12):
    if t == k:  # checkpoint: host copies of everything, saved and loaded back
      host = jax.device_get((p, s))
      leaves, treedef = jax.tree.flatten(host)
      np.savez(tmp_path / "ckpt.npz", *leaves)
      saved_dtypes = [np.asarray(x).dtype for x in leaves]
    p, s = step(p, s, xs[t], ys[t])
    trajectory.append(jax.device_get((p, s)))
  with np.load(tmp_path / "ckpt.npz") as f:
    loaded = [f[f"arr_{i}"] for i in range(len(f.files))]
  assert [x.dtype for x in loaded] == saved_dtypes
  # Rebuild: the structure comes from a fresh `init` (as a restoring job would).
  _, fresh_treedef = jax.tree.flatten((params, opt.init(params)))
  assert fresh_treedef == treedef
  p, s = jax.tree.unflatten(fresh_treedef, [jnp.asarray(x) for x in loaded])
  for t in range(k, 12):
    p, s = step(p, s, xs[t], ys[t])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get((p, s)), trajectory[t])


def test_buffer_donation():
  params, xs, ys = _problem(2)
  opt = hyperoptax.adam_hd(0.01, 1e-4, granularity="element")
  plain = jax.jit(_step_fn(opt))
  donating = jax.jit(_step_fn(opt), donate_argnums=(0, 1))
  p_ref, s_ref = jax.tree.map(jnp.asarray, params), opt.init(params)
  p, s = jax.tree.map(jnp.array, params), opt.init(params)
  for t in range(5):
    p_ref, s_ref = plain(p_ref, s_ref, xs[t], ys[t])
    old = (p, s)
    p, s = donating(p, s, xs[t], ys[t])
    jax.tree.map(np.testing.assert_array_equal, (p, s), (p_ref, s_ref))
    # The donated params-sized buffers were consumed (reused for the outputs).
    assert all(x.is_deleted() for x in jax.tree.leaves(old[0]))
    assert all(x.is_deleted() for x in jax.tree.leaves(old[1].prev_direction))
