"""hyperoptax against an independent NumPy float64 implementation of the paper's equations.

The reference below is written from DESIGN.md §1 (Baydin et al., 2018, Alg. 1–3), not
from the library: at every step, with `g_t = ∇f(θ_{t-1})` and the previous unscaled
direction `d_{t-1}` (zero before the first step),

    h_t = -g_t · d_{t-1}                 (a dot product per group of coordinates)
    α_t = rule(α_{t-1}, h_t)             (α moves BEFORE the step)
    θ_t = θ_{t-1} - α_t d_t.

The problem is a softmax regression on a little generated data, with a weight matrix and
a bias (two leaves), run for 120 full-batch steps in float64.

The file also checks the hypergradient itself by finite differences: `h_t` is the
derivative, with respect to the learning rate α used in the previous step, of the loss
at the parameters that step produced, `F(a) = f(θ_{t-2} - a d_{t-1})`, at `a = α_{t-1}`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax as hx

STEPS = 120
RTOL = 1e-10

# ---------------------------------------------------------------------------------------
# The problem: softmax regression, leaves W (5, 3) and b (3,), written in NumPy and JAX.


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5))
  true_w = rng.normal(size=(5, 3))
  labels = np.argmax(x @ true_w + 0.5 * rng.normal(size=(40, 3)), axis=1)
  y = np.eye(3)[labels]
  w0 = 0.1 * rng.normal(size=(5, 3))
  b0 = 0.1 * rng.normal(size=(3,))
  return x, y, [w0, b0]


X, Y, PARAMS0 = _data()


def np_loss(params):
  w, b = params
  z = X @ w + b
  z = z - z.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -np.mean(np.sum(Y * logp, axis=1))


def np_grad(params):
  """The analytic gradient of the mean cross-entropy: X^T (softmax - Y) / n."""
  w, b = params
  z = X @ w + b
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  dz = (p - Y) / X.shape[0]
  return [X.T @ dz, dz.sum(axis=0)]


def jax_loss(params):
  w, b = params["w"], params["b"]
  logp = jax.nn.log_softmax(jnp.asarray(X) @ w + b)
  return -jnp.mean(jnp.sum(jnp.asarray(Y) * logp, axis=1))


def to_tree(leaves):
  return {"w": jnp.asarray(leaves[0]), "b": jnp.asarray(leaves[1])}


def from_tree(tree):
  return [np.asarray(tree["w"]), np.asarray(tree["b"])]


def test_analytic_gradient_matches_autodiff(x64):
  # The reference's gradient is written by hand; check it once against jax.grad.
  g_np = np_grad(PARAMS0)
  g_jax = from_tree(jax.grad(jax_loss)(to_tree(PARAMS0)))
  for a, b in zip(g_np, g_jax):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------
# The NumPy reference.


class SGD:
  """d_t = g_t; with momentum μ, v_t = μ v_{t-1} + g_t and d_t = g_t + μ v_t (Nesterov)."""

  def __init__(self, momentum=0.0):
    self.mu = momentum
    self.v = None

  def direction(self, g, theta):
    del theta
    if self.mu == 0.0:
      return [x.copy() for x in g]
    if self.v is None:
      self.v = [np.zeros_like(x) for x in g]
    self.v = [self.mu * v + x for v, x in zip(self.v, g)]
    return [x + self.mu * v for x, v in zip(g, self.v)]


class Adam:
  """d_t = m̂_t / (√v̂_t + ε) (+ w θ_{t-1} for AdamW's decoupled decay)."""

  def __init__(self, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    self.b1, self.b2, self.eps, self.wd = b1, b2, eps, weight_decay
    self.m = self.v = None
    self.t = 0

  def direction(self, g, theta):
    if self.m is None:
      self.m = [np.zeros_like(x) for x in g]
      self.v = [np.zeros_like(x) for x in g]
    self.t += 1
    self.m = [self.b1 * m + (1 - self.b1) * x for m, x in zip(self.m, g)]
    self.v = [self.b2 * v + (1 - self.b2) * x * x for v, x in zip(self.v, g)]
    m_hat = [m / (1 - self.b1**self.t) for m in self.m]
    v_hat = [v / (1 - self.b2**self.t) for v in self.v]
    return [
        mh / (np.sqrt(vh) + self.eps) + self.wd * th
        for mh, vh, th in zip(m_hat, v_hat, theta)
    ]


def group_dot(a, b, granularity):
  """Σ a·b per group: all leaves (global), each leaf (leaf), each element (element)."""
  if granularity == "global":
    return sum(float(np.sum(x * y)) for x, y in zip(a, b))
  if granularity == "leaf":
    return [float(np.sum(x * y)) for x, y in zip(a, b)]
  return [x * y for x, y in zip(a, b)]


def new_alpha(rule, alpha, h, g, d_prev, beta, granularity):
  """The paper's rules, written from DESIGN.md §1 with a plain SGD(β) hyper-step."""
  if rule == "additive":
    return alpha - beta * h
  if rule == "log":  # gradient descent on log α, with ∂f/∂log α = α h
    return np.exp(np.log(alpha) - beta * alpha * h)
  assert rule == "multiplicative"  # α (1 - β cos(g_t, ∂u_{t-1}/∂α)), ∂u/∂α = -d
  norm_g = np.sqrt(group_dot(g, g, granularity))
  norm_d = np.sqrt(group_dot(d_prev, d_prev, granularity))
  den = norm_g * norm_d
  cos = np.where(den > 0, h / np.where(den > 0, den, 1.0), 0.0)
  return alpha * (1 - beta * cos)


def reference(optimizer, alpha0, beta, steps=STEPS, rule="additive", granularity="global"):
  """Runs the reference; returns (params per step, α per step), after each step."""
  theta = [x.copy() for x in PARAMS0]
  d_prev = [np.zeros_like(x) for x in theta]
  if granularity == "global":
    alpha = np.float64(alpha0)
  elif granularity == "leaf":
    alpha = np.full(len(theta), alpha0)
  else:
    alpha = [np.full_like(x, alpha0) for x in theta]
  thetas, alphas = [], []
  for _ in range(steps):
    g = np_grad(theta)
    dot = group_dot(g, d_prev, granularity)
    h = -np.asarray(dot) if granularity != "element" else [-x for x in dot]
    if granularity == "element":
      alpha = [
          new_alpha(rule, a, hi, gi, di, beta, "element")
          for a, hi, gi, di in zip(alpha, h, g, d_prev)
      ]
    else:
      alpha = new_alpha(rule, alpha, h, g, d_prev, beta, granularity)
    d = optimizer.direction(g, theta)
    if granularity == "global":
      theta = [th - alpha * di for th, di in zip(theta, d)]
    else:
      theta = [th - a * di for th, a, di in zip(theta, alpha, d)]
    d_prev = d
    thetas.append([x.copy() for x in theta])
    alphas.append(np.copy(alpha) if granularity != "element" else [a.copy() for a in alpha])
  return thetas, alphas


# ---------------------------------------------------------------------------------------
# The library, fed the same analytic gradients, one jitted `update` per configuration.


def run_library(opt, steps=STEPS):
  """Returns the list of (params, state) after 0, 1, ..., `steps` steps."""
  params = to_tree(PARAMS0)
  state = opt.init(params)
  update = jax.jit(opt.update)
  history = [(params, state)]
  for _ in range(steps):
    u, state = update(to_tree(np_grad(from_tree(params))), state, params)
    params = optax.apply_updates(params, u)
    history.append((params, state))
  return history


def flat_alpha(alpha):
  """α as one float64 vector: 1 entry (global), one per leaf, or one per element."""
  leaves = from_tree(alpha) if isinstance(alpha, dict) else [alpha]
  return np.concatenate([np.ravel(np.asarray(a)) for a in leaves])


def ref_flat_alpha(alpha):
  if isinstance(alpha, list):
    return np.concatenate([np.ravel(a) for a in alpha])
  return np.ravel(alpha)


def assert_trajectories_match(ref, history):
  ref_thetas, ref_alphas = ref
  got_thetas = [from_tree(p) for p, _ in history[1:]]
  got_alphas = np.stack([flat_alpha(s.learning_rate) for _, s in history[1:]])
  want_alphas = np.stack([ref_flat_alpha(a) for a in ref_alphas])
  assert history[-1][0]["w"].dtype == jnp.float64
  assert got_alphas.dtype == np.float64
  for leaf in range(2):
    np.testing.assert_allclose(
        np.stack([t[leaf] for t in got_thetas]), np.stack([t[leaf] for t in ref_thetas]),
        rtol=RTOL, atol=0,
    )
  np.testing.assert_allclose(got_alphas, want_alphas, rtol=RTOL, atol=0)
  # The comparison only means something if α actually moved and the loss went down.
  assert np.max(np.abs(want_alphas[-1] / want_alphas[0] - 1)) > 0.05
  assert np_loss(ref_thetas[-1]) < 0.8 * np_loss(PARAMS0)


# ---------------------------------------------------------------------------------------
# Finite differences: h_t = d/da f(θ_{t-2} - a d_{t-1}) at a = α_{t-1}.


def assert_finite_differences(history, beta, rule, fd_steps=(1, 2, 5, 30, 100)):
  """Checks the library's α update against the derivative of the loss, numerically.

  At step t the library sees `g_t = ∇f(θ_{t-1})`, where the previous step made
  `θ_{t-1} = θ_{t-2} - α_{t-1} d_{t-1}`. The hypergradient is the derivative of
  `F(a) = f(θ_{t-2} - a d_{t-1})` (all else fixed) at `a = α_{t-1}`, per α entry. The
  library's value is read back from its α update: with hyper-step SGD(β),
  `α_t = α_{t-1} - β h_t` (additive) or `log α_t = log α_{t-1} - β α_{t-1} h_t` (log).
  """
  eps = 1e-6
  for t in fd_steps:
    theta_before = from_tree(history[t - 1][0])  # θ_{t-2}
    theta_after, s_prev = history[t]  # θ_{t-1}; the state holding α_{t-1}, d_{t-1}
    s_next = history[t + 1][1]  # the state holding α_t
    d_prev = from_tree(s_prev.prev_direction)
    alpha = s_prev.learning_rate
    a_prev = from_tree(alpha) if isinstance(alpha, dict) else [np.asarray(alpha)] * 2
    # The previous step really was θ_{t-1} = θ_{t-2} - α_{t-1} d_{t-1}.
    for after, before, a, d in zip(from_tree(theta_after), theta_before, a_prev, d_prev):
      np.testing.assert_allclose(after, before - a * d, rtol=1e-12, atol=1e-15)
    a_old = flat_alpha(s_prev.learning_rate)
    a_new = flat_alpha(s_next.learning_rate)
    if rule == "additive":
      h_lib = (a_old - a_new) / beta
    else:
      h_lib = (np.log(a_old) - np.log(a_new)) / (beta * a_old)

    def loss_at(alphas):
      return np_loss([th - a * d for th, a, d in zip(theta_before, alphas, d_prev)])

    # One 0/1 mask per α entry, marking the coordinates that entry scales.
    full = [np.zeros_like(d) for d in d_prev]
    if a_old.size == 1:
      masks = [[np.ones_like(d) for d in d_prev]]
    elif a_old.size == len(d_prev):
      masks = [[np.ones_like(d) if j == i else f for j, (d, f) in enumerate(zip(d_prev, full))]
               for i in range(len(d_prev))]
    else:
      masks = []
      for i, d in enumerate(d_prev):
        for idx in np.ndindex(d.shape):
          m = [f.copy() for f in full]
          m[i][idx] = 1.0
          masks.append(m)
    assert len(masks) == a_old.size
    fd = np.array([
        (loss_at([a + eps * m for a, m in zip(a_prev, mask)])
         - loss_at([a - eps * m for a, m in zip(a_prev, mask)])) / (2 * eps)
        for mask in masks
    ])
    np.testing.assert_allclose(h_lib, fd, rtol=1e-5, atol=1e-10)
    assert np.max(np.abs(fd)) > 1e-5  # a non-trivial derivative


CASES = {
    # name: (library factory, reference optimizer factory, α0, β)
    "sgd_hd": (lambda a, b, **o: hx.sgd_hd(a, b, **o), lambda: SGD(), 0.1, 0.5),
    "sgdn_hd": (
        lambda a, b, **o: hx.sgd_hd(a, b, momentum=0.9, nesterov=True, **o),
        lambda: SGD(momentum=0.9), 0.01, 0.05,
    ),
    "adam_hd": (lambda a, b, **o: hx.adam_hd(a, b, **o), lambda: Adam(), 0.01, 1e-4),
    "adamw_hd": (
        lambda a, b, **o: hx.adamw_hd(a, b, weight_decay=0.1, **o),
        lambda: Adam(weight_decay=0.1), 0.01, 1e-4,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_optimizers_match_reference_and_finite_differences(x64, name):
  factory, ref_opt, alpha0, beta = CASES[name]
  history = run_library(factory(alpha0, beta))
  assert_trajectories_match(reference(ref_opt(), alpha0, beta), history)
  assert_finite_differences(history, beta, "additive")


@pytest.mark.parametrize(
    "name,rule,granularity,beta",
    [
        ("sgd_hd", "multiplicative", "global", 0.02),
        ("sgd_hd", "log", "global", 5.0),
        ("adam_hd", "log", "leaf", 0.5),
        ("sgd_hd", "additive", "leaf", 0.5),
        ("sgd_hd", "additive", "element", 5.0),
        ("sgdn_hd", "multiplicative", "leaf", 0.05),
        ("adam_hd", "multiplicative", "element", 0.02),
    ],
)
def test_rules_and_granularities_match_reference(x64, name, rule, granularity, beta):
  factory, ref_opt, alpha0, _ = CASES[name]
  history = run_library(factory(alpha0, beta, rule=rule, granularity=granularity))
  ref = reference(ref_opt(), alpha0, beta, rule=rule, granularity=granularity)
  assert_trajectories_match(ref, history)
  if rule != "multiplicative":  # its signal is a cosine, not h
    assert_finite_differences(history, beta, rule)


def test_first_hypergradient_is_zero(x64):
  # d_{-1} = 0, so h_1 = 0 and the first step uses α0 exactly, whatever β.
  opt = hx.sgd_hd(0.1, 0.9)
  params = to_tree(PARAMS0)
  g = to_tree(np_grad(PARAMS0))
  u, state = opt.update(g, opt.init(params), params)
  assert float(state.learning_rate) == 0.1
  np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * np.asarray(g["w"]), rtol=1e-15)
