"""How a hypergradient moves the learning rate: rules, granularity, bounds, finite guard.

Notation (see `hypergradient`): `g_t` is the incoming gradient, `d_{t-1}` the
optimizer's previous unscaled direction, so the previous update was
`u_{t-1} = -α d_{t-1}` and the one-step hypergradient is

    h_t = ∂f(θ_{t-1})/∂α = g_t · ∂u_{t-1}/∂α = -g_t · d_{t-1}.

The dot product runs over a *group* of coordinates that share one α: all of them
(`"global"`), one pytree leaf (`"leaf"`), or one coordinate (`"element"`).

A rule turns `h` into the gradient that the hyper-optimizer sees, and its update
back into a new α:

| rule             | hyper-optimizer acts on | gradient it receives                      | new α                    |
|------------------|-------------------------|-------------------------------------------|--------------------------|
| `additive`       | α                       | `h`                                       | `α + Δ`                  |
| `log`            | `log α`                 | `∂f/∂log α = α h`                         | `exp(log α + Δ)`         |
| `multiplicative` | α (relative step)       | `cos(g_t, ∂u_{t-1}/∂α)` over the group    | `α · max(1 + Δ, 1e-3)`   |

With `optax.sgd(β)` as hyper-optimizer (`Δ = -β · gradient`) these are the paper's
`α ← α - β h`, gradient descent on `log α`, and `α ← α (1 - β cos(g_t, ∂u_{t-1}/∂α))`.
For a single coordinate the cosine is `sign(-g_i d_i)`, so `"element"` with the
multiplicative rule moves each α_i by the factor `1 ± β` by the sign agreement of
successive gradients (the per-coordinate rule of delta-bar-delta / Rprop).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

RULES = ("additive", "multiplicative", "log")
GRANULARITIES = ("global", "leaf", "element")

# Default hyper-learning rates of the scale-free rules (the additive rule's depends on
# the optimizer, so each alias documents its own).
DEFAULT_HYPER_LR = {"multiplicative": 0.02, "log": 0.01}

# The multiplicative rule never shrinks α by more than this factor in one step, so α
# keeps its sign whatever the hyper-optimizer proposes.
MIN_FACTOR = 1e-3


def lr_dtype(*dtypes: Any) -> jnp.dtype:
  """The learning-rate dtype: at least float32, float64 for float64 params under x64."""
  return jnp.result_type(jnp.float32, *dtypes)


def init_learning_rate(learning_rate: Any, params: Any, granularity: str) -> Any:
  """α0 laid out for `granularity`: a scalar, a scalar per leaf, or params-shaped.

  Outside `jit`, α is placed where the params are (replicated on their mesh, or
  sharded like them for `"element"`) rather than on the default device, so a
  sharded training step does not gather it to one device or recompile at step 2.
  """
  if granularity == "global":
    leaves = jax.tree.leaves(params)
    alpha = jnp.asarray(learning_rate, lr_dtype(*(p.dtype for p in leaves)))
    return _replicated_like(alpha, leaves[0]) if leaves else alpha
  if granularity == "leaf":
    return jax.tree.map(
        lambda p: _replicated_like(jnp.asarray(learning_rate, lr_dtype(p.dtype)), p), params
    )
  return jax.tree.map(lambda p: jnp.full_like(p, learning_rate, lr_dtype(p.dtype)), params)


def _replicated_like(scalar: jax.Array, ref: Any) -> jax.Array:
  """`scalar` replicated on the devices of `ref` when `ref` is a concrete placed array."""
  if isinstance(ref, jax.core.Tracer) or not isinstance(ref, jax.Array):
    return scalar
  sharding = ref.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.device_put(
        scalar, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    )
  if isinstance(sharding, jax.sharding.SingleDeviceSharding) and ref.committed:
    return jax.device_put(scalar, sharding)
  return scalar


def leaf_dot(x: jax.Array, y: jax.Array, dtype: Any) -> jax.Array:
  """`x · y` over all elements of two arrays, accumulated in `dtype`."""
  return jnp.dot(jnp.ravel(x), jnp.ravel(y), preferred_element_type=dtype).astype(dtype)


def tree_dot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """`a · b` over all leaves of two same-structured pytrees, accumulated in `dtype`."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return sum((leaf_dot(x, y, dtype) for x, y in pairs), jnp.zeros((), dtype))


def _group_dot(a: Any, b: Any, alpha: Any, granularity: str, axis_name: Any) -> Any:
  """`a · b` within each group (the element-wise product for `"element"`).

  Computed in α's dtype (at least float32, so bf16 gradients accumulate in float32);
  `psum`-med over `axis_name` if given.
  """
  if granularity == "element":
    dots = jax.tree.map(
        lambda x, y, lr: x.astype(lr.dtype) * y.astype(lr.dtype), a, b, alpha
    )
  elif granularity == "leaf":
    dots = jax.tree.map(lambda x, y, lr: leaf_dot(x, y, lr.dtype), a, b, alpha)
  else:
    dots = tree_dot(a, b, alpha.dtype)
  if axis_name is not None and granularity != "element":
    dots = jax.lax.psum(dots, axis_name)
  return dots


def hypergradient_signal(
    rule: str,
    grads: Any,
    prev_direction: Any,
    alpha: Any,
    granularity: str,
    axis_name: Any = None,
) -> tuple[Any, Any]:
  """Returns `(signal, h)`: what the hyper-optimizer sees, and the raw hypergradient.

  Args:
    rule: one of `RULES`.
    grads: the gradient `g_t`.
    prev_direction: `d_{t-1}`, zeros at the first step (so `h = 0` there).
    alpha: the current learning rate, laid out for `granularity`.
    granularity: one of `GRANULARITIES`.
    axis_name: a mapped axis to sum the group reductions over (sharded params).
  """
  h = jax.tree.map(
      jnp.negative, _group_dot(grads, prev_direction, alpha, granularity, axis_name)
  )
  if rule == "additive":
    return h, h
  if rule == "log":
    return jax.tree.map(jnp.multiply, alpha, h), h
  gg = _group_dot(grads, grads, alpha, granularity, axis_name)
  dd = _group_dot(prev_direction, prev_direction, alpha, granularity, axis_name)

  def cosine(h_, gg_, dd_):
    den = jnp.sqrt(gg_) * jnp.sqrt(dd_)
    safe = jnp.where(den > 0, den, 1)
    return jnp.where(den > 0, h_ / safe, jnp.zeros_like(h_))

  return jax.tree.map(cosine, h, gg, dd), h


def to_hyper_space(rule: str, alpha: Any) -> Any:
  """The variable the hyper-optimizer moves: `log α` for the log rule, else α."""
  return jax.tree.map(jnp.log, alpha) if rule == "log" else alpha


def apply_rule(rule: str, alpha: Any, hyper_params: Any, hyper_updates: Any) -> Any:
  """The new α from the hyper-optimizer's update `Δ` (see the module table)."""
  if rule == "additive":
    return jax.tree.map(lambda a, u: a + u.astype(a.dtype), alpha, hyper_updates)
  if rule == "log":
    return jax.tree.map(
        lambda a, z, u: _no_underflow(jnp.exp(z + u).astype(a.dtype), a),
        alpha, hyper_params, hyper_updates,
    )
  return jax.tree.map(
      lambda a, u: _no_underflow(a * jnp.maximum(1 + u, MIN_FACTOR).astype(a.dtype), a),
      alpha, hyper_updates,
  )


def _no_underflow(new: jax.Array, old: jax.Array) -> jax.Array:
  """Keeps a nonzero α nonzero: an underflow to 0 becomes the smallest normal, old's sign.

  The sign-keeping rules could otherwise shrink α to exactly 0 (`exp` of a very
  negative log α, or many `MIN_FACTOR` steps), where it would stay forever (`log 0`,
  `0 · factor`) instead of growing back when the hypergradient turns.
  """
  tiny = jnp.finfo(new.dtype).tiny
  return jnp.where((new == 0) & (old != 0), jnp.copysign(jnp.asarray(tiny, new.dtype), old), new)


def clip_learning_rate(alpha: Any, minimum: Any, maximum: Any) -> Any:
  """Clips α into `[minimum, maximum]` (either may be `None`)."""
  if minimum is None and maximum is None:
    return alpha
  return jax.tree.map(lambda a: jnp.clip(a, minimum, maximum).astype(a.dtype), alpha)


def all_finite(tree: Any) -> jax.Array:
  """One boolean: every element of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """`jnp.where(pred, a, b)` leaf by leaf, with a scalar predicate."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def choose(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """`on_true` if the scalar `pred` else `on_false`, through `lax.cond`.

  A conditional is a boundary XLA does not fuse across. A value reduced over all
  leaves (the global hypergradient, an all-leaves finiteness flag) and consumed by
  every leaf's update would otherwise be recomputed inside each leaf's fused kernel,
  which makes compile time grow with the square of the number of leaves.
  """
  return jax.lax.cond(pred, lambda: on_true, lambda: on_false)
