"""A small sharded regression problem, shared by the scale-out tests, and the multi-host worker.

Imported by `test_sharding.py` and `test_multihost.py` for the model, data and training
loop (one home for them). Run as a script it is one process of a multi-process JAX job:

    python multihost_worker.py PORT PROCESS_ID NUM_PROCESSES OUT_JSON

Each process joins the job through `jax.distributed.initialize` on 127.0.0.1 (CPU
collectives over gloo), builds one global mesh over every process's devices, shards
the params (model-parallel) and the batch (data-parallel) on it, trains with `jax.jit`
for each of `CONFIGS` and writes its α trajectories to OUT_JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np

IN, HIDDEN, OUT, BATCH = 8, 16, 4, 32
# (optimizer, granularity) pairs the multi-host worker trains: a replicated scalar α and
# an α sharded like the params.
CONFIGS = (("sgd_hd", "global"), ("adam_hd", "element"))


def make_problem(steps: int, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
  """NumPy params of a 2-layer tanh MLP, and `steps` batches of a noisy teacher's data."""
  rng = np.random.default_rng(seed)
  params = {
      "w1": (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN)).astype(np.float32),
      "b1": np.zeros((HIDDEN,), np.float32),
      "w2": (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32),
      "b2": np.zeros((OUT,), np.float32),
  }
  teacher = rng.standard_normal((IN, OUT)).astype(np.float32)
  xs = rng.standard_normal((steps, BATCH, IN)).astype(np.float32)
  ys = np.tanh(xs @ teacher) + 0.1 * rng.standard_normal((steps, BATCH, OUT)).astype(np.float32)
  return params, xs, ys


def loss_fn(params, x, y):
  import jax.numpy as jnp

  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def make_optimizer(name: str, granularity: str):
  """The optimizers the scale-out tests compare: SGD-HD and Adam-HD, with visible α motion."""
  import hyperoptax

  if name == "sgd_hd":
    return hyperoptax.sgd_hd(0.05, 0.05, granularity=granularity)
  if name == "adam_hd":
    return hyperoptax.adam_hd(1e-2, 1e-4, granularity=granularity)
  raise ValueError(f"unknown optimizer {name!r}")


def model_parallel_specs():
  """Partition specs of the params on a ('data', 'model') mesh: hidden units split over 'model'."""
  from jax.sharding import PartitionSpec as P

  return {"w1": P(None, "model"), "b1": P("model"), "w2": P("model"), "b2": P()}


def make_train_step(opt):
  """One jitted training step returning the new params, state and the learned α."""
  import jax
  import optax

  import hyperoptax

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, hyperoptax.get_learning_rate(state)

  return step


def _worker(port: int, process_id: int, num_processes: int, out: str) -> None:
  import jax
  from jax.experimental import multihost_utils

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{port}",
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=60,
  )
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  devices = np.array(jax.devices()).reshape(2, -1)  # all processes' devices, global mesh
  mesh = Mesh(devices, ("data", "model"))
  specs = model_parallel_specs()

  def put(x, spec):  # a global array built from this process's slices of the same data
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  steps = 20
  params_np, xs, ys = make_problem(steps)
  result = {
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "global_devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "runs": {},
  }
  xs, ys = put(xs, P(None, "data", None)), put(ys, P(None, "data", None))
  for name, gran in CONFIGS:
    opt = make_optimizer(name, gran)
    params = {k: put(v, specs[k]) for k, v in params_np.items()}
    state = opt.init(params)
    step = make_train_step(opt)

    @jax.jit
    def run(params, state, xs, ys, step=step):
      def body(carry, batch):
        p, s, alpha = step(*carry, *batch)
        return (p, s), alpha

      return jax.lax.scan(body, (params, state), (xs, ys))

    (params, state), alphas = run(params, state, xs, ys)
    # α is replicated (global/leaf) or sharded like the params (element): gather it.
    alphas = [np.reshape(multihost_utils.process_allgather(a, tiled=True), (steps, -1))
              for a in jax.tree.leaves(alphas)]
    result["runs"][f"{name}/{gran}"] = {
        "trajectory": np.concatenate(alphas, 1).tolist(),
        "prev_direction_specs": {k: str(v.sharding.spec) for k, v in state.prev_direction.items()},
        "param_specs": {k: str(v.sharding.spec) for k, v in params.items()},
    }
  with open(out, "w") as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  port_, pid_, n_, out_ = sys.argv[1:5]
  _worker(int(port_), int(pid_), int(n_), out_)
