"""Shared test set-up: 8 host CPU devices for the scale-out tests, and an x64 fixture."""

import os

# Must happen before JAX initialises its backends. Single-device code still runs on
# device 0; the sharding tests use all eight.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats enabled (float64 reference comparisons)."""
  with jax.enable_x64(True):
    yield
