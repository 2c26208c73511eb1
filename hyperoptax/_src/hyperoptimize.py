"""Any hyperparameter of any Optax optimizer, learned online by hypergradients; stacking.

`hyperoptimize(optax.adam, hyper_optimizer=optax.sgd(1e-3), learn=("learning_rate", "b1"),
learning_rate=1e-3, b1=0.9)` trains the params with Adam while α and β1 move by the
greedy one-step hypergradient, each step, with no second training run.

References:
  Chandra, Xie, Ragan-Kelley, Meijer. "Gradient Descent: The Ultimate Optimizer."
  NeurIPS 2022. https://arxiv.org/abs/1909.13371
  Baydin, Cornish, Martínez Rubio, Schmidt, Wood. "Online Learning Rate Adaptation
  with Hypergradient Descent." ICLR 2018. https://arxiv.org/abs/1703.04782
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperoptax._src import checks, rules
from hyperoptax._src.hypergradient import (
    HypergradientState,
    find_outermost,
    register_learning_rate_state,
)

CONSTRAINTS = ("log", "logit", None)

# How each hyperparameter is learned unless `constraints` says otherwise: positive ones
# in log space, those in (0, 1) in logit space, any other as is.
DEFAULT_CONSTRAINTS: dict[str, str | None] = {
    "learning_rate": "log",
    "eps": "log",
    "weight_decay": "log",
    "b1": "logit",
    "b2": "logit",
    "momentum": "logit",
    "decay": "logit",
}


class HyperoptimizeState(NamedTuple):
  """State of `hyperoptimize`.

  Attributes:
    hyperparams: the current learned values λ (constrained space), a dict from name
      to a scalar; float32, or float64 for float64 params under x64.
    unconstrained: the same values in the space the hyper-optimizer moves,
      `z = log λ`, `logit λ` or `λ` per constraint.
    hyper_state: the hyper-optimizer's state (its params are `unconstrained`).
    inner_state: the `optax.inject_hyperparams` state of the inner optimizer.
    tangents: for each learned name, `∂u_{t-1}/∂z`: the tangent of the previous
      update with respect to that unconstrained value (params-shaped, zeros
      before the first step).
  """

  hyperparams: dict[str, jax.Array]
  unconstrained: dict[str, jax.Array]
  hyper_state: optax.OptState
  inner_state: optax.OptState
  tangents: dict[str, optax.Updates]


def hyperoptimize(
    optimizer: Callable[..., optax.GradientTransformation],
    *,
    hyper_optimizer: optax.GradientTransformation,
    learn: str | Sequence[str] | None = None,
    constraints: Mapping[str, str | None] | None = None,
    **hyperparams: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""Learns hyperparameters of an Optax optimizer online by hypergradient descent.

  The params move by the inner optimizer `optimizer(**hyperparams)`; the learned
  hyperparameters λ (names in `learn`) move by `hyper_optimizer` on the greedy
  one-step hypergradient (Baydin et al., 2018; Chandra et al., 2022). With
  `u_{t-1}(λ)` the previous update and the inner optimizer's state before that step
  held constant,

  .. math::

    \frac{\partial f(\theta_{t-1})}{\partial z}
      = \nabla f(\theta_{t-1}) \cdot \frac{\partial u_{t-1}}{\partial z}
      = g_t \cdot \frac{\partial u_{t-1}}{\partial z},
    \qquad \lambda = c(z),

  summed over all leaves, where `c` is the constraint: `exp` (`"log"`, λ > 0),
  the logistic sigmoid (`"logit"`, λ ∈ (0, 1)) or the identity (`None`). Each step:

  1. feed `g_t · ∂u_{t-1}/∂z` to `hyper_optimizer` as the gradient of `z` and add its
     update to `z` (zero at the first step, where the tangents are zero);
  2. run the inner step with `λ = c(z)` and, in the same pass, the tangents
     `∂u_t/∂z_i` by `jax.linearize` through the inner update (one primal), its linear
     map applied to each of the k unit directions (k tangents; applied one by one,
     which XLA fuses better on CPU than a vmap over them); store them for the next step.

  For SGD and the learning rate, `∂u_{t-1}/∂α = -g_{t-1}`, so with
  `constraints={"learning_rate": None}` and `hyper_optimizer=optax.sgd(β)` this is
  exactly SGD-HD, `α_t = α_{t-1} + β g_t·g_{t-1}`; with `optax.adam` it is Adam-HD.
  For β1 of Adam the tangent is that of `m̂_t / (√v̂_t + ε)` through
  `m_t = β1 m_{t-1} + (1 - β1) g_t` and the bias correction, with `m_{t-1}` fixed.

  **Stacking is composition**: `hyper_optimizer` is any Optax transform of the dict
  `z`, so it may itself be `hyperoptimize(...)` or a hyperoptax alias, which then
  learns its own hyperparameters from the hypergradient it is fed. Adam/Adam/SGD::

    hyperoptimize(optax.adam, learning_rate=1e-3, learn=("learning_rate", "b1", "b2"),
        hyper_optimizer=hyperoptimize(optax.adam, learning_rate=1e-2,
            hyper_optimizer=optax.sgd(1e-4)))

  Constraints (`constraints` overrides these per name): `learning_rate`, `eps`,
  `weight_decay` are learned in log space; `b1`, `b2`, `momentum`, `decay` in logit
  space; any other name as is. `z` is clipped so that `c(z)` stays representable
  strictly inside the domain (e.g. β1 < 1 in float32). Learning `learning_rate` in log
  space with `optax.sgd(β)` moves `log α` by `β α g·d`, a much smaller step than the
  paper's additive rule for small α: use an adaptive hyper-optimizer (e.g.
  `optax.adam`) in log space, or `constraints={"learning_rate": None}`.

  Finite guard: if the hypergradient (so the gradient) is not finite, the step is
  skipped: zero update, the whole state kept. If only the new λ is not finite, λ and
  the hyper-optimizer state are kept and the step uses the previous λ. A non-finite
  tangent entry is stored as 0: it arises as `0 · ∞` where the true derivative is 0,
  e.g. `∂u/∂β2` of Adam at a coordinate whose gradient is exactly zero (`√v̂` at 0).

  Memory: k params-shaped tangents (one per learned name) beyond the inner
  optimizer's own state, plus the hyper-optimizer's state on k scalars; e.g. Adam
  with α, β1, β2 learned holds 2 + 3 = 5 params-sized buffers against Adam's 2.

  Args:
    optimizer: an Optax factory (`optax.adam`, `optax.sgd`, ... or a user function
      with named numeric arguments) that `optax.inject_hyperparams` can wrap.
    hyper_optimizer: the Optax transform that moves the unconstrained learned values
      (a dict from name to scalar); may be another hyperoptax transform.
    learn: the names to learn (default `("learning_rate",)`); the others stay fixed.
    constraints: name → `"log"`, `"logit"` or `None`, overriding the defaults above.
    **hyperparams: the arguments of `optimizer`: initial values of the learned ones
      (a learned name left out takes the factory's default) and the fixed ones. A
      fixed callable is a schedule of the step count (as in `inject_hyperparams`) when
      its parameter has no default or a numeric one, else passed as is (e.g. `mask`).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `HyperoptimizeState`.

  Raises:
    ValueError: for an unknown name in `learn` or `constraints`, a learned value that
      is not a real number or lies outside its constraint's domain, a constraint not in
      `("log", "logit", None)`, a non-transform `hyper_optimizer`, or an `optimizer`
      that `optax.inject_hyperparams` cannot wrap.
  """
  names = _check_learn(learn)
  signature = _check_optimizer(optimizer)
  initial = _initial_values(optimizer, signature, names, hyperparams)
  kinds = _check_constraints(constraints, names, initial)
  if not isinstance(hyper_optimizer, optax.GradientTransformation):
    raise ValueError(
        f"`hyper_optimizer` must be an optax.GradientTransformation, got {hyper_optimizer!r}."
    )
  _probe_optimizer(optimizer, hyperparams, initial)

  # inject_hyperparams keeps only numeric values (int, float, arrays) in its state; a
  # learned value must be one of them to be replaced there.
  fixed = {k: v for k, v in hyperparams.items() if k not in names}
  inner = optax.inject_hyperparams(optimizer, static_args=_static_callables(signature, fixed))(
      **fixed, **{n: _as_array(initial[n]) for n in names}
  )
  hyper_optimizer = optax.with_extra_args_support(hyper_optimizer)

  def constrain(z: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {n: _constrain(kinds[n], z[n]) for n in names}

  def init_fn(params: optax.Params) -> HyperoptimizeState:
    dtype = rules.lr_dtype(*(p.dtype for p in jax.tree.leaves(params)))
    lam = {n: jnp.asarray(initial[n], dtype) for n in names}
    raw = {n: _unconstrain(kinds[n], lam[n]) for n in names}
    z = {n: _clip(kinds[n], raw[n]) for n in names}
    lam = {n: jnp.where(z[n] == raw[n], lam[n], _constrain(kinds[n], z[n])) for n in names}
    inner_state = inner.init(params)
    inner_state = inner_state._replace(hyperparams={**inner_state.hyperparams, **lam})
    zeros = optax.tree.zeros_like(params)
    return HyperoptimizeState(
        hyperparams=lam,
        unconstrained=z,
        hyper_state=hyper_optimizer.init(z),
        inner_state=inner_state,
        tangents={n: zeros for n in names},
    )

  def update_fn(
      updates: optax.Updates,
      state: HyperoptimizeState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, HyperoptimizeState]:
    z = state.unconstrained
    # 1. The hypergradient g_t · ∂u_{t-1}/∂z_i, and the hyper-step on z.
    h = {n: rules.tree_dot(updates, state.tangents[n], z[n].dtype) for n in names}

    def hyper_step(operand):
      z, lam, hyper_state, h = operand
      dz, new_hyper_state = hyper_optimizer.update(h, hyper_state, z)
      new_z = {n: _clip(kinds[n], z[n] + dz[n].astype(z[n].dtype)) for n in names}
      new_lam = constrain(new_z)
      z, lam, hyper_state = rules.choose(
          rules.all_finite(new_lam), (new_z, new_lam, new_hyper_state), (z, lam, hyper_state)
      )
      return z, lam, hyper_state, jnp.asarray(True)

    def skip(operand):
      z, lam, hyper_state, _ = operand
      return z, lam, hyper_state, jnp.asarray(False)

    # `lax.cond`, not `where`, so that XLA does not fuse the all-leaves sums into every
    # leaf's kernel (see `rules.choose`).
    z, lam, hyper_state, grads_ok = jax.lax.cond(
        rules.all_finite(h), hyper_step, skip, (z, state.hyperparams, state.hyper_state, h)
    )

    # 2. The inner step at λ = c(z), and its tangents w.r.t. z, the inner state fixed;
    # run only on a finite gradient (a conditional, not a `where` between new and old
    # state, so that donated moments are updated in place: see `hypergradient`).
    def inner_update(z_):
      inner_state = state.inner_state._replace(
          hyperparams={**state.inner_state.hyperparams, **constrain(z_)}
      )
      return inner.update(updates, inner_state, params, **extra_args)

    def inner_step(z):
      new_updates, linear, inner_state = jax.linearize(inner_update, z, has_aux=True)
      tangents = {
          n: jax.tree.map(
              lambda t, old: _finite_or_zero(t).astype(old.dtype),
              linear({m: jnp.asarray(m == n, z[m].dtype) for m in names}),
              state.tangents[n],
          )
          for n in names
      }
      new_updates = jax.tree.map(lambda u, g: u.astype(g.dtype), new_updates, updates)
      return new_updates, inner_state, tangents

    def keep(z):
      return optax.tree.zeros_like(updates), state.inner_state, state.tangents

    new_updates, inner_state, tangents = jax.lax.cond(grads_ok, inner_step, keep, z)
    return new_updates, HyperoptimizeState(lam, z, hyper_state, inner_state, tangents)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_hyperparams(state: optax.OptState) -> dict[str, jax.Array]:
  """Returns the learned hyperparameters of the outermost hyperoptax transform in `state`.

  Works through `optax.chain` and any other pytree. In a stack, the values learned by
  the hyper-optimizer (e.g. its own learning rate) belong to the outer transform's
  `hyper_state` and are not returned; call this on that sub-state to read them. For a
  `hypergradient` transform the dict is `{"learning_rate": α}`.

  Args:
    state: an optimizer state (or any pytree containing one).

  Returns:
    A dict from name to the current value λ (constrained space).

  Raises:
    ValueError: if the state holds no hyperoptax transform, or more than one.
  """
  found = find_outermost(state, (HyperoptimizeState, HypergradientState), "get_hyperparams")
  if isinstance(found, HypergradientState):
    return {"learning_rate": found.learning_rate}
  return dict(found.hyperparams)


def _learning_rate(state: HyperoptimizeState) -> jax.Array:
  if "learning_rate" not in state.hyperparams:
    raise ValueError(
        f"This hyperoptimize transform does not learn `learning_rate` (it learns "
        f"{sorted(state.hyperparams)}); use hyperoptax.get_hyperparams."
    )
  return state.hyperparams["learning_rate"]


register_learning_rate_state(HyperoptimizeState, _learning_rate)


# ---------------------------------------------------------------------------------------
# Constraints: λ = c(z).


def _constrain(kind: str | None, z: jax.Array) -> jax.Array:
  if kind == "log":
    return jnp.exp(z)
  if kind == "logit":
    return jax.nn.sigmoid(z)
  return z


def _unconstrain(kind: str | None, lam: jax.Array) -> jax.Array:
  if kind == "log":
    return jnp.log(lam)
  if kind == "logit":
    return jnp.log(lam) - jnp.log1p(-lam)
  return lam


def _clip(kind: str | None, z: jax.Array) -> jax.Array:
  """Keeps `c(z)` finite and strictly inside its domain in z's dtype."""
  if kind is None:
    return z
  info = jnp.finfo(z.dtype)
  if kind == "log":
    low, high = math.log(float(info.tiny)) + 1.0, math.log(float(info.max)) - 1.0
  else:
    high = -math.log(float(info.eps)) - 1.0
    low = -high
  return jnp.clip(z, low, high)


def _finite_or_zero(tangent: jax.Array) -> jax.Array:
  """A non-finite tangent entry is `0 · ∞`: e.g. Adam's `√v̂` at a zero gradient (u = 0)."""
  return jnp.where(jnp.isfinite(tangent), tangent, 0)


def _static_callables(signature: inspect.Signature, fixed: dict[str, Any]) -> tuple[str, ...]:
  """Fixed callable arguments that are not schedules, e.g. `mask` of `optax.adamw`.

  `inject_hyperparams` calls every callable argument with the step count unless told
  otherwise. Here a callable is a schedule when its parameter has no default or a
  numeric one (`learning_rate`, `weight_decay`, ...), and static otherwise (`mask=None`).
  """
  static = []
  for name, value in fixed.items():
    param = signature.parameters.get(name)
    if callable(value) and param is not None and param.default is not param.empty:
      if param.default is None or not isinstance(param.default, (int, float)):
        static.append(name)
  return tuple(static)


def _as_array(value: Any) -> Any:
  """A learned initial value as something `inject_hyperparams` treats as numeric."""
  return value if isinstance(value, jax.Array) else np.asarray(value, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Validation at construction.


def _check_learn(learn: Any) -> tuple[str, ...]:
  if learn is None:
    return ("learning_rate",)
  if isinstance(learn, str):
    learn = (learn,)
  try:
    names = tuple(learn)
  except TypeError:
    raise ValueError(f"`learn` must be a name or a sequence of names, got {learn!r}.") from None
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError(f"`learn` must be a non-empty sequence of names, got {learn!r}.")
  if len(set(names)) != len(names):
    raise ValueError(f"`learn` has repeated names: {names}.")
  return names


def _check_optimizer(optimizer: Any) -> inspect.Signature:
  if not callable(optimizer) or isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
        f"`optimizer` must be an Optax factory such as optax.adam (a function returning a "
        f"GradientTransformation), got {optimizer!r}."
    )
  try:
    return inspect.signature(optimizer)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"`optimizer` {optimizer!r} cannot be wrapped by optax.inject_hyperparams: its "
        f"signature cannot be read ({e})."
    ) from None


def _initial_values(
    optimizer: Any, signature: inspect.Signature, names: tuple[str, ...], hyperparams: dict
) -> dict[str, Any]:
  """The initial value of each learned name, checked to be a real scalar."""
  params = signature.parameters
  var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
  for name in list(hyperparams) + list(names):
    if name not in params and not var_kw:
      arg = "learn" if name in names and name not in hyperparams else "hyperparams"
      raise ValueError(
          f"`{arg}`: {optimizer.__name__ if hasattr(optimizer, '__name__') else optimizer} "
          f"has no hyperparameter {name!r}; its arguments are {list(params)}."
      )
  initial = {}
  for name in names:
    if name in hyperparams:
      value = hyperparams[name]
    elif name in params and params[name].default is not inspect.Parameter.empty:
      value = params[name].default
    else:
      raise ValueError(f"`{name}` is learned but has no initial value: pass {name}=<number>.")
    if value is None or callable(value) or isinstance(value, str):
      raise ValueError(
          f"`{name}` is learned, so it must be a real number (its initial value), got "
          f"{value!r}."
      )
    checks.check_number(name, value)
    initial[name] = value
  return initial


def _check_constraints(
    constraints: Any, names: tuple[str, ...], initial: dict[str, Any]
) -> dict[str, str | None]:
  constraints = {} if constraints is None else constraints
  if not isinstance(constraints, Mapping):
    raise ValueError(f"`constraints` must be a mapping from name to kind, got {constraints!r}.")
  for name, kind in constraints.items():
    if name not in names:
      raise ValueError(
          f"`constraints` names {name!r}, which is not learned (learn={names})."
      )
    if kind not in CONSTRAINTS:
      raise ValueError(
          f"`constraints[{name!r}]` must be one of {CONSTRAINTS}, got {kind!r}."
      )
  kinds = {n: constraints.get(n, DEFAULT_CONSTRAINTS.get(n)) for n in names}
  for name, kind in kinds.items():
    if kind == "log":
      checks.check_number(name, initial[name], lower=0.0, lower_open=True)
    elif kind == "logit":
      checks.check_number(
          name, initial[name], lower=0.0, upper=1.0, lower_open=True, upper_open=True
      )
  return kinds


_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _probe_optimizer(optimizer: Any, hyperparams: dict, initial: dict) -> None:
  """Checks that `optimizer` builds a transform and accepts traced learned values."""
  try:
    tx = optimizer(**{**hyperparams, **initial})
  except Exception as e:  # noqa: BLE001 - reported as the ValueError below.
    raise ValueError(f"`optimizer` failed to build with the given hyperparameters: {e!r}") from e
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(
        f"`optimizer` must return an optax.GradientTransformation, got {type(tx).__name__}; "
        f"optax.inject_hyperparams cannot wrap it."
    )
  if any(checks.is_traced(v) for v in (*hyperparams.values(), *initial.values())):
    return

  def step(values):
    tx = optax.with_extra_args_support(optimizer(**{**hyperparams, **values}))
    p = jnp.ones((2,), jnp.float32)
    return tx.update(p, tx.init(p), p)[0]

  try:
    jax.eval_shape(step, {n: jnp.asarray(v, jnp.float32) for n, v in initial.items()})
  except _TRACER_ERRORS as e:
    raise ValueError(
        f"`optimizer` cannot be wrapped by optax.inject_hyperparams: it uses a learned "
        f"hyperparameter as a Python value, which fails for a traced one ({type(e).__name__})."
    ) from e
  except Exception:  # noqa: BLE001 - a toy params vector may not suit every optimizer;
    pass  # the real `init`/`update` will report such errors.
