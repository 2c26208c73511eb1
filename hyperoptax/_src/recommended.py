"""The configuration to try first: Adam-HD whose log-learning-rate is moved by Adam.

`adam_hd` with its default (the paper's additive rule, β = 1e-7) is exact but its
β is scale-dependent: from a poor α0 it can take thousands of steps to move α. The
recommended configuration learns `log α` with a small Adam as hyper-optimizer:

.. math::

    z_t = \\log \\alpha_t, \\qquad
    \\frac{\\partial f(\\theta_{t-1})}{\\partial z} = \\alpha_{t-1} h_t
        = -\\alpha_{t-1}\\, g_t \\cdot d_{t-1},
    \\qquad z_t = z_{t-1} + \\mathrm{Adam}_{\\eta}\\big(\\alpha_{t-1} h_t\\big),

then `θ_t = θ_{t-1} - α_t d_t` with the Adam direction `d_t` (Baydin et al., 2018,
with the log-space hyper-optimizer suggested by Chandra et al., 2022). Adam's
normalisation makes the step in `log α` about `η` per step whatever the scale of
`h`, so α can travel several decades in a few hundred steps from any α0, and stays
positive. The numbers behind this choice (and where it falls short) are in
`benchmarks/results/RESULTS.md`.

References:
  Baydin, Cornish, Martínez Rubio, Schmidt, Wood. "Online Learning Rate Adaptation
  with Hypergradient Descent." ICLR 2018.
  Chandra, Xie, Ragan-Kelley, Meijer. "Gradient Descent: The Ultimate Optimizer."
  NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any

import optax

from hyperoptax._src import checks
from hyperoptax._src.alias import adam_hd

RECOMMENDED_HYPER_LR = 0.3


def auto_adam_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float = RECOMMENDED_HYPER_LR,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
  """Adam-HD with `rule="log"` and `hyper_optimizer=optax.adam(hyper_lr)`: try this first.

  Equivalent to
  `adam_hd(learning_rate, b1=b1, b2=b2, eps=eps, rule="log",
  hyper_optimizer=optax.adam(hyper_lr), **options)`; the learned α is
  `hyperoptax.get_learning_rate(state)`.

  Args:
    learning_rate: α0 > 0; the benchmarks start anywhere in [1e-6, 1e-1].
    hyper_lr: η, the hyper-optimizer's (Adam's) step size on `log α`, > 0 (default
      0.3: Adam moves log α by about η per step, so α changes by up to ≈ e^0.3 ≈ 1.35×
      per step and a start 100× too large takes at least ln 100 / 0.3 ≈ 15 steps to
      undo; 0.1 was too slow from α0 = 0.1 on the digits nets, 0.5 too noisy).
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to Adam's denominator.
    **options: other keyword options of `hypergradient` (`granularity`,
      `min_learning_rate`, `max_learning_rate`, `axis_name`).

  Raises:
    ValueError: on an invalid argument, naming it.
  """
  checks.check_number("hyper_lr", hyper_lr, lower=0.0, lower_open=True)
  for name in ("rule", "hyper_optimizer"):
    if name in options:
      raise ValueError(f"`{name}` is fixed by auto_adam_hd; use adam_hd to choose it.")
  return adam_hd(
      learning_rate, None, b1=b1, b2=b2, eps=eps,
      rule="log", hyper_optimizer=optax.adam(hyper_lr), **options,
  )
