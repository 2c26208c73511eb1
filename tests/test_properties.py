"""Property tests (hypothesis) over random pytrees, gradients and hyperparameters.

* finiteness: finite gradients keep α and the updates finite, whatever β;
* sign: the positive rules (`"log"`, `"multiplicative"`) keep every α > 0;
* structure: `init` returns exactly what `update` returns (tree, shapes, dtypes);
* β = 0: each alias is its plain Optax optimizer, update for update.

Numeric hyperparameters go in as traced values, so examples with the same tree,
rule and granularity share one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperoptax

SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
SHAPES = ((), (3,), (2, 3))
DTYPES = (jnp.float32, jnp.bfloat16)


@st.composite
def pytrees(draw):
  """A dict of 1-3 leaves (nested once), each a shape from SHAPES and dtype from DTYPES."""
  n = draw(st.integers(1, 3))
  leaves = {f"l{i}": (draw(st.sampled_from(SHAPES)), draw(st.sampled_from(DTYPES)))
            for i in range(n)}
  nest = draw(st.booleans())
  return {"inner": leaves} if nest else leaves


def _values(spec, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s[0]), s[1]), spec,
      is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple),
  )


STEPS = 4


@functools.cache
def _runner(rule, granularity):
  """jit(α0, β, params, grads (STEPS stacked)) -> (init state, final state, updates)."""

  def run(alpha0, beta, params, grads):
    opt = hyperoptax.sgd_hd(alpha0, beta, rule=rule, granularity=granularity)
    state0 = opt.init(params)

    def body(state, g):
      updates, state = opt.update(g, state, params)
      return state, (updates, state.learning_rate)

    state, (updates, alphas) = jax.lax.scan(body, state0, grads)
    return state0, state, updates, alphas

  return jax.jit(run)


@SETTINGS
@given(
    spec=pytrees(),
    seed=st.integers(0, 2**16),
    rule=st.sampled_from(["additive", "log", "multiplicative"]),
    granularity=st.sampled_from(["global", "leaf", "element"]),
    alpha0=st.floats(1e-4, 1.0),
    log_beta=st.floats(-6, 2),
    grad_scale=st.floats(1e-3, 1e3),
)
def test_finite_sign_and_structure(spec, seed, rule, granularity, alpha0, log_beta, grad_scale):
  beta = min(10.0 ** log_beta, 0.99) if rule == "multiplicative" else 10.0**log_beta
  params = _values(spec, seed)
  grads = jax.tree.map(
      lambda *g: jnp.stack(g),
      *[_values(spec, seed + 1 + t, grad_scale) for t in range(STEPS)],
  )
  state0, state, updates, alphas = _runner(rule, granularity)(
      jnp.float32(alpha0), jnp.float32(beta), params, grads
  )
  # init returns exactly what update returns.
  sig = lambda t: (jax.tree.structure(t), [(x.shape, x.dtype) for x in jax.tree.leaves(t)])
  assert sig(state0) == sig(state)
  # Updates have the params' structure, shapes and dtypes (per step).
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.shape == (STEPS, *p.shape) and u.dtype == p.dtype
  for a in jax.tree.leaves(alphas):
    a = np.asarray(a)
    assert a.dtype == np.float32
    assert np.all(np.isfinite(a))
    if rule != "additive":  # the positive rules keep α > 0 from α0 > 0
      assert np.all(a > 0), (rule, a)
  # Updates are finite unless |α d| overflows the leaf's dtype (α is finite, d = g).
  for u, a_leaf in zip(jax.tree.leaves(updates), _alpha_per_leaf(alphas, params)):
    bound = np.max(np.abs(np.asarray(a_leaf, np.float64))) * grad_scale * 10
    if bound < float(jnp.finfo(u.dtype).max):
      assert np.all(np.isfinite(np.asarray(u, np.float32)))


def _alpha_per_leaf(alphas, params):
  if isinstance(alphas, jax.Array):  # global
    return [alphas] * len(jax.tree.leaves(params))
  return jax.tree.leaves(alphas)


@SETTINGS
@given(
    spec=pytrees(),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["sgd", "adam", "rmsprop", "adagrad", "nadam"]),
    granularity=st.sampled_from(["global", "leaf", "element"]),
    alpha=st.floats(1e-4, 0.5),
)
def test_beta_zero_is_the_plain_optax_optimizer(spec, seed, name, granularity, alpha):
  hd = getattr(hyperoptax, f"{name}_hd")(alpha, 0.0, granularity=granularity)
  plain = getattr(optax, name)(alpha)
  # float32 leaves only: Optax's own low-precision arithmetic differs in rounding order.
  spec = jax.tree.map(lambda s: (s[0], jnp.float32), spec,
                      is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple))
  params = _values(spec, seed)
  grads = [_values(spec, seed + 1 + t) for t in range(STEPS)]

  @jax.jit
  def run(params):
    s_hd, s_plain, out = hd.init(params), plain.init(params), []
    for g in grads:
      u_hd, s_hd = hd.update(g, s_hd, params)
      u_plain, s_plain = plain.update(g, s_plain, params)
      out.append((u_hd, u_plain))
    return out, hyperoptax.get_learning_rate(s_hd)

  out, final_alpha = run(params)
  for u_hd, u_plain in out:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7),
                 u_hd, u_plain)
  for a in jax.tree.leaves(final_alpha):
    np.testing.assert_array_equal(np.asarray(a), np.float32(alpha))
