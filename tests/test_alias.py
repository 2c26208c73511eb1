"""Each alias is its Optax direction under `hypergradient`, and its Optax optimizer at β = 0.

For every alias one jitted program runs, side by side on the same problem:
  * the alias with a β large enough to move α, and `hypergradient(<optax direction>)` with
    the same α0, β and options: equal trajectories (the alias adds no math of its own);
  * the alias with `hyper_lr=0` and the plain Optax optimizer: equal trajectories to float
    tolerance, and α never moves;
  * the alias with its defaults and the alias with the documented defaults spelled out.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax as hx

STEPS = 30
CURV = {"w": jnp.linspace(0.5, 3.0, 12).reshape(3, 4), "b": jnp.array([0.2, 1.0, 5.0])}
TARGET = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([1.0, -1.0, 0.5])}
PARAMS0 = {"w": jnp.full((3, 4), 0.3, jnp.float32), "b": jnp.zeros(3, jnp.float32)}


def loss(p):
  return sum(
      0.5 * jnp.sum(c * (x - t) ** 2)
      for x, c, t in zip(jax.tree.leaves(p), jax.tree.leaves(CURV), jax.tree.leaves(TARGET))
  )


def run_all(opts):
  """Runs every optimizer of the dict `opts` for STEPS steps inside one jitted scan."""

  def step(carry, _):
    out_carry, out = {}, {}
    for name, opt in opts.items():
      p, s = carry[name]
      u, s = opt.update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, u)
      out_carry[name] = (p, s)
      out[name] = (p, hx.get_learning_rate(s) if name != "optax" else jnp.zeros(()))
    return out_carry, out

  init = {name: (PARAMS0, opt.init(PARAMS0)) for name, opt in opts.items()}
  _, traj = jax.jit(lambda c: jax.lax.scan(step, c, length=STEPS))(init)
  return traj


# name: (alias, the Optax direction it should wrap, the plain Optax optimizer (α0 → tx),
#        α0, β, options forwarded to hypergradient, documented default α0 and β)
CASES = {
    "sgd": (hx.sgd_hd, optax.identity, optax.sgd, 0.05, 1e-2, {}, 1e-3, 1e-3),
    "sgd_momentum": (
        lambda *a, **k: hx.sgd_hd(*a, momentum=0.9, **k),
        lambda: optax.trace(0.9), lambda lr: optax.sgd(lr, momentum=0.9),
        0.01, 1e-3, {"granularity": "leaf"}, 1e-3, 1e-3,
    ),
    "sgd_nesterov": (
        lambda *a, **k: hx.sgd_hd(*a, momentum=0.9, nesterov=True, **k),
        lambda: optax.trace(0.9, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        0.01, 1e-3, {}, 1e-3, 1e-3,
    ),
    "adam": (hx.adam_hd, optax.scale_by_adam, optax.adam, 0.01, 1e-3, {}, 1e-3, 1e-7),
    "adamw": (
        lambda *a, **k: hx.adamw_hd(*a, weight_decay=0.1, **k),
        lambda: optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(0.1)),
        lambda lr: optax.adamw(lr, weight_decay=0.1),
        0.01, 1e-3, {"rule": "multiplicative"}, 1e-3, 1e-7,
    ),
    "nadam": (
        hx.nadam_hd, lambda: optax.scale_by_adam(nesterov=True), optax.nadam,
        0.01, 1e-3, {}, 1e-3, 1e-7,
    ),
    "rmsprop": (
        hx.rmsprop_hd, optax.scale_by_rms, optax.rmsprop, 0.01, 1e-3, {}, 1e-3, 1e-7,
    ),
    "rmsprop_centered_momentum": (
        lambda *a, **k: hx.rmsprop_hd(*a, centered=True, momentum=0.5, **k),
        lambda: optax.chain(optax.scale_by_stddev(), optax.trace(0.5)),
        lambda lr: optax.rmsprop(lr, centered=True, momentum=0.5),
        0.01, 1e-3, {"granularity": "element"}, 1e-3, 1e-7,
    ),
    "adagrad": (hx.adagrad_hd, optax.scale_by_rss, optax.adagrad, 0.1, 1e-2, {}, 1e-3, 1e-7),
    "lion": (
        hx.lion_hd,
        lambda: optax.chain(optax.scale_by_lion(), optax.add_decayed_weights(1e-3)),
        optax.lion, 1e-3, 1e-5, {"rule": "log", "hyper_lr": None,
                                 "hyper_optimizer": optax.adam(0.05)}, 1e-4, 1e-7,
    ),
    "adafactor": (
        lambda *a, **k: hx.adafactor_hd(*a, min_dim_size_to_factor=2, momentum=0.8, **k),
        lambda: optax.chain(
            optax.scale_by_factored_rms(min_dim_size_to_factor=2), optax.clip_by_block_rms(1.0),
            optax.scale_by_param_block_rms(), optax.ema(0.8, debias=False),
        ),
        lambda lr: optax.adafactor(lr, min_dim_size_to_factor=2, momentum=0.8),
        0.05, 1e-3, {}, 1e-2, 1e-7,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_alias_is_its_direction_and_its_optax_optimizer_at_zero_beta(name):
  alias, direction, plain, alpha0, beta, options, default_alpha0, default_beta = CASES[name]
  options = dict(options)
  if "hyper_lr" in options:  # a case that uses a hyper_optimizer instead of β
    beta = options.pop("hyper_lr")
  traj = run_all({
      "alias": alias(alpha0, beta, **options),
      "wrapper": hx.hypergradient(direction(), alpha0, beta, **options),
      "alias0": alias(alpha0, 0.0),
      "optax": plain(alpha0),
      "default": alias(),
      "explicit": alias(default_alpha0, default_beta),
  })

  def close(a, b, rtol, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)

  # 1. The alias is `hypergradient(direction)`, with the options forwarded.
  close(traj["alias"], traj["wrapper"], 1e-6, 1e-7)
  lrs = jax.tree.leaves(traj["alias"][1])
  assert any(not np.allclose(x[-1], alpha0, rtol=1e-3) for x in lrs), "α did not move"

  # 2. With β = 0 it is the Optax optimizer, and α is frozen at α0.
  close(traj["alias0"][0], traj["optax"][0], 1e-5, 1e-6)
  np.testing.assert_array_equal(traj["alias0"][1], np.float32(alpha0))
  moved = max(float(jnp.max(jnp.abs(x[-1] - x0))) for x, x0 in
              zip(jax.tree.leaves(traj["optax"][0]), jax.tree.leaves(PARAMS0)))
  assert moved > 10 * alpha0 * 1e-2  # the comparison is not between two frozen runs

  # 3. Leaving hyper_lr (and α0) out means the documented defaults.
  close(traj["default"], traj["explicit"], 0, 0)
  assert traj["default"][1][-1] != traj["default"][1][0] or default_beta < 1e-6


def test_log_rule_with_a_hyper_optimizer_needs_no_hyper_lr():
  # hyper_lr defaults to None, so giving only a hyper_optimizer is not "both".
  for alias in (hx.sgd_hd, hx.adam_hd, hx.adamw_hd, hx.nadam_hd, hx.rmsprop_hd,
                hx.adagrad_hd, hx.lion_hd, hx.adafactor_hd):
    opt = alias(1e-2, rule="log", hyper_optimizer=optax.adam(0.01))
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
  opt = hx.sgd_hd(1e-2, rule="log", hyper_optimizer=optax.adam(0.01))
  s = opt.init(PARAMS0)
  p = PARAMS0
  for _ in range(3):
    u, s = opt.update(jax.grad(loss)(p), s, p)
    p = optax.apply_updates(p, u)
  assert s.learning_rate != np.float32(1e-2) and s.learning_rate > 0
  with pytest.raises(ValueError, match="hyper_optimizer"):
    hx.adam_hd(1e-2, 1e-7, hyper_optimizer=optax.adam(0.01))


ALIASES = [hx.sgd_hd, hx.adam_hd, hx.adamw_hd, hx.nadam_hd, hx.rmsprop_hd, hx.adagrad_hd,
           hx.lion_hd, hx.adafactor_hd]


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: a.__name__)
def test_init_has_exactly_the_types_update_returns(alias):
  # The Optax convention behind "no recompilation under jit", lax.cond and MultiSteps:
  # same tree, shapes, dtypes and weak types — for every rule and granularity, with
  # float32 and bfloat16 params. Checked by abstract evaluation (nothing compiles).
  def avals(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)

  for dtype in (jnp.float32, jnp.bfloat16):
    params = jax.tree.map(lambda x: x.astype(dtype), PARAMS0)
    for rule in ("additive", "multiplicative", "log"):
      for granularity in ("global", "leaf", "element"):
        opt = alias(1e-2, rule=rule, granularity=granularity)
        state = jax.eval_shape(opt.init, params)
        updates, new_state = jax.eval_shape(opt.update, params, state, params)
        assert avals(new_state) == avals(state), (dtype, rule, granularity)
        assert avals(updates) == avals(params)
        lr = jax.tree.leaves(hx.get_learning_rate(state))
        assert all(x.dtype == jnp.float32 for x in lr)
