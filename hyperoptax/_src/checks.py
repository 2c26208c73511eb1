"""Argument validation shared by every factory: one clear `ValueError` per bad argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
  """True for a JAX tracer (a value inside `jit`/`vmap`), whose range cannot be checked."""
  return isinstance(value, jax.core.Tracer)


def check_number(
    name: str,
    value: Any,
    *,
    lower: float | None = None,
    upper: float | None = None,
    lower_open: bool = False,
    upper_open: bool = False,
    allow_none: bool = False,
) -> None:
  """Raises `ValueError` naming `name` unless `value` is a real scalar in range.

  Traced values (under `jit`/`vmap`) pass: their range is only known at run time,
  so a sweep of, e.g., the initial learning rate stays one compiled program.

  Args:
    name: the argument's name, used in the message.
    value: the value to check.
    lower: smallest allowed value (or supremum when `lower_open`).
    upper: largest allowed value (or infimum when `upper_open`).
    lower_open: whether `lower` itself is excluded.
    upper_open: whether `upper` itself is excluded.
    allow_none: whether `None` is accepted.
  """
  if value is None and allow_none:
    return
  if isinstance(value, (bool, np.bool_)) or not _is_real_scalar(value):
    raise ValueError(
        f"`{name}` must be a real number (a Python/NumPy/JAX scalar), got "
        f"{value!r} of type {type(value).__name__}."
    )
  if is_traced(value):
    return
  x = float(np.asarray(value))
  if not math.isfinite(x):
    raise ValueError(f"`{name}` must be finite, got {x}.")
  if lower is not None and (x < lower or (lower_open and x == lower)):
    bound = f"> {lower}" if lower_open else f">= {lower}"
    raise ValueError(f"`{name}` must be {bound}, got {x}.")
  if upper is not None and (x > upper or (upper_open and x == upper)):
    bound = f"< {upper}" if upper_open else f"<= {upper}"
    raise ValueError(f"`{name}` must be {bound}, got {x}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises `ValueError` naming `name` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _is_real_scalar(value: Any) -> bool:
  if isinstance(value, numbers.Real):
    return True
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return np.ndim(value) == 0 and (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    )
  return False


def as_arrays(tree: Any) -> Any:
  """Python/NumPy leaves as JAX arrays of their own dtype (not weakly typed); arrays as is."""
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x, jnp.result_type(x)), tree
  )


def check_params(params: Any) -> None:
  """Raises `ValueError` naming the first params leaf that is not real floating point.

  A learning rate scales a continuous step: integer, boolean or complex leaves
  (step counters, masks) have no hypergradient and must be routed elsewhere.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"`params` must be real floating-point arrays; the leaf at "
          f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. Keep non-trainable "
          "leaves out with `optax.masked` or `optax.multi_transform`."
      )


def check_updates_like(updates: Any, like: Any) -> None:
  """Raises `ValueError` unless `updates` has the tree structure and leaf shapes of `like`.

  Checked at trace time (shapes are static): without it a gradient of shape
  `(n, 1)` for a param of shape `(n,)` would silently broadcast to `(n, n)`.
  """
  if jax.tree.structure(updates) != jax.tree.structure(like):
    raise ValueError(
        "`updates` (the gradients) must have the params' tree structure "
        f"{jax.tree.structure(like)}, got {jax.tree.structure(updates)}."
    )
  for (path, u), ref in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(like)):
    if jnp.shape(u) != jnp.shape(ref):
      raise ValueError(
          f"`updates` leaf at {jax.tree_util.keystr(path) or '<root>'} has shape "
          f"{jnp.shape(u)}, but its param has shape {jnp.shape(ref)}."
      )
