"""Overhead of learning α: step time and optimizer-state bytes of hyperoptax vs Optax.

1. Optimizer update alone (`tx.update` + `optax.apply_updates`, jitted) at 1M and
   10M float32 parameters (a pytree of 8 leaves), for adam_hd vs optax.adam, sgd_hd
   vs optax.sgd and adamw_hd vs optax.adamw.
2. A whole training step (loss, gradient, update) of the paper's MLP
   784-1000-1000-10, batch 128, random data.
3. Sweep speed: 8 values of α0 as ONE vmapped program vs 8 sequential calls of a
   jitted single run (compiled once, α0 an argument), and vs the plain Python loop
   that builds the optimizer from each α0 and jits a fresh run for it (compiled per
   α0), compilation included on both sides — digits MLP, adam_hd.

Timing: every program is compiled and warmed up first, then the methods are timed
interleaved (method A, B, C, … in each repetition) with `block_until_ready`; we
report medians and, per pair, the median and interquartile range of the per-repetition
ratio HD/base (paired within a repetition, which cancels slow drifts of a shared machine).

    python benchmarks/overhead.py [--reps 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

import hyperoptax  # noqa: E402

PAIRS = {
    "adam": (lambda: optax.adam(1e-3), lambda: hyperoptax.adam_hd(1e-3)),
    "sgd": (lambda: optax.sgd(1e-3), lambda: hyperoptax.sgd_hd(1e-3)),
    "adamw": (lambda: optax.adamw(1e-3, weight_decay=1e-4),
              lambda: hyperoptax.adamw_hd(1e-3, weight_decay=1e-4)),
}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--reps", type=int, default=30, help="timed repetitions (default 30)")
  p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
  p.add_argument("--sweep-steps", type=int, default=300)
  p.add_argument("--out", default=os.path.join(H.RESULTS_DIR, "overhead"),
                 help="output stem: writes STEM.json, STEM.md")
  p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repetitions")
  return p.parse_args(argv)


def tree_bytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def make_params(n, key=0, leaves=8):
  keys = jax.random.split(jax.random.PRNGKey(key), leaves)
  return [0.01 * jax.random.normal(k, (int(n) // leaves,)) for k in keys]


def time_interleaved(fns, reps, warmup=3):
  """{name: list of seconds}; each fn() returns arrays; timed round-robin."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def all_finite_after(fns):
  """Whether every method's params are still finite after the timed steps.

  Donated runs keep training (α drifts on a fixed gradient); a run that diverged would
  time the cheaper skipped-step branch, so a non-finite result is flagged in the report.
  """
  return all(bool(jnp.all(jnp.isfinite(x))) for f in fns.values() for x in jax.tree.leaves(f()))


def pair_stats(times, base, hd):
  r = np.asarray(times[hd]) / np.asarray(times[base])
  return {
      "base_median_ms": 1e3 * float(np.median(times[base])),
      "hd_median_ms": 1e3 * float(np.median(times[hd])),
      "ratio_of_medians": float(np.median(times[hd]) / np.median(times[base])),
      "paired_ratio_median": float(np.median(r)),
      "paired_ratio_q25": float(np.percentile(r, 25)),
      "paired_ratio_q75": float(np.percentile(r, 75)),
  }


def _runner(step, params, state, donate, *args):
  """A no-argument call of `step(*args, params, state) -> (params, state)`.

  Donated: params and state are passed on from call to call (their buffers are reused,
  as in a training loop with `donate_argnums`). Not donated: the same inputs every call.
  """
  box = [params, state]

  def run():
    if donate:
      box[0], box[1] = step(*args, box[0], box[1])
      return box[0]
    return step(*args, params, state)

  return run


def update_only(n, reps, donate=False):
  params = make_params(n)
  grads = make_params(n, key=1)
  fns, states = {}, {}
  for name, (base, hd) in PAIRS.items():
    for label, make in ((name, base), (name + "_hd", hd)):
      tx = make()
      state = tx.init(params)

      def step(g, p, s, tx=tx):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      step = jax.jit(step, donate_argnums=(1, 2) if donate else ())
      p = jax.tree.map(jnp.copy, params) if donate else params
      fns[label] = _runner(step, p, state, donate, grads)
      states[label] = state
  p_bytes = tree_bytes(params)
  sizes = {label: tree_bytes(s) for label, s in states.items()}
  del states  # donated runs consume their initial state
  times = time_interleaved(fns, reps)
  out = {"finite": all_finite_after(fns)}
  for name in PAIRS:
    s = pair_stats(times, name, name + "_hd")
    sb, sh = sizes[name], sizes[name + "_hd"]
    s.update(state_bytes_base=sb, state_bytes_hd=sh, state_bytes_ratio=sh / max(sb, 1),
             extra_state_in_params=(sh - sb) / p_bytes)
    out[name] = s
  return out


def whole_step(reps, batch=128, sizes=(784, 1000, 1000, 10), donate=False):
  keys = jax.random.split(jax.random.PRNGKey(0), len(sizes))
  params = [H._dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=False)]
  x = jax.random.normal(keys[-1], (batch, sizes[0]))
  y = jax.random.randint(keys[-1], (batch,), 0, sizes[-1])

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(H._mlp_apply(p, x), y).mean()

  fns = {}
  for name, (base, hd) in PAIRS.items():
    for label, make in ((name, base), (name + "_hd", hd)):
      tx = make()
      state = tx.init(params)

      def step(p, s, tx=tx):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
      p = jax.tree.map(jnp.copy, params) if donate else params
      fns[label] = _runner(step, p, state, donate)
  times = time_interleaved(fns, reps)
  n = sum(x.size for x in jax.tree.leaves(params))
  return {"num_params": n, "finite": all_finite_after(fns),
          **{name: pair_stats(times, name, name + "_hd") for name in PAIRS}}


def sweep_speed(steps, reps, task_name="digits_mlp"):
  task = H.make_task(task_name)
  method = H.METHODS["adam_hd"]
  alphas = np.logspace(-6, -1, 8).astype(np.float32)
  # The same single run, jitted with α0 as an argument (compiled once, reused for each
  # α0), vs its vmap over the 8 values; compile times are reported separately.
  runner = _compiled_runner(task, method, steps)
  batched = jax.jit(jax.vmap(runner))
  one = jax.jit(runner)
  t0 = time.perf_counter()
  jax.block_until_ready(batched(jnp.asarray(alphas)))
  vmapped_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(one(jnp.asarray(alphas[0])))
  one_first = time.perf_counter() - t0
  tv, ts = [], []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(batched(jnp.asarray(alphas)))
    tv.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for a in alphas:
      jax.block_until_ready(one(jnp.asarray(a)))
    ts.append(time.perf_counter() - t0)
  # The loop a user writes first: a new optimizer (α0 a Python float) and a new jitted
  # run per α0, so each of the 8 runs compiles; timed once, against a fresh vmapped
  # program (compiled too, as its first call above).
  t0 = time.perf_counter()
  for a in alphas:
    jax.block_until_ready(jax.jit(lambda a=float(a): runner(a))())
  recompiled = time.perf_counter() - t0
  return {
      "task": task_name, "method": "adam_hd", "steps": steps, "num_alphas": len(alphas),
      "vmapped_s": float(np.median(tv)), "sequential_s": float(np.median(ts)),
      "speedup": float(np.median(ts) / np.median(tv)),
      "first_call_vmapped_s": vmapped_first, "first_call_single_s": one_first,
      "sequential_recompiled_s": recompiled,
      "speedup_vs_recompiled": recompiled / vmapped_first,
  }


def _compiled_runner(task, method, steps):
  """α0 -> final loss of one run (seed 0), for timing without recompiling per α0."""
  return lambda alpha: H.train_run(task, method, alpha, 0, steps)["final_loss"]


def main(argv=None):
  args = parse_args(argv)
  if args.quick:
    args.sizes, args.reps, args.sweep_steps = [1e4], 3, 5
  results = {"reps": args.reps}
  for donate, suffix in ((False, ""), (True, "_donated")):
    results["update_only" + suffix] = {
        f"{int(n)}": update_only(n, args.reps, donate)
        for n in H.progress(args.sizes, desc="update-only" + suffix)
    }
    print("whole MLP step" + suffix + " ...", file=sys.stderr)
    results["whole_step" + suffix] = whole_step(
        args.reps if not args.quick else 2,
        sizes=(784, 1000, 1000, 10) if not args.quick else (8, 4, 2), donate=donate,
    )
  print("sweep speed ...", file=sys.stderr)
  results["sweep"] = sweep_speed(args.sweep_steps, max(3, args.reps // 10),
                                 "quadratic_ill" if args.quick else "digits_mlp")
  meta = H.metadata()
  H.write_json(args.out + ".json", results)
  text = report(results, meta)
  H.write_text(args.out + ".md", text)
  print(text)
  return results


def _timing_cells(s):
  return [s["base_median_ms"], s["hd_median_ms"], s["ratio_of_medians"],
          f"{s['paired_ratio_median']:.3f} [{s['paired_ratio_q25']:.3f}, "
          f"{s['paired_ratio_q75']:.3f}]"]


def report(results, meta):
  lines = ["# Overhead of hyperoptax vs Optax\n\n", H.meta_markdown(meta),
           f"\n{results['reps']} interleaved repetitions after warm-up; medians; "
           "paired ratio = median [q25, q75] of per-repetition HD/base. Donated: params and "
           "state donated to the jitted step (`donate_argnums`), as in a training loop.\n\n"]
  header = ["setting", "pair", "base ms", "HD ms", "ratio of medians", "paired ratio [IQR]",
            "state bytes ratio", "extra state (× params)"]
  rows = []
  for suffix, how in (("", "not donated"), ("_donated", "donated")):
    for n, per in results["update_only" + suffix].items():
      for name in PAIRS:
        s = per[name]
        rows.append([f"update only, {int(n):,} params, {how}", f"{name}_hd / {name}",
                     *_timing_cells(s), s["state_bytes_ratio"], s["extra_state_in_params"]])
    ws = results["whole_step" + suffix]
    for name in PAIRS:
      rows.append([f"whole MLP step, {ws['num_params']:,} params, {how}",
                   f"{name}_hd / {name}", *_timing_cells(ws[name]), "", ""])
  lines.append(H.markdown_table(header, rows))
  diverged = [k for k, v in results.items() if isinstance(v, dict)
              for r in ([v] if "finite" in v else v.values())
              if isinstance(r, dict) and r.get("finite") is False]
  if diverged:
    lines.append(f"\n**Warning**: non-finite params after timing in {sorted(set(diverged))}.\n")
  sw = results["sweep"]
  lines.append(
      f"\nSweep speed ({sw['task']}, {sw['method']}, {sw['steps']} steps, {sw['num_alphas']} α0): "
      f"one vmapped program {sw['vmapped_s']:.3f} s vs {sw['num_alphas']} sequential jitted runs "
      f"{sw['sequential_s']:.3f} s → **{sw['speedup']:.2f}×** (both compiled once). "
      f"Compilation included: the vmapped program's first call {sw['first_call_vmapped_s']:.2f} s "
      f"vs a Python loop that builds the optimizer and jits a fresh run for each α0 "
      f"{sw['sequential_recompiled_s']:.2f} s → **{sw['speedup_vs_recompiled']:.2f}×**.\n")
  return "".join(lines)


if __name__ == "__main__":
  main()
