"""Common harness of the hyperoptax benchmarks: tasks, methods, a vmapped runner, writers.

* **Tasks** (`TASKS`): digits logistic regression, MLP and small CNN (scikit-learn's
  bundled `load_digits`, standardised, 80/20 train/held-out split; MNIST or
  CIFAR-10 through `tensorflow_datasets` with `dataset="mnist"`/`"cifar10"`), an
  ill-conditioned quadratic (κ = 1e4, randomly rotated), a noisy quadratic
  (additive Gaussian gradient noise) and the 2-D Rosenbrock function.
* **Methods** (`METHODS`): Optax `sgd`, Nesterov SGD and `adam`; hyperoptax
  `sgd_hd`/`adam_hd` with each rule; the learning-rate-free `optax.contrib`
  optimizers (`prodigy`, `dog`, `dowg`, `mechanize(adam)`, `dadapt_adamw`,
  `cocob` at their defaults, and `schedule_free_adamw`, whose α0 is its learning rate).
* **Runner** (`run`): one method on one task for a grid of initial learning rates α0
  and seeds is ONE jitted program — `jax.vmap` over α0 and seeds of a
  `jax.lax.scan` over the steps.
* **Writers**: JSON (with the command, library versions and machine), markdown, PNG.

The scripts next to this file (`demo.py`, `paper.py`, `robustness.py`,
`overhead.py`) import it; run them from the repository root, e.g.
`python benchmarks/demo.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperoptax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The paper's protocol (Baydin et al., 2018, §4): α0, β per family, L2 added to the gradient.
PAPER_ALPHA0 = 1e-3
PAPER_BATCH = 128
PAPER_L2 = 1e-4


# ---------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification data set on device: inputs NHWC float32, integer labels."""

  name: str
  x_train: jax.Array
  y_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  num_classes: int


def load_dataset(name: str = "digits", seed: int = 0) -> Dataset:
  """Loads `digits` (offline, scikit-learn) or `mnist`/`cifar10` (tensorflow_datasets).

  Digits are 8×8 grey images; each pixel is standardised with the training split's
  mean and standard deviation; 20% of the 1797 images are held out (stratified).

  Args:
    name: `"digits"`, `"mnist"` or `"cifar10"`.
    seed: the seed of the digits train/held-out split.

  Raises:
    ValueError: for an unknown `name`.
    ImportError: for MNIST/CIFAR-10 without `tensorflow_datasets` installed.
  """
  if name == "digits":
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=seed, stratify=y
    )
    shape = (8, 8, 1)
  elif name in ("mnist", "cifar10"):
    try:
      import tensorflow_datasets as tfds  # lazily: only Colab-style runs need it
    except ImportError as e:
      raise ImportError(
          f"--dataset {name} needs tensorflow_datasets (and network access to download "
          f"{name}): `pip install tensorflow-datasets tensorflow-cpu`. Offline, use "
          "--dataset digits."
      ) from e
    splits = tfds.as_numpy(tfds.load(name, split=["train", "test"], batch_size=-1))
    (x_tr, y_tr), (x_te, y_te) = [(s["image"].astype(np.float32), s["label"]) for s in splits]
    shape = x_tr.shape[1:]
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
  else:
    raise ValueError(f"`dataset` must be 'digits', 'mnist' or 'cifar10', got {name!r}.")
  mean, std = x_tr.mean(0), x_tr.std(0)
  std = np.where(std > 0, std, 1.0)
  prep = lambda a: jnp.asarray(((a - mean) / std).reshape((len(a), *shape)), jnp.float32)
  return Dataset(name, prep(x_tr), jnp.asarray(y_tr, jnp.int32), prep(x_te),
                 jnp.asarray(y_te, jnp.int32), int(max(y_tr.max(), y_te.max())) + 1)


# ---------------------------------------------------------------------------------------
# Tasks: init(key) -> params, stream(key, steps) -> per-step batches (leading axis steps),
# loss(params, batch) -> scalar, evaluate(params) -> (final training loss, held-out
# accuracy or NaN). The stream is drawn before the scan: random numbers inside a scan body
# make XLA's CPU compilation an order of magnitude slower.


@dataclasses.dataclass(frozen=True)
class Task:
  """One optimisation problem; every function is pure and traceable."""

  name: str
  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  stream: Callable[[jax.Array, int], Any]
  evaluate: Callable[[Any], tuple[jax.Array, jax.Array]]
  l2: float = 0.0  # weight decay added to the gradient (optax.add_decayed_weights)


def _dense_init(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
  """He-normal weights, zero biases."""
  w = jax.random.normal(key, (n_in, n_out)) * math.sqrt(2.0 / n_in)
  return {"w": w, "b": jnp.zeros((n_out,))}


def _mlp_apply(params: list, x: jax.Array) -> jax.Array:
  x = x.reshape(x.shape[0], -1)
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _cnn_init(key: jax.Array, shape: Sequence[int], num_classes: int) -> dict:
  k1, k2, k3 = jax.random.split(key, 3)
  c = shape[-1]
  conv = lambda k, cin, cout: jax.random.normal(k, (3, 3, cin, cout)) * math.sqrt(2 / (9 * cin))
  flat = math.ceil(shape[0] / 2) * math.ceil(shape[1] / 2) * 32
  return {
      "conv1": {"w": conv(k1, c, 16), "b": jnp.zeros((16,))},
      "conv2": {"w": conv(k2, 16, 32), "b": jnp.zeros((32,))},
      "out": _dense_init(k3, flat, num_classes),
  }


def _cnn_apply(params: dict, x: jax.Array) -> jax.Array:
  def conv(x, p, stride):
    y = jax.lax.conv_general_dilated(
        x, p["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y + p["b"])

  x = conv(conv(x, params["conv1"], 1), params["conv2"], 2)
  return x.reshape(x.shape[0], -1) @ params["out"]["w"] + params["out"]["b"]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classification_task(
    name: str, data: Dataset, model: str, batch_size: int = PAPER_BATCH, l2: float = PAPER_L2
) -> Task:
  """Softmax classification of `data` with `model` in {"logreg", "mlp", "cnn"}.

  Minibatches are drawn without replacement within an epoch (a fresh permutation
  per epoch, from the run's data key); the remainder of an epoch is dropped. A batch
  is the vector of its example indices.
  """
  n_in = int(np.prod(data.x_train.shape[1:]))
  k = data.num_classes
  if model == "logreg":
    init = lambda key: [_dense_init(key, n_in, k)]
    apply = _mlp_apply
  elif model == "mlp":
    hidden = 100 if data.name == "digits" else 1000  # the paper's MLP: 784-1000-1000-10

    def init(key):
      k1, k2, k3 = jax.random.split(key, 3)
      return [_dense_init(k1, n_in, hidden), _dense_init(k2, hidden, hidden),
              _dense_init(k3, hidden, k)]

    apply = _mlp_apply
  elif model == "cnn":
    init = lambda key: _cnn_init(key, data.x_train.shape[1:], k)
    apply = _cnn_apply
  else:
    raise ValueError(f"`model` must be 'logreg', 'mlp' or 'cnn', got {model!r}.")

  n = data.x_train.shape[0]
  per_epoch = max(n // batch_size, 1)
  batch_size = min(batch_size, n)

  def loss(params, idx):
    return _cross_entropy(apply(params, data.x_train[idx]), data.y_train[idx])

  def stream(key, steps):
    epochs = -(-steps // per_epoch)
    perms = jnp.argsort(jax.random.uniform(key, (epochs, n)), axis=-1)
    return perms[:, : per_epoch * batch_size].reshape(-1, batch_size)[:steps]

  def evaluate(params):
    train_loss = _cross_entropy(apply(params, data.x_train), data.y_train)
    acc = jnp.mean(jnp.argmax(apply(params, data.x_test), -1) == data.y_test)
    return train_loss, acc

  return Task(name, init, loss, stream, evaluate, l2)


def quadratic_task(
    name: str, dim: int = 50, condition: float = 1e4, noise: float = 0.0, lam_max: float = 1.0
) -> Task:
  """`f(x) = ½ xᵀ Q Λ Qᵀ x`, eigenvalues log-spaced in [λmax/κ, λmax], a fixed rotation Q.

  With `noise > 0` the gradient is `∇f(x) + σ ε`, ε ~ N(0, I) (a stochastic
  quadratic whose stationary loss shrinks with the step size). The reported loss is
  the noiseless `f`; the start is `x0 ~ N(0, I)` from the run's seed.
  """
  lam = jnp.asarray(np.logspace(-math.log10(condition), 0, dim) * lam_max, jnp.float32)
  q, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))
  q = jnp.asarray(q, jnp.float32)

  def f(x):
    z = q.T @ x
    return 0.5 * jnp.sum(lam * z * z)

  def loss(x, eps):
    # The noise enters the gradient only: d/dx (σ εᵀ x) = σ ε, value unchanged.
    return f(x) + noise * jnp.dot(jax.lax.stop_gradient(eps), x - jax.lax.stop_gradient(x))

  return Task(
      name,
      init=lambda key: jax.random.normal(key, (dim,)),
      loss=loss,
      stream=lambda key, steps: jax.random.normal(key, (steps, dim)),
      evaluate=lambda x: (f(x), jnp.asarray(jnp.nan)),
  )


def rosenbrock_task(name: str = "rosenbrock") -> Task:
  """`f(x, y) = (1 - x)² + 100 (y - x²)²` from `(-1.2, 1) + 0.1 N(0, I)`; minimum 0 at (1, 1)."""

  def f(p):
    return (1 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

  return Task(
      name,
      init=lambda key: jnp.array([-1.2, 1.0]) + 0.1 * jax.random.normal(key, (2,)),
      loss=lambda p, _: f(p),
      stream=lambda key, steps: jnp.zeros((steps,)),
      evaluate=lambda p: (f(p), jnp.asarray(jnp.nan)),
  )


TASK_NAMES = (
    "digits_logreg", "digits_mlp", "digits_cnn", "quadratic_ill", "quadratic_noisy", "rosenbrock"
)


def make_task(name: str, dataset: str = "digits", batch_size: int = PAPER_BATCH) -> Task:
  """A task of `TASK_NAMES` by name; the `digits_*` ones use `dataset` (digits/mnist/cifar10)."""
  if name.startswith("digits_"):
    data = _DATA_CACHE.get(dataset) or _DATA_CACHE.setdefault(dataset, load_dataset(dataset))
    model = name.split("_", 1)[1]
    label = name if dataset == "digits" else f"{dataset}_{model}"
    return classification_task(label, data, model, batch_size)
  if name == "quadratic_ill":
    return quadratic_task(name, condition=1e4)
  if name == "quadratic_noisy":
    return quadratic_task(name, condition=1e2, noise=0.1)
  if name == "rosenbrock":
    return rosenbrock_task(name)
  raise ValueError(f"`task` must be one of {TASK_NAMES}, got {name!r}.")


_DATA_CACHE: dict[str, Dataset] = {}


# ---------------------------------------------------------------------------------------
# Methods.


@dataclasses.dataclass(frozen=True)
class Method:
  """An optimizer family: `make(α0)` builds it (α0 may be traced: it is vmapped).

  `uses_alpha=False` marks a learning-rate-free method run at its defaults (its row
  is one value, repeated over the α0 columns). `eval_params(state, params)` gives
  the parameters to evaluate (schedule-free evaluates its averaged iterate).
  """

  name: str
  make: Callable[[Any], optax.GradientTransformation]
  uses_alpha: bool = True
  learns_alpha: bool = False
  eval_params: Callable[[Any, Any], Any] | None = None


def _schedule_free_eval(state: Any, params: Any) -> Any:
  kind = optax.contrib.ScheduleFreeState
  sf = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, kind))
        if isinstance(s, kind)]
  return optax.contrib.schedule_free_eval_params(sf[0], params)


def _hd(factory: Callable, rule: str, **kwargs: Any) -> Callable[[Any], Any]:
  return lambda a: factory(a, rule=rule, **kwargs)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("sgd", lambda a: optax.sgd(a)),
        Method("sgdn", lambda a: optax.sgd(a, momentum=0.9, nesterov=True)),
        Method("adam", lambda a: optax.adam(a)),
        Method("sgd_hd", lambda a: hyperoptax.sgd_hd(a), learns_alpha=True),
        Method("sgdn_hd", lambda a: hyperoptax.sgd_hd(a, momentum=0.9, nesterov=True),
               learns_alpha=True),
        Method("adam_hd", lambda a: hyperoptax.adam_hd(a), learns_alpha=True),
        Method("sgd_hd_mult", _hd(hyperoptax.sgd_hd, "multiplicative"), learns_alpha=True),
        Method("sgd_hd_log", _hd(hyperoptax.sgd_hd, "log"), learns_alpha=True),
        Method("adam_hd_mult", _hd(hyperoptax.adam_hd, "multiplicative"), learns_alpha=True),
        Method("adam_hd_log", _hd(hyperoptax.adam_hd, "log"), learns_alpha=True),
        Method("adam_hd_log_adam",
               _hd(hyperoptax.adam_hd, "log", hyper_optimizer=optax.adam(0.02)),
               learns_alpha=True),
        Method("auto_adam_hd", lambda a: hyperoptax.auto_adam_hd(a), learns_alpha=True),
        Method("adam_hd_mult_leaf",
               _hd(hyperoptax.adam_hd, "multiplicative", granularity="leaf"),
               learns_alpha=True),
        Method("prodigy", lambda a: optax.contrib.prodigy(), uses_alpha=False),
        Method("dog", lambda a: optax.contrib.dog(), uses_alpha=False),
        Method("dowg", lambda a: optax.contrib.dowg(), uses_alpha=False),
        Method("mechanize_adam", lambda a: optax.contrib.mechanize(optax.adam(1.0)),
               uses_alpha=False),
        Method("dadapt_adamw", lambda a: optax.contrib.dadapt_adamw(), uses_alpha=False),
        Method("cocob", lambda a: optax.contrib.cocob(), uses_alpha=False),
        Method("schedule_free_adamw", lambda a: optax.contrib.schedule_free_adamw(a),
               eval_params=_schedule_free_eval),
    ]
}


def mean_learning_rate(state: Any) -> jax.Array:
  """The learned α as one number: itself (global), or its mean over groups/elements."""
  lr = hyperoptax.get_learning_rate(state)
  leaves = jax.tree.leaves(lr)
  return jnp.mean(jnp.concatenate([jnp.ravel(x) for x in leaves]))


# ---------------------------------------------------------------------------------------
# The runner.


def train_run(task: Task, method: Method, alpha: Any, seed: Any, steps: int) -> dict:
  """One training run of `task` with `method` from α0 = `alpha` (traceable).

  Params are drawn with `seed` and so are the minibatches (all methods and α0 see the
  same data order). Returns `losses` (per step, before the update), `lrs` (the learned
  α per step, NaN for methods that learn none), `final_loss` and `accuracy`.
  """
  key = jax.random.PRNGKey(seed)
  init_key, data_key = jax.random.split(key)
  params = task.init(init_key)
  tx = method.make(alpha)
  if task.l2:
    tx = optax.chain(optax.add_decayed_weights(task.l2), tx)
  state = tx.init(params)

  def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    lr = mean_learning_rate(state) if method.learns_alpha else jnp.asarray(jnp.nan)
    return (params, state), (loss, lr)

  (params, state), (losses, lrs) = jax.lax.scan(
      step, (params, state), task.stream(data_key, steps)
  )
  if method.eval_params is not None:
    params = method.eval_params(state, params)
  final_loss, accuracy = task.evaluate(params)
  return {"losses": losses, "lrs": lrs, "final_loss": final_loss, "accuracy": accuracy}


def run(
    task: Task,
    method: Method,
    alphas: Sequence[float],
    seeds: Sequence[int],
    steps: int,
) -> dict[str, np.ndarray]:
  """Trains `task` with `method` for every (α0, seed) pair as one jitted program.

  The program is `jit(vmap_α0(vmap_seed(scan_steps(step))))`; each run starts from
  params drawn with its seed and sees minibatches drawn with the same seed (so all
  methods and α0 see the same data order).

  Returns:
    A dict of NumPy arrays with leading axes (α0, seed): `losses` (steps; the
    minibatch loss at each step, before the update), `lrs` (steps; the learned α,
    NaN for methods that learn none), `final_loss` (full training loss at the end),
    `accuracy` (held-out, NaN for tasks without one), and `seconds` (wall time of
    compile + run).
  """
  def single(alpha, seed):
    return train_run(task, method, alpha, seed, steps)

  program = jax.jit(jax.vmap(jax.vmap(single, in_axes=(None, 0)), in_axes=(0, None)))
  start = time.perf_counter()
  out = program(jnp.asarray(alphas, jnp.float32), jnp.asarray(seeds, jnp.uint32))
  out = jax.tree.map(np.asarray, jax.block_until_ready(out))
  out["seconds"] = np.asarray(time.perf_counter() - start)
  return out


# ---------------------------------------------------------------------------------------
# Writers.


def metadata(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command, library versions and machine, recorded in every result file."""
  import importlib.metadata as md

  def version(pkg):
    try:
      return md.version(pkg)
    except md.PackageNotFoundError:
      return None

  argv = list(sys.argv if argv is None else argv)
  return {
      "command": "python " + " ".join(argv),
      "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
      "versions": {
          "python": platform.python_version(),
          **{p: version(p) for p in ("hyperoptax", "jax", "jaxlib", "optax", "numpy")},
      },
      "machine": {
          "platform": platform.platform(),
          "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(),
          "jax_backend": jax.default_backend(),
          "jax_devices": [str(d) for d in jax.devices()],
      },
  }


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None  # JSON has no NaN/inf: null
  if isinstance(x, np.integer):
    return int(x)
  return x


def make_parent_folder(path: str) -> str:
  """Creates the folders above `path` (a file about to be written); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return path


def _open_for_writing(path: str):
  """`open(path, "w")`, creating the folders above `path` first."""
  return open(make_parent_folder(path), "w")


def write_json(path: str, payload: dict[str, Any], argv: Sequence[str] | None = None) -> str:
  """Writes `{"meta": metadata(argv), **payload}` (NaN/inf become null)."""
  with _open_for_writing(path) as f:
    json.dump(_jsonable({"meta": metadata(argv), **payload}), f, indent=1)
  return path


def write_text(path: str, text: str) -> str:
  """Writes `text` (a markdown report) to `path`, creating its folder."""
  with _open_for_writing(path) as f:
    f.write(text)
  return path


def meta_markdown(meta: dict[str, Any]) -> str:
  """A few markdown lines saying how the results were produced."""
  v = meta["versions"]
  m = meta["machine"]
  return (
      f"Command: `{meta['command']}`  \n"
      f"Versions: hyperoptax {v['hyperoptax']}, jax {v['jax']}, optax {v['optax']}, "
      f"Python {v['python']}  \n"
      f"Machine: {m['platform']}, {m['cpu_count']} CPUs, JAX backend {m['jax_backend']}, "
      f"date {meta['date_utc']} UTC\n"
  )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; floats in 4 significant digits, NaN as 'nan'."""
  def fmt(x):
    if isinstance(x, (float, np.floating)):
      return "nan" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def progress(iterable: Any, **kwargs: Any) -> Any:
  """A tqdm progress bar (to stderr)."""
  from tqdm.auto import tqdm

  return tqdm(iterable, **kwargs)


def smooth(x: np.ndarray, window: int) -> np.ndarray:
  """Means over consecutive windows along the last axis (e.g. per-epoch averages)."""
  n = x.shape[-1] // window
  return x[..., : n * window].reshape(*x.shape[:-1], n, window).mean(-1)
