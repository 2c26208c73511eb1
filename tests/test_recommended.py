"""`auto_adam_hd`: Adam-HD with log α moved by Adam, against a NumPy reference of the equations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperoptax


def _reference(theta0, grad_fn, alpha0, eta, steps, b1=0.9, b2=0.999, eps=1e-8):
  """Written from the equations in hyperoptax/_src/recommended.py, in float64."""
  theta = theta0.astype(np.float64).copy()
  m, v, d_prev = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
  z, mz, vz = np.log(alpha0), 0.0, 0.0
  alphas = []
  for t in range(1, steps + 1):
    g = grad_fn(theta)
    s = np.exp(z) * (-(g @ d_prev))  # ∂f/∂log α = α h, h = -g·d_{t-1}
    mz = b1 * mz + (1 - b1) * s
    vz = b2 * vz + (1 - b2) * s * s
    z = z - eta * (mz / (1 - b1**t)) / (np.sqrt(vz / (1 - b2**t)) + 1e-8)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    theta = theta - np.exp(z) * d
    d_prev = d
    alphas.append(np.exp(z))
  return theta, np.array(alphas)


@pytest.mark.usefixtures("x64")
def test_auto_adam_hd_matches_numpy_reference():
  c = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
  grad_fn = lambda th: c * th + 0.3 * np.sin(th)
  theta0 = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
  # η = 0.3: the default documented in auto_adam_hd's docstring and the README.
  expected_theta, expected_alphas = _reference(theta0, grad_fn, 1e-3, 0.3, 60)

  tx = hyperoptax.auto_adam_hd(1e-3)
  params = jnp.asarray(theta0)
  state = tx.init(params)
  alphas = []
  step = jax.jit(tx.update)
  for _ in range(60):
    g = jnp.asarray(grad_fn(np.asarray(params)))
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
    alphas.append(float(hyperoptax.get_learning_rate(state)))
  np.testing.assert_allclose(np.asarray(params), expected_theta, rtol=1e-10)
  np.testing.assert_allclose(alphas, expected_alphas, rtol=1e-10)
  assert expected_alphas[-1] > 3e-3  # α grew: the test exercises the log-space rule


def test_auto_adam_hd_bad_input_names_argument():
  with pytest.raises(ValueError, match="hyper_lr"):
    hyperoptax.auto_adam_hd(1e-3, hyper_lr=0.0)
  with pytest.raises(ValueError, match="rule"):
    hyperoptax.auto_adam_hd(1e-3, rule="additive")
  with pytest.raises(ValueError, match="learning_rate"):
    hyperoptax.auto_adam_hd(-1.0)


def test_auto_adam_hd_vmaps_over_alpha0():
  params = jnp.ones(3)

  def run(alpha0):
    tx = hyperoptax.auto_adam_hd(alpha0)
    state = tx.init(params)
    _, state = tx.update(jnp.ones(3), state, params)
    return hyperoptax.get_learning_rate(state)

  np.testing.assert_allclose(jax.vmap(run)(jnp.array([1e-6, 1e-2])), [1e-6, 1e-2], rtol=1e-6)
