"""Stacked hyper-optimizers on the digits MLP: Adam vs Adam/SGD vs Adam/Adam vs Adam/Adam/SGD.

The protocol of Chandra et al. (NeurIPS 2022, "Gradient Descent: The Ultimate
Optimizer"), on scikit-learn's bundled digits (offline): an MLP (64-100-100-10, ReLU,
the harness's `digits_mlp` without weight decay) trained with minibatches of 128 for a
fixed number of epochs, from a too-small (α0 = 1e-5) and a good (α0 = 1e-2) initial
learning rate, several seeds. "X/Y" means optimizer X whose hyperparameters (α, β1, β2
for Adam) are learned online by Y; "X/Y/Z" also learns Y's with Z:

* Adam:          `optax.adam(α0)`
* Adam/SGD:      `hyperoptimize(optax.adam, hyper_optimizer=optax.sgd(κ), ...)`
* Adam/Adam:     `hyperoptimize(optax.adam, hyper_optimizer=optax.adam(κ), ...)`
* Adam/Adam/SGD: `hyperoptimize(optax.adam, hyper_optimizer=hyperoptimize(optax.adam,
  hyper_optimizer=optax.sgd(κ'), learning_rate=κ, ...), ...)`

α is learned in log space, β1 and β2 in logit space (the defaults). The hyper-step
sizes are fixed once for both α0 (see `--help`), not tuned per α0. Each method is one
jitted program over all (α0, seed) pairs (`harness.run`). Also reported: optimizer
state bytes against `optax.adam` (k learned names cost k params-sized tangents).

Writes benchmarks/results/stacking.{json,md,png}. Run from the repository root:
`python benchmarks/stacking.py` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from hyperoptax import hyperoptimize  # noqa: E402

ADAM_NAMES = ("learning_rate", "b1", "b2")


def methods(args: argparse.Namespace) -> dict[str, harness.Method]:
  """The four optimizers, each a function of α0."""
  learn = tuple(args.learn)

  def adam_over(hyper):
    return lambda a: hyperoptimize(optax.adam, hyper_optimizer=hyper, learn=learn, learning_rate=a)

  middle = hyperoptimize(
      optax.adam, hyper_optimizer=optax.sgd(args.top_sgd), learn=ADAM_NAMES,
      learning_rate=args.hyper_adam,
  )
  ms = [
      harness.Method("Adam", lambda a: optax.adam(a)),
      harness.Method("Adam/SGD", adam_over(optax.sgd(args.hyper_sgd)), learns_alpha=True),
      harness.Method("Adam/Adam", adam_over(optax.adam(args.hyper_adam)), learns_alpha=True),
      harness.Method("Adam/Adam/SGD", adam_over(middle), learns_alpha=True),
  ]
  return {m.name: m for m in ms}


def state_bytes(tx: optax.GradientTransformation, params) -> int:
  shapes = jax.eval_shape(tx.init, params)
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--alphas", type=float, nargs="+", default=[1e-5, 1e-2])
  parser.add_argument("--learn", nargs="+", default=list(ADAM_NAMES),
                      help="Adam hyperparameters learned at the bottom level.")
  parser.add_argument("--hyper-sgd", type=float, default=1.0,
                      help="κ of Adam/SGD (SGD on log α, logit β: steps scale with α).")
  parser.add_argument("--hyper-adam", type=float, default=0.01,
                      help="κ of Adam/Adam, and the initial α of the middle Adam of Adam/Adam/SGD.")
  parser.add_argument("--top-sgd", type=float, default=10.0,
                      help="κ' of Adam/Adam/SGD (SGD on the middle Adam's log α, logit β).")
  parser.add_argument("--out", default=os.path.join(harness.RESULTS_DIR, "stacking"))
  args = parser.parse_args(argv)

  data = harness.load_dataset("digits")
  task = harness.classification_task("digits_mlp", data, "mlp", harness.PAPER_BATCH, l2=0.0)
  steps_per_epoch = data.x_train.shape[0] // harness.PAPER_BATCH
  steps = args.epochs * steps_per_epoch
  seeds = list(range(args.seeds))
  params = task.init(jax.random.PRNGKey(0))
  n_params = sum(x.size for x in jax.tree.leaves(params))

  results, rows, curves = {}, [], {}
  base_bytes = state_bytes(optax.adam(1e-3), params)
  for name, method in methods(args).items():
    out = harness.run(task, method, args.alphas, seeds, steps)
    nbytes = state_bytes(method.make(1e-3), params)
    results[name] = {
        "final_train_loss": out["final_loss"], "heldout_accuracy": out["accuracy"],
        "final_learning_rate": out["lrs"][..., -1], "seconds": float(out["seconds"]),
        "state_bytes": nbytes,
    }
    curves[name] = harness.smooth(out["losses"], steps_per_epoch).mean(1)  # (α0, epochs)
    for i, a in enumerate(args.alphas):
      loss, acc = out["final_loss"][i], out["accuracy"][i]
      lr = out["lrs"][i, :, -1]
      rows.append([
          f"{a:g}", name, f"{loss.mean():.4g} ± {loss.std():.2g}",
          f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}",
          "—" if np.all(np.isnan(lr)) else f"{np.mean(lr):.3g}",
          f"{nbytes / base_bytes:.2f}×",
      ])
    print(f"{name}: {float(out['seconds']):.1f}s", flush=True)

  payload = {
      "protocol": {
          "task": "digits MLP 64-100-100-10 (ReLU), standardised, 80/20 split, no weight decay",
          "batch_size": harness.PAPER_BATCH, "epochs": args.epochs, "steps": steps,
          "seeds": seeds, "alphas": args.alphas, "learn": args.learn,
          "hyper_sgd": args.hyper_sgd, "hyper_adam": args.hyper_adam, "top_sgd": args.top_sgd,
          "n_params": n_params, "adam_state_bytes": base_bytes,
      },
      "results": results,
  }
  command = ["benchmarks/stacking.py", *(sys.argv[1:] if argv is None else argv)]
  path = harness.write_json(args.out + ".json", payload, command)
  meta = harness.metadata(command)

  plt = harness.pyplot()
  fig, axes = plt.subplots(1, len(args.alphas), figsize=(5 * len(args.alphas), 3.5), squeeze=False)
  for i, a in enumerate(args.alphas):
    ax = axes[0, i]
    for name, c in curves.items():
      ax.semilogy(np.arange(1, c.shape[1] + 1), c[i], label=name)
    ax.set(title=f"digits MLP, α0 = {a:g}", xlabel="epoch", ylabel="train minibatch loss")
    ax.legend()
  fig.tight_layout()
  fig.savefig(args.out + ".png", dpi=120)

  md = [
      "# Stacked hyper-optimizers on the digits MLP\n",
      f"MLP 64-100-100-10 on scikit-learn digits (1437 train / 360 held out), batch "
      f"{harness.PAPER_BATCH}, {args.epochs} epochs ({steps} steps), seeds {seeds}; mean ± std "
      f"over seeds. Learned at the bottom level: {', '.join(args.learn)} (α in log space, "
      f"β in logit space). Hyper-steps: Adam/SGD κ = {args.hyper_sgd:g}; Adam/Adam "
      f"κ = {args.hyper_adam:g}; Adam/Adam/SGD: middle Adam α0 = {args.hyper_adam:g} (its "
      f"α, β1, β2 learned by SGD with κ' = {args.top_sgd:g}). \"state\" is optimizer-state "
      f"bytes relative to `optax.adam` ({base_bytes} bytes for {n_params} params).\n",
      harness.markdown_table(
          ["α0", "optimizer", "final train loss", "held-out acc. (%)", "final α", "state"], rows
      ),
      "\n![loss curves](stacking.png)\n\n",
      harness.meta_markdown(meta),
  ]
  print(open(harness.write_text(args.out + ".md", "\n".join(md))).read())
  print("wrote", path)


if __name__ == "__main__":
  main()
