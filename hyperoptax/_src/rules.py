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
  """α0 laid out for `granularity`: a scalar, a scalar per leaf, or params-shaped."""
  if granularity == "global":
    dtype = lr_dtype(*(p.dtype for p in jax.tree.leaves(params)))
    return jnp.asarray(learning_rate, dtype)
  if granularity == "leaf":
    return jax.tree.map(lambda p: jnp.asarray(learning_rate, lr_dtype(p.dtype)), params)
  return jax.tree.map(
      lambda p: jnp.full(jnp.shape(p), learning_rate, lr_dtype(p.dtype)), params
  )


def _group_sum(tree: Any, granularity: str, axis_name: Any, dtype: Any) -> Any:
  """Sums a params-shaped tree within each group; `psum` over `axis_name` if given."""
  if granularity == "element":
    return tree
  if granularity == "leaf":
    sums = jax.tree.map(jnp.sum, tree)
  else:
    sums = sum((jnp.sum(x) for x in jax.tree.leaves(tree)), jnp.zeros((), dtype))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def _products(a: Any, b: Any, like: Any) -> Any:
  """Element-wise `a * b` computed in the learning-rate dtype of each leaf of `like`."""
  return jax.tree.map(
      lambda x, y, l: x.astype(l.dtype) * y.astype(l.dtype), a, b, like
  )


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
  like = alpha if granularity != "global" else jax.tree.map(lambda _: alpha, grads)
  dtype = jax.tree.leaves(alpha)[0].dtype if jax.tree.leaves(alpha) else jnp.float32
  gd = _group_sum(_products(grads, prev_direction, like), granularity, axis_name, dtype)
  h = jax.tree.map(jnp.negative, gd)
  if rule == "additive":
    return h, h
  if rule == "log":
    return jax.tree.map(jnp.multiply, alpha, h), h
  gg = _group_sum(_products(grads, grads, like), granularity, axis_name, dtype)
  dd = _group_sum(_products(prev_direction, prev_direction, like), granularity, axis_name, dtype)

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
        lambda a, z, u: jnp.exp(z + u).astype(a.dtype), alpha, hyper_params, hyper_updates
    )
  return jax.tree.map(
      lambda a, u: a * jnp.maximum(1 + u, MIN_FACTOR).astype(a.dtype), alpha, hyper_updates
  )


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
