"""Multiple hosts: two JAX processes on 127.0.0.1 train one sharded model together.

Each process runs `multihost_worker.py` with 2 CPU devices of its own; they join one
job with `jax.distributed.initialize` (gloo CPU collectives), build a global
('data', 'model') mesh over the 4 devices, shard the params and the batch on it and
train with `jax.jit`. Both must end with the same α trajectory, equal to this
process's single-device run of the same problem.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from multihost_worker import CONFIGS, loss_fn, make_optimizer, make_problem

import hyperoptax

WORKER = Path(__file__).with_name("multihost_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 180


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _single_process_trajectory(name, granularity, steps):
  params, xs, ys = make_problem(steps)
  opt = make_optimizer(name, granularity)

  def body(carry, batch):
    p, s = carry
    u, s = opt.update(jax.grad(loss_fn)(p, *batch), s, p)
    return (optax.apply_updates(p, u), s), hyperoptax.get_learning_rate(s)

  _, alphas = jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), (xs, ys)))(params)
  return np.concatenate([np.reshape(a, (steps, -1)) for a in jax.tree.leaves(alphas)], 1)


@pytest.mark.multihost
def test_two_processes_learn_the_same_alpha_as_one(tmp_path):
  port = _free_port()
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
  outs = [tmp_path / f"process_{i}.json" for i in range(NUM_PROCESSES)]
  logs = [open(tmp_path / f"process_{i}.log", "w") for i in range(NUM_PROCESSES)]
  procs = [
      subprocess.Popen(
          [sys.executable, str(WORKER), str(port), str(i), str(NUM_PROCESSES), str(outs[i])],
          env=env, stdout=logs[i], stderr=subprocess.STDOUT,
      )
      for i in range(NUM_PROCESSES)
  ]
  try:
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:  # only the processes this test started
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
  log_text = "\n".join((tmp_path / f"process_{i}.log").read_text()[-3000:] for i in range(2))
  assert codes == [0] * NUM_PROCESSES, f"worker exit codes {codes}:\n{log_text}"

  results = [json.loads(o.read_text()) for o in outs]
  assert sorted(r["process_index"] for r in results) == list(range(NUM_PROCESSES))
  for r in results:
    assert r["process_count"] == NUM_PROCESSES
    assert r["global_devices"] == 4 and r["local_devices"] == 2
  for name, granularity in CONFIGS:
    key = f"{name}/{granularity}"
    runs = [r["runs"][key] for r in results]
    a, b = (np.array(run["trajectory"]) for run in runs)
    np.testing.assert_array_equal(a, b, err_msg=f"{key}: processes disagree on α")
    reference = _single_process_trajectory(name, granularity, a.shape[0])
    np.testing.assert_allclose(a, reference, rtol=1e-5, atol=0, err_msg=key)
    assert np.max(np.abs(reference[-1] / reference[0] - 1)) > 0.02, f"{key}: α barely moved"
    # The state's params-shaped buffers stayed sharded like the params across hosts.
    for run in runs:
      assert run["prev_direction_specs"] == run["param_specs"]
      assert run["param_specs"]["w1"] == "P(None, 'model')"
