"""The learning-rate hypergradient wrapper: the one place where α is learned.

References:
  Baydin, Cornish, Martínez Rubio, Schmidt, Wood. "Online Learning Rate Adaptation
  with Hypergradient Descent." ICLR 2018. https://arxiv.org/abs/1703.04782
  Almeida, Langlois, Amaral, Plakhov. "Parameter adaptation in stochastic
  optimization." On-line Learning in Neural Networks, 1998.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hyperoptax._src import checks, rules


class HypergradientState(NamedTuple):
  """State of `hypergradient`.

  Attributes:
    learning_rate: the current learned learning rate α_t: a scalar (`"global"`), a
      pytree of scalars (`"leaf"`) or a params-shaped pytree (`"element"`); float32
      for float32/bfloat16/float16 params, float64 for float64 params under x64.
    hyper_state: the hyper-optimizer's state (it moves α, or log α).
    direction_state: the wrapped direction transform's state.
    prev_direction: the previous unscaled direction d_{t-1} (zeros before step 1).
  """

  learning_rate: Any
  hyper_state: optax.OptState
  direction_state: optax.OptState
  prev_direction: optax.Updates


def hypergradient(
    direction: optax.GradientTransformation,
    learning_rate: float | jax.Array,
    hyper_lr: float | jax.Array | None = None,
    *,
    hyper_optimizer: optax.GradientTransformation | None = None,
    rule: str = "additive",
    granularity: str = "global",
    min_learning_rate: float | None = None,
    max_learning_rate: float | None = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales `direction` by a learning rate learned online by hypergradient descent.

  `direction` is any Optax transform that turns gradients into the *unscaled* descent
  direction `d_t` (e.g. `optax.scale_by_adam()`); the update is `u_t = -α_t d_t`.
  Before each step α moves by the greedy one-step hypergradient

  .. math::

    h_t = \frac{\partial f(\theta_{t-1})}{\partial \alpha}
        = \nabla f(\theta_{t-1}) \cdot \frac{\partial u_{t-1}}{\partial \alpha}
        = -g_t \cdot d_{t-1},

  and with the default `rule="additive"` and `hyper_lr=β` this is the paper's

  .. math::

    \alpha_t = \alpha_{t-1} - \beta h_t = \alpha_{t-1} + \beta\, g_t \cdot d_{t-1},
    \qquad \theta_t = \theta_{t-1} - \alpha_t d_t,

  one dot product over all leaves, `h_1 = 0` (Baydin et al., 2018, Alg. 1–3).

  Options (see `hyperoptax._src.rules` for the equations):

  * `granularity`: `"global"` (one α), `"leaf"` (one α per pytree leaf) or
    `"element"` (one α per coordinate); `h` is then a per-group dot product.
  * `rule`: `"additive"` (the paper), `"log"` (moves `log α` with `∂f/∂log α = α h`;
    α stays positive) or `"multiplicative"` (`α ← α (1 - β cos(g_t, ∂u_{t-1}/∂α))`,
    scale-free, keeps α's sign; per coordinate the cosine is a sign).
  * `hyper_optimizer`: any Optax transform that moves α (or `log α`) given the
    signal above; `hyper_lr=β` alone means `optax.sgd(β)`. It may itself be a
    hyperoptax transform, which learns β (stacking).
  * `min_learning_rate`/`max_learning_rate`: α is clipped after each update.
  * Finite guard: if `h` (so the gradient) is not finite, the step is skipped: the
    update is zero and the whole state is kept, as `optax.apply_if_finite` would.
    If only the proposed α is not finite (a hyper-optimizer that exploded), α and
    the hyper-optimizer state are kept and the step uses the previous α.
  * `axis_name`: under `shard_map`/`pmap` with params sharded over a mapped axis,
    the group sums are `psum`-med over it so that every device sees the global h.

  Memory: one params-shaped buffer (`d_{t-1}`) beyond the direction's own state,
  plus one more for `"element"` (α itself) and the hyper-optimizer's state on α.

  Args:
    direction: the Optax transform that produces the unscaled direction `d_t`.
    learning_rate: the initial learning rate α_0 (a number; may be traced).
    hyper_lr: the hypergradient step β, i.e. `hyper_optimizer=optax.sgd(β)`.
    hyper_optimizer: an Optax transform moving α; exclusive with `hyper_lr`.
    rule: `"additive"`, `"multiplicative"` or `"log"`.
    granularity: `"global"`, `"leaf"` or `"element"`.
    min_learning_rate: optional lower bound on α.
    max_learning_rate: optional upper bound on α.
    axis_name: optional mapped axis name(s) for the `psum` of the dot products.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `HypergradientState`.

  Raises:
    ValueError: on an invalid argument, naming it.
  """
  checks.check_choice("rule", rule, rules.RULES)
  checks.check_choice("granularity", granularity, rules.GRANULARITIES)
  checks.check_number("learning_rate", learning_rate)
  if hyper_lr is not None and hyper_optimizer is not None:
    raise ValueError("Pass either `hyper_lr` or `hyper_optimizer`, not both.")
  if hyper_optimizer is None:
    if hyper_lr is None:
      raise ValueError("`hyper_lr` is required when no `hyper_optimizer` is given.")
    checks.check_number(
        "hyper_lr", hyper_lr, lower=0.0,
        upper=1.0 if rule == "multiplicative" else None, upper_open=True,
    )
    hyper_optimizer = optax.sgd(hyper_lr)
  elif not isinstance(hyper_optimizer, optax.GradientTransformation):
    raise ValueError(
        f"`hyper_optimizer` must be an optax.GradientTransformation, got {hyper_optimizer!r}."
    )
  if not isinstance(direction, optax.GradientTransformation):
    raise ValueError(f"`direction` must be an optax.GradientTransformation, got {direction!r}.")
  lower = 0.0 if rule == "log" else None
  checks.check_number(
      "min_learning_rate", min_learning_rate, allow_none=True, lower=lower, lower_open=True
  )
  checks.check_number("max_learning_rate", max_learning_rate, allow_none=True)
  if (
      min_learning_rate is not None and max_learning_rate is not None
      and not checks.is_traced(min_learning_rate) and not checks.is_traced(max_learning_rate)
      and min_learning_rate > max_learning_rate
  ):
    raise ValueError(
        f"`min_learning_rate` ({min_learning_rate}) must be <= `max_learning_rate` "
        f"({max_learning_rate})."
    )
  if rule == "log" and not checks.is_traced(learning_rate) and learning_rate <= 0:
    raise ValueError(f"`learning_rate` must be > 0 for rule='log', got {learning_rate}.")
  if rule == "multiplicative" and not checks.is_traced(learning_rate) and learning_rate == 0:
    raise ValueError("`learning_rate` must be nonzero for rule='multiplicative' (0 stays 0).")

  direction = optax.with_extra_args_support(direction)
  hyper_optimizer = optax.with_extra_args_support(hyper_optimizer)

  def init_fn(params: optax.Params) -> HypergradientState:
    params = checks.as_arrays(params)
    checks.check_params(params)
    alpha = rules.init_learning_rate(learning_rate, params, granularity)
    alpha = rules.clip_learning_rate(alpha, min_learning_rate, max_learning_rate)
    return HypergradientState(
        learning_rate=alpha,
        hyper_state=hyper_optimizer.init(rules.to_hyper_space(rule, alpha)),
        direction_state=direction.init(params),
        prev_direction=optax.tree.zeros_like(params),
    )

  def update_fn(
      updates: optax.Updates,
      state: HypergradientState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, HypergradientState]:
    updates = checks.as_arrays(updates)
    checks.check_updates_like(updates, state.prev_direction)
    alpha = state.learning_rate
    signal, h = rules.hypergradient_signal(
        rule, updates, state.prev_direction, alpha, granularity, axis_name
    )
    def hyper_step(operand):
      alpha, hyper_state, signal = operand
      hyper_params = rules.to_hyper_space(rule, alpha)
      hyper_updates, new_hyper_state = hyper_optimizer.update(signal, hyper_state, hyper_params)
      new_alpha = rules.apply_rule(rule, alpha, hyper_params, hyper_updates)
      new_alpha = rules.clip_learning_rate(new_alpha, min_learning_rate, max_learning_rate)
      alpha, hyper_state = rules.choose(
          rules.all_finite(new_alpha), (new_alpha, new_hyper_state), (alpha, hyper_state)
      )
      return alpha, hyper_state, jnp.asarray(True)

    def skip(operand):
      alpha, hyper_state, _ = operand
      return alpha, hyper_state, jnp.asarray(False)

    # A non-finite h means a non-finite gradient: the step is skipped (`grads_ok` False).
    # `lax.cond`, not `where`: see `rules.choose`.
    alpha, hyper_state, grads_ok = jax.lax.cond(
        rules.all_finite(h), hyper_step, skip, (alpha, state.hyper_state, signal)
    )

    def direction_step(_):
      d, direction_state = direction.update(
          updates, state.direction_state, params, **extra_args
      )
      d = jax.tree.map(lambda new, old: new.astype(old.dtype), d, state.prev_direction)
      return d, direction_state

    def keep(_):
      return state.prev_direction, state.direction_state

    # The direction's step runs only on a finite gradient. A conditional rather than a
    # `where` between new and old state: a select would read the old moments after the
    # new ones are written, which under buffer donation costs a copy of every moment.
    prev_direction, direction_state = jax.lax.cond(grads_ok, direction_step, keep, None)
    # -α d_t, read from the stored d_t so that d_t is materialised once; zero if skipped.
    new_updates = _scale(alpha, prev_direction, updates, granularity)
    new_updates = jax.tree.map(lambda u: jnp.where(grads_ok, u, 0), new_updates)
    return new_updates, HypergradientState(alpha, hyper_state, direction_state, prev_direction)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _scale(alpha: Any, direction: Any, like: Any, granularity: str) -> Any:
  """`-α d` per group, in the dtype of the incoming updates `like`."""
  if granularity == "global":
    return jax.tree.map(lambda d, g: (-alpha * d).astype(g.dtype), direction, like)
  return jax.tree.map(lambda a, d, g: (-a * d).astype(g.dtype), alpha, direction, like)


# ---------------------------------------------------------------------------------------
# Finding the learned learning rate in a larger state.

_LEARNING_RATE_GETTERS: dict[type, Callable[[Any], Any]] = {
    HypergradientState: lambda s: s.learning_rate,
}


def register_learning_rate_state(state_type: type, getter: Callable[[Any], Any]) -> None:
  """Lets `get_learning_rate` recognise another hyperoptax state type."""
  _LEARNING_RATE_GETTERS[state_type] = getter


def get_learning_rate(state: optax.OptState) -> Any:
  """Returns the learned learning rate from any state holding one hyperoptax transform.

  Works through `optax.chain`, `optax.MultiSteps`, `optax.multi_transform`,
  `optax.apply_if_finite`, Flax train states and any other pytree: it finds the
  outermost hyperoptax states (a hyper-optimizer's own learned rate, as in a stack,
  belongs to its parent and is not counted).

  Args:
    state: an optimizer state (or any pytree containing one).

  Returns:
    α: a scalar, a pytree of scalars, or a params-shaped pytree, per granularity.

  Raises:
    ValueError: if the state holds no hyperoptax transform, or more than one.
  """
  found = find_outermost(state, tuple(_LEARNING_RATE_GETTERS), "get_learning_rate")
  return _LEARNING_RATE_GETTERS[type(found)](found)


def find_outermost(state: Any, types: tuple[type, ...], caller: str) -> Any:
  """The one outermost node of `state` that is an instance of `types`.

  Nodes nested inside a match (a stacked hyper-optimizer's own state) are not
  searched. Raises `ValueError`, naming `caller`, unless exactly one is found.
  """
  found = [
      x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, types))
      if isinstance(x, types)
  ]
  if len(found) != 1:
    what = "no hyperoptax transform" if not found else f"{len(found)} hyperoptax transforms"
    raise ValueError(
        f"{caller} needs a state with exactly one (outermost) hyperoptax transform; this "
        f"state holds {what}. Pass the sub-state of the one you want instead."
    )
  return found[0]
