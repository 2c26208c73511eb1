"""The hyperoptax demo: does learning the learning rate online help? (under 2 minutes on 2 CPUs)

Trains a logistic regression and a small MLP (64-100-100-10) on scikit-learn's
bundled digits with the paper's protocol (Baydin et al., ICLR 2018): α0 = 1e-3,
batch 128, L2 1e-4 added to the gradient, β = 1e-3 for SGD-HD/SGDN-HD and 1e-7 for
Adam-HD; each hypergradient optimizer against its Optax base optimizer. Prints a
markdown table (final training loss, held-out accuracy, learned α range) and saves
a PNG of the loss curves and α trajectories.

    pip install -e ".[demo]" && python benchmarks/demo.py
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

PAIRS = [("sgd", "sgd_hd"), ("sgdn", "sgdn_hd"), ("adam", "adam_hd")]
LABELS = {"sgd": "SGD", "sgd_hd": "SGD-HD", "sgdn": "SGDN", "sgdn_hd": "SGDN-HD",
          "adam": "Adam", "adam_hd": "Adam-HD"}
TASKS = {"digits_logreg": "logistic regression", "digits_mlp": "MLP 64-100-100-10"}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
  p.add_argument("--seeds", type=int, default=3, help="seeds, averaged (default 3)")
  p.add_argument("--out", default=os.path.join(H.RESULTS_DIR, "demo.png"),
                 help="PNG path (a .json and .md are written beside it)")
  p.add_argument("--dataset", default="digits", help="digits (offline), mnist or cifar10 (tfds)")
  p.add_argument("--quick", action="store_true",
                 help="2 epochs, one seed, logistic regression only (for the tests)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  tasks = TASKS
  if args.quick:
    args.epochs, args.seeds = 2, 1
    tasks = {"digits_logreg": TASKS["digits_logreg"]}
  runs, per_epoch = train_pairs(tasks, args.epochs, args.seeds, args.dataset, "demo")
  rows = []
  for (task_name, method), out in runs.items():
    lrs = out["lrs"][0].mean(0)  # mean over seeds, (steps,)
    rows.append([
        TASKS[task_name], LABELS[method], float(out["final_loss"].mean()),
        100 * float(out["accuracy"].mean()),
        *(("—",) * 3 if np.isnan(lrs).all() else
          (float(lrs.min()), float(lrs.max()), float(lrs[-1]))),
    ])
  header = ["task", "method", "final train loss", "held-out acc. %", "α min", "α max", "α final"]
  table = H.markdown_table(header, rows)
  meta = H.metadata()
  stem = os.path.splitext(args.out)[0]
  text = (f"# Demo: {args.epochs} epochs, α0 = 1e-3, batch 128, L2 1e-4, "
          f"mean of {args.seeds} seed(s)\n\n{H.meta_markdown(meta)}\n{table}")
  print("\n" + table)
  H.write_text(stem + ".md", text)
  H.write_json(stem + ".json", {"epochs": args.epochs, "seeds": args.seeds, "header": header,
                                "rows": rows})
  plot(runs, per_epoch, args.out, tasks)
  print(f"saved {args.out} (and {stem}.md, {stem}.json)")
  return rows


def train_pairs(tasks, epochs, seeds, dataset, desc, pairs=PAIRS):
  """Runs every optimizer of `PAIRS` at the paper's α0 on each task; one program each.

  Returns `({(task, method): harness.run output}, steps per epoch)`.
  """
  runs = {}
  per_epoch = H.load_dataset(dataset).x_train.shape[0] // H.PAPER_BATCH
  jobs = [(t, m) for t in tasks for pair in pairs for m in pair]
  bar = H.progress(jobs, desc=desc, unit="run")
  for task_name, method in bar:
    bar.set_postfix_str(f"{task_name} {method}")
    task = H.make_task(task_name, dataset)
    runs[(task_name, method)] = H.run(task, H.METHODS[method], [H.PAPER_ALPHA0],
                                      list(range(seeds)), epochs * per_epoch)
  return runs, per_epoch


def plot(runs, per_epoch, path, tasks=TASKS):
  """Loss curves (top row, per-epoch mean minibatch loss) and α trajectories (bottom)."""
  plt = H.pyplot()
  fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
  colors = {"sgd": "C0", "sgdn": "C1", "adam": "C2"}
  for j, task_name in enumerate(tasks):
    for base, hd in [p for p in PAIRS if (task_name, p[1]) in runs]:
      for method, style in ((base, "--"), (hd, "-")):
        out = runs[(task_name, method)]
        loss = H.smooth(out["losses"][0].mean(0), per_epoch)
        epochs = np.arange(1, len(loss) + 1)
        axes[0, j].plot(epochs, loss, style, color=colors[base], label=LABELS[method])
        if method == hd:
          axes[1, j].plot(np.arange(out["lrs"].shape[-1]) / per_epoch, out["lrs"][0].mean(0),
                          color=colors[base], label=LABELS[method])
    axes[0, j].set(title=tasks[task_name], xlabel="epoch", ylabel="training loss (epoch mean)",
                   yscale="log")
    axes[1, j].set(xlabel="epoch", ylabel="learned α", yscale="log")
    axes[0, j].legend(fontsize=8)
    axes[1, j].legend(fontsize=8)
  fig.suptitle("digits, α0 = 1e-3: Optax optimizers (dashed) vs hypergradient versions (solid)")
  fig.tight_layout()
  fig.savefig(H.make_parent_folder(path), dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
