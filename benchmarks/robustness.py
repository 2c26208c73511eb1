"""Robustness to the initial learning rate α0: hyperoptax vs Optax vs learning-rate-free optimizers.

For every task and method, α0 ∈ {1e-6, 1e-5, …, 1} × seeds is ONE jitted program
(vmapped). Reports, per task, the final training loss (mean over seeds) and the
held-out accuracy at every α0 as a markdown table, and a heatmap PNG (methods ×
α0, colour = log10 final loss). The learning-rate-free `optax.contrib` methods run
at their defaults (one value per row). A run that diverged (non-finite loss) counts
as +inf in the summaries.

Also summarises the recommendation question: for each α0-using method, the worst
final loss over α0 ∈ [1e-6, 1e-1] against the best-tuned Adam (min over α0), and
the worst held-out accuracy against Adam's best.

    python benchmarks/robustness.py            # full (see --steps, --seeds)
    python benchmarks/robustness.py --quick    # seconds, for the tests
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

ALPHAS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
DEFAULT_METHODS = [
    "sgd", "sgdn", "adam", "sgd_hd", "sgd_hd_mult", "sgd_hd_log", "adam_hd", "adam_hd_mult",
    "adam_hd_log", "adam_hd_log_adam", "prodigy", "dog", "dowg", "mechanize_adam",
    "dadapt_adamw", "cocob", "schedule_free_adamw",
]


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per α0 (default 3)")
  p.add_argument("--tasks", nargs="+", default=list(H.TASK_NAMES), choices=H.TASK_NAMES)
  p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(H.METHODS))
  p.add_argument("--dataset", default="digits", help="digits (offline), mnist or cifar10 (tfds)")
  p.add_argument("--out", default=os.path.join(H.RESULTS_DIR, "robustness"),
                 help="output stem: writes STEM.json, STEM.md, STEM.png")
  p.add_argument("--quick", action="store_true", help="1 task, 3 methods, 2 α0, 20 steps, 1 seed")
  return p.parse_args(argv)


def finite_or_inf(x):
  x = np.asarray(x, float)
  return np.where(np.isfinite(x), x, np.inf)


def main(argv=None):
  args = parse_args(argv)
  alphas = ALPHAS
  if args.quick:
    args.steps, args.seeds = 20, 1
    args.tasks = ["rosenbrock"]
    args.methods = ["adam", "adam_hd", "prodigy"]
    alphas = [1e-4, 1e-1]
  seeds = list(range(args.seeds))
  results = {}
  jobs = [(t, m) for t in args.tasks for m in args.methods]
  bar = H.progress(jobs, desc="robustness", unit="program")
  for task_name, method_name in bar:
    bar.set_postfix_str(f"{task_name} {method_name}")
    method = H.METHODS[method_name]
    task = H.make_task(task_name, args.dataset)
    grid = alphas if method.uses_alpha else [1.0]
    out = H.run(task, method, grid, seeds, args.steps)
    # Mean over seeds; a diverged seed makes the mean +inf.
    loss = finite_or_inf(out["final_loss"]).mean(1)
    acc = 100 * out["accuracy"].mean(1)
    if not method.uses_alpha:
      loss, acc = np.repeat(loss, len(alphas)), np.repeat(acc, len(alphas))
    results.setdefault(task_name, {})[method_name] = {
        "final_loss": loss, "accuracy": acc, "seconds": float(out["seconds"]),
        "final_loss_per_seed": out["final_loss"], "uses_alpha": method.uses_alpha,
        "alpha_final": (out["lrs"][:, :, -1].mean(1) if method.learns_alpha else None),
    }
    if method_name == args.methods[-1]:  # a task is complete: write what we have so far
      summary, text = write(results, alphas, seeds, args)
  print(text)
  return results, summary


def write(results, alphas, seeds, args):
  """Writes STEM.json, STEM.md and STEM.png for the tasks done so far."""
  summary = summarise(results, alphas)
  meta = H.metadata()
  H.write_json(args.out + ".json", {
      "alphas": alphas, "steps": args.steps, "seeds": seeds, "dataset": args.dataset,
      "results": results, "summary": summary,
  })
  text = report(results, summary, alphas, args, meta)
  H.write_text(args.out + ".md", text)
  heatmap(results, alphas, args.out + ".png")
  return summary, text


def summarise(results, alphas):
  """Worst final loss over α0 ≤ 0.1 per method vs the best-tuned Adam, per task."""
  in_range = [i for i, a in enumerate(alphas) if a <= 0.1 + 1e-12]
  summary = {}
  for task_name, per_method in results.items():
    ref = per_method.get("adam")
    best_adam = float(np.min(ref["final_loss"])) if ref else np.nan
    acc = np.asarray(ref["accuracy"], float) if ref else np.array([np.nan])
    best_adam_acc = float(np.max(acc)) if np.isfinite(acc).any() else np.nan
    rows = {}
    for name, r in per_method.items():
      worst = float(np.max(r["final_loss"][in_range]))
      rows[name] = {
          "worst_loss": worst, "best_loss": float(np.min(r["final_loss"])),
          "ratio_to_best_adam": worst / best_adam if best_adam > 0 else np.inf,
          "worst_accuracy": float(np.min(r["accuracy"][in_range])),
          "accuracy_gap": best_adam_acc - float(np.min(r["accuracy"][in_range])),
      }
    summary[task_name] = {"best_adam_loss": best_adam, "best_adam_accuracy": best_adam_acc,
                          "methods": rows}
  return summary


def report(results, summary, alphas, args, meta):
  lines = [f"# Robustness to α0: {args.steps} steps, mean of {args.seeds} seed(s)\n",
           H.meta_markdown(meta)]
  lines.append(
      "Final training loss (mean over seeds; inf = diverged) at each α0; the last "
      "columns: the worst loss over α0 ∈ [1e-6, 1e-1] and its ratio to the best-tuned "
      "Adam's loss (best over all α0). Learning-rate-free methods (marked *) ignore α0.\n")
  for task_name, per_method in results.items():
    has_acc = task_name.startswith("digits")
    lines.append(f"\n## {task_name}\n")
    header = ["method", *[f"{a:g}" for a in alphas], "worst ≤0.1", "÷ best Adam"]
    rows = []
    for name, r in per_method.items():
      s = summary[task_name]["methods"][name]
      rows.append([name + ("" if r["uses_alpha"] else "*"), *map(float, r["final_loss"]),
                   s["worst_loss"], s["ratio_to_best_adam"]])
    lines.append(H.markdown_table(header, rows))
    if has_acc:
      lines.append("\nHeld-out accuracy (%):\n\n")
      header = ["method", *[f"{a:g}" for a in alphas], "worst ≤0.1", "best Adam − worst"]
      rows = [[name + ("" if r["uses_alpha"] else "*"), *map(float, r["accuracy"]),
               summary[task_name]["methods"][name]["worst_accuracy"],
               summary[task_name]["methods"][name]["accuracy_gap"]]
              for name, r in per_method.items()]
      lines.append(H.markdown_table(header, rows))
  return "".join(lines)


def heatmap(results, alphas, path):
  plt = H.pyplot()
  tasks = list(results)
  methods = list(next(iter(results.values())))
  cols = min(3, len(tasks))
  rows_ = -(-len(tasks) // cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 0.32 * len(methods) * rows_ + 2),
                           squeeze=False)
  for ax, task_name in zip(axes.flat, tasks, strict=False):
    z = np.array([results[task_name][m]["final_loss"] for m in methods], float)
    logz = np.log10(np.clip(z, 1e-8, 1e8))
    im = ax.imshow(logz, aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    ax.set_title(f"{task_name}: log10 final loss", fontsize=9)
    ax.set_xlabel("α0", fontsize=8)
    for i, j in np.argwhere(~np.isfinite(z)):
      ax.text(j, i, "×", ha="center", va="center", color="red", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  fig.suptitle("Final training loss over α0 (× = diverged; LR-free methods ignore α0)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main()
