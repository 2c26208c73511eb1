"""Hypergradient versions of common Optax optimizers: each a direction plus `hypergradient`.

Every alias takes the initial learning rate α0 and `hyper_lr` (β), then its base
optimizer's own arguments, and forwards the keyword options of `hypergradient`
(`hyper_optimizer`, `rule`, `granularity`, `min_learning_rate`,
`max_learning_rate`, `axis_name`). Leaving `hyper_lr=None` picks the alias's
default β for the additive rule (below), `rules.DEFAULT_HYPER_LR` for the
scale-free `"multiplicative"` and `"log"` rules, or nothing when a
`hyper_optimizer` is given. With β = 0 each alias is its Optax optimizer.

Default α0 is 1e-3 and the additive β follows Baydin et al. (2018): 1e-3 for the
SGD family, 1e-7 for the Adam family (whose directions have unit-scale entries,
so `g·d` is far larger than for SGD); other aliases use the value of the family
their direction's scale resembles.
"""

from __future__ import annotations

import numbers
from typing import Any

import optax

from hyperoptax._src import checks, rules
from hyperoptax._src.hypergradient import hypergradient

SGD_HYPER_LR = 1e-3
ADAM_HYPER_LR = 1e-7


def _with_hypergradient(
    direction: optax.GradientTransformation,
    learning_rate: Any,
    hyper_lr: Any,
    additive_hyper_lr: float,
    options: dict[str, Any],
) -> optax.GradientTransformationExtraArgs:
  """`hypergradient(direction, ...)` with the alias's default β filled in."""
  # `optax.inject_hyperparams(alias)(...)` binds the var-keyword parameter by its name
  # and calls the alias back with `options={...}`: unpack it.
  nested = options.pop("options", None)
  if isinstance(nested, dict):
    options = {**nested, **options}
  if hyper_lr is None and options.get("hyper_optimizer") is None:
    rule = options.get("rule", "additive")
    hyper_lr = rules.DEFAULT_HYPER_LR.get(rule, additive_hyper_lr)
  return hypergradient(direction, learning_rate, hyper_lr, **options)


def _check_betas(**betas: Any) -> None:
  for name, value in betas.items():
    checks.check_number(name, value, lower=0.0, upper=1.0, upper_open=True)


def _check_adam(b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
  """The argument checks shared by the Adam-family aliases."""
  _check_betas(b1=b1, b2=b2)
  checks.check_number("eps", eps, lower=0.0)
  checks.check_number("eps_root", eps_root, lower=0.0)


def sgd_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD-HD and SGDN-HD (Baydin et al., 2018, Alg. 1 and 3).

  Direction `d_t = g_t`; with momentum μ, `v_t = μ v_{t-1} + g_t` and `d_t = v_t`,
  or `d_t = g_t + μ v_t` with `nesterov=True` (SGDN-HD). The update is
  `-α_t d_t` with `α_t = α_{t-1} + β g_t · d_{t-1}`.

  Args:
    learning_rate: α0 (default 1e-3, the paper's).
    hyper_lr: β (default 1e-3 for the additive rule, the paper's).
    momentum: μ in [0, 1); 0 is plain SGD-HD.
    nesterov: Nesterov momentum (requires `momentum > 0`).
    **options: keyword options of `hypergradient`.
  """
  checks.check_number("momentum", momentum, lower=0.0, upper=1.0, upper_open=True)
  if nesterov and not checks.is_traced(momentum) and momentum == 0:
    raise ValueError("`nesterov=True` requires `momentum` > 0.")
  # Plain SGD only for a Python/NumPy zero: an array momentum (traced, or injected by
  # `optax.inject_hyperparams`) must give the same state structure in init and update.
  if isinstance(momentum, numbers.Real) and momentum == 0 and not nesterov:
    direction = optax.identity()
  else:
    direction = optax.trace(decay=momentum, nesterov=nesterov)
  return _with_hypergradient(direction, learning_rate, hyper_lr, SGD_HYPER_LR, options)


def adam_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-HD (Baydin et al., 2018, Alg. 2).

  Direction `d_t = m̂_t / (\sqrt{v̂_t + ε_root} + ε)` (Optax's placement of ε), the
  update `-α_t d_t` with `α_t = α_{t-1} + β g_t · d_{t-1}`.

  Args:
    learning_rate: α0 (default 1e-3, the paper's).
    hyper_lr: β (default 1e-7 for the additive rule, the paper's).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator.
    eps_root: added inside the square root.
    **options: keyword options of `hypergradient`.
  """
  _check_adam(b1, b2, eps, eps_root)
  direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)
  return _with_hypergradient(direction, learning_rate, hyper_lr, ADAM_HYPER_LR, options)


def adamw_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    mask: Any = None,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW-HD: Adam-HD with decoupled weight decay inside the direction.

  `d_t = m̂_t / (\sqrt{v̂_t + ε_root} + ε) + w θ_{t-1}`, so α scales the decay as
  in `optax.adamw`, and the hypergradient sees it. `update` needs `params`.

  Args:
    learning_rate: α0 (default 1e-3).
    hyper_lr: β (default 1e-7 for the additive rule).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator.
    eps_root: added inside the square root.
    weight_decay: the decoupled decay w >= 0 (default 1e-4, as `optax.adamw`).
    mask: which params to decay (a pytree of bools or a callable), as in Optax.
    **options: keyword options of `hypergradient`.
  """
  _check_adam(b1, b2, eps, eps_root)
  checks.check_number("weight_decay", weight_decay, lower=0.0)
  direction = optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
      optax.add_decayed_weights(weight_decay, mask),
  )
  return _with_hypergradient(direction, learning_rate, hyper_lr, ADAM_HYPER_LR, options)


def nadam_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """NAdam-HD: the Nesterov-accelerated Adam direction of `optax.nadam`, learned α.

  Args:
    learning_rate: α0 (default 1e-3).
    hyper_lr: β (default 1e-7 for the additive rule).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator.
    eps_root: added inside the square root.
    **options: keyword options of `hypergradient`.
  """
  _check_adam(b1, b2, eps, eps_root)
  direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=True)
  return _with_hypergradient(direction, learning_rate, hyper_lr, ADAM_HYPER_LR, options)


def rmsprop_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """RMSProp-HD: the direction of `optax.rmsprop`, learned α.

  The direction is `g / sqrt(ν + ε)` (centred: divided by the running standard
  deviation), followed by momentum when given. `optax.rmsprop` applies α before
  its momentum trace; here α multiplies the traced direction, which is the same
  while α is constant and lets the hypergradient see the whole update.

  Args:
    learning_rate: α0 (default 1e-3).
    hyper_lr: β (default 1e-7 for the additive rule: unit-scale direction).
    decay: decay of the squared-gradient average, in [0, 1).
    eps: added to the denominator.
    initial_scale: initial value of the squared-gradient average.
    eps_in_sqrt: put ε inside the square root, as in Optax.
    centered: divide by the standard deviation instead of the RMS.
    momentum: optional momentum decay in [0, 1).
    nesterov: Nesterov momentum.
    **options: keyword options of `hypergradient`.
  """
  _check_betas(decay=decay)
  checks.check_number("eps", eps, lower=0.0)
  checks.check_number("initial_scale", initial_scale, lower=0.0)
  checks.check_number("momentum", momentum, allow_none=True, lower=0.0, upper=1.0, upper_open=True)
  scale = optax.scale_by_stddev if centered else optax.scale_by_rms
  parts = [scale(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt)]
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  return _with_hypergradient(
      optax.chain(*parts), learning_rate, hyper_lr, ADAM_HYPER_LR, options
  )


def adagrad_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float | None = None,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """AdaGrad-HD: the direction `g / sqrt(Σ g² + ε)` of `optax.adagrad`, learned α.

  Args:
    learning_rate: α0 (default 1e-3).
    hyper_lr: β (default 1e-7 for the additive rule: unit-scale direction).
    initial_accumulator_value: initial value of the sum of squares.
    eps: added to the denominator.
    **options: keyword options of `hypergradient`.
  """
  checks.check_number("initial_accumulator_value", initial_accumulator_value, lower=0.0)
  checks.check_number("eps", eps, lower=0.0)
  direction = optax.scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps)
  return _with_hypergradient(direction, learning_rate, hyper_lr, ADAM_HYPER_LR, options)


def lion_hd(
    learning_rate: float = 1e-4,
    hyper_lr: float | None = None,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: float = 1e-3,
    mask: Any = None,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """Lion-HD: the sign direction of `optax.lion` (with its decoupled decay), learned α.

  Args:
    learning_rate: α0 (default 1e-4: Lion's steps are signs, so smaller than Adam's).
    hyper_lr: β (default 1e-7 for the additive rule: unit-scale direction).
    b1: interpolation between momentum and gradient for the sign, in [0, 1).
    b2: decay of the momentum, in [0, 1).
    mu_dtype: dtype of the momentum.
    weight_decay: decoupled decay, scaled by α as in `optax.lion` (needs `params`).
    mask: which params to decay.
    **options: keyword options of `hypergradient`.
  """
  _check_betas(b1=b1, b2=b2)
  checks.check_number("weight_decay", weight_decay, lower=0.0)
  direction = optax.chain(
      optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask),
  )
  return _with_hypergradient(direction, learning_rate, hyper_lr, ADAM_HYPER_LR, options)


def adafactor_hd(
    learning_rate: float = 1e-2,
    hyper_lr: float | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = None,
    eps: float = 1e-30,
    factored: bool = True,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """Adafactor-HD: the direction of `optax.adafactor`, learned α.

  The factored second-moment rescaling, block-RMS clipping, parameter-scale
  multiplication and momentum of `optax.adafactor`, with α applied last (Optax
  applies it before the parameter scale and momentum: the same while α is fixed).
  `optax.adafactor`'s `weight_decay_rate` is left out on purpose: it adds a decay
  that α does not scale, so it is not part of `∂u/∂α`; chain
  `optax.add_decayed_weights` before this transform for L2-style decay instead.
  Needs `params` when `multiply_by_parameter_scale=True`.

  Args:
    learning_rate: α0 (default 1e-2, as Optax's adafactor).
    hyper_lr: β (default 1e-7 for the additive rule).
    min_dim_size_to_factor: only factor dimensions at least this large.
    decay_rate: the decay exponent of the second-moment average.
    decay_offset: step offset of the decay schedule.
    multiply_by_parameter_scale: scale the update by the params' block RMS.
    clipping_threshold: block-RMS clipping of the update (None: off).
    momentum: optional EMA momentum in [0, 1).
    dtype_momentum: dtype of the momentum.
    eps: regulariser of the second moments.
    factored: factor the second moments.
    **options: keyword options of `hypergradient`.
  """
  checks.check_number("momentum", momentum, allow_none=True, lower=0.0, upper=1.0, upper_open=True)
  checks.check_number("decay_rate", decay_rate, lower=0.0)
  checks.check_number("eps", eps, lower=0.0)
  parts = [
      optax.scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)
  ]
  if clipping_threshold is not None:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  if multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    parts.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
  return _with_hypergradient(
      optax.chain(*parts), learning_rate, hyper_lr, ADAM_HYPER_LR, options
  )
