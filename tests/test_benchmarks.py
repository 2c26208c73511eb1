"""The benchmark harness and every benchmark entry point's `--quick` mode.

Numbers are not asserted here (they live in benchmarks/results/); what is asserted:
the vmapped runner reproduces a closed-form trajectory at every α0, every entry
point runs end to end and writes JSON/markdown/PNG carrying the command, versions
and machine, and the robustness summary is the stated function of its results.
"""

import json
import math
import os
import sys

import jax
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import demo  # noqa: E402
import harness as H  # noqa: E402
import overhead  # noqa: E402
import paper  # noqa: E402
import robustness  # noqa: E402


def _check_meta(meta, argv_fragment):
  assert argv_fragment in meta["command"]
  assert meta["versions"]["jax"] == jax.__version__
  assert meta["versions"]["optax"] and meta["versions"]["hyperoptax"]
  assert meta["machine"]["cpu_count"] == os.cpu_count()
  assert meta["machine"]["platform"]


def test_runner_matches_closed_form_gd_on_quadratic():
  # Gradient descent on f(x) = ½ xᵀAx: x_T = (I - αA)^T x0, for each α0 of the vmap.
  task = H.quadratic_task("q", dim=6, condition=10.0)
  alphas, steps = [0.1, 0.5, 1.5], 15
  out = H.run(task, H.METHODS["sgd"], alphas, [0, 1], steps)
  # Recover A from the task's own loss by its Hessian-free definition f(e_i + e_j).
  loss = jax.jit(lambda x: task.evaluate(x)[0])
  f = lambda x: float(loss(x))
  n = 6
  eye = np.eye(n, dtype=np.float32)
  a = np.array([[f(eye[i] + eye[j]) - f(eye[i]) - f(eye[j]) for j in range(n)] for i in range(n)])
  a[np.diag_indices(n)] = [2 * f(eye[i]) for i in range(n)]
  for s in (0, 1):
    x0 = np.asarray(task.init(jax.random.split(jax.random.PRNGKey(s))[0]), np.float64)
    assert out["losses"][0, s, 0] == pytest.approx(0.5 * x0 @ a @ x0, rel=1e-4)
    for i, alpha in enumerate(alphas):
      x = np.linalg.matrix_power(np.eye(n) - alpha * a, steps) @ x0
      expected = 0.5 * x @ a @ x
      assert out["final_loss"][i, s] == pytest.approx(expected, rel=2e-3, abs=1e-6)
  assert np.isnan(out["lrs"]).all()  # optax.sgd learns no α


def test_classification_stream_is_epochwise_permutation():
  data = H.load_dataset("digits")
  task = H.classification_task("t", data, "logreg", batch_size=128)
  n = data.x_train.shape[0]
  per_epoch = n // 128
  idx = np.asarray(task.stream(jax.random.PRNGKey(3), 2 * per_epoch + 1))
  assert idx.shape == (2 * per_epoch + 1, 128)
  for e in range(2):  # no example twice within an epoch
    epoch = idx[e * per_epoch:(e + 1) * per_epoch].ravel()
    assert len(np.unique(epoch)) == epoch.size and epoch.max() < n
  # standardised with the training split's statistics
  np.testing.assert_allclose(np.asarray(data.x_train).reshape(n, -1).mean(0), 0, atol=1e-4)
  assert data.x_test.shape[0] == pytest.approx(0.2 * 1797, abs=1)


def test_tfds_datasets_fail_clearly_without_tfds(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
  with pytest.raises(ImportError, match="tensorflow_datasets"):
    H.load_dataset("mnist")
  with pytest.raises(ValueError, match="dataset"):
    H.load_dataset("imagenet")


def test_demo_quick(tmp_path, capsys):
  tmp_path = tmp_path / "not" / "yet"  # the output folder is created
  png = str(tmp_path / "demo.png")
  rows = demo.main(["--quick", "--out", png])
  assert [r[1] for r in rows] == ["SGD", "SGD-HD", "SGDN", "SGDN-HD", "Adam", "Adam-HD"]
  for r in rows:
    assert math.isfinite(r[2]) and 0 <= r[3] <= 100
    if r[1].endswith("-HD"):
      assert r[4] <= r[6] <= r[5]  # α min ≤ α final ≤ α max
    else:
      assert r[4] == "—"
  out = capsys.readouterr().out
  assert "| task | method | final train loss |" in out
  assert os.path.getsize(png) > 0
  saved = json.load(open(tmp_path / "demo.json"))
  _check_meta(saved["meta"], "")
  assert saved["rows"][0][:2] == rows[0][:2]


def test_paper_quick(tmp_path):
  stem = str(tmp_path / "new" / "paper")  # the output folder is created
  rows = paper.main(["--quick", "--out", stem])
  assert len(rows) == 1 and rows[0][1] == "SGD vs SGD-HD"
  saved = json.load(open(stem + ".json"))
  _check_meta(saved["meta"], "")
  curve = np.array(saved["epoch_loss_curves"]["digits_logreg/sgd"])
  assert curve.shape == (2,)
  # the table's epoch-1 entry is the stored curve's first value
  assert rows[0][2].startswith(f"{curve[0]:.4g} →")
  assert os.path.getsize(stem + ".png") > 0


def test_robustness_quick_summary_is_worst_over_range_vs_best_adam(tmp_path):
  stem = str(tmp_path / "rob")
  results, summary = robustness.main(["--quick", "--out", stem])
  saved = json.load(open(stem + ".json"))
  _check_meta(saved["meta"], "")
  alphas = saved["alphas"]
  for task_name, per_method in results.items():
    best_adam = min(per_method["adam"]["final_loss"])
    for name, r in per_method.items():
      in_range = [loss for a, loss in zip(alphas, r["final_loss"], strict=True) if a <= 0.1]
      s = summary[task_name]["methods"][name]
      assert s["worst_loss"] == pytest.approx(max(in_range))
      assert s["ratio_to_best_adam"] == pytest.approx(max(in_range) / best_adam)
    # a learning-rate-free method gives the same value in every α0 column
    assert len(set(per_method["prodigy"]["final_loss"])) == 1
  assert os.path.getsize(stem + ".png") > 0
  assert "## rosenbrock" in open(stem + ".md").read()


def test_overhead_quick(tmp_path):
  stem = str(tmp_path / "over")
  res = overhead.main(["--quick", "--out", stem])
  for per in res["update_only"].values():
    for name in ("adam", "sgd", "adamw"):
      s = per[name]
      assert s["hd_median_ms"] > 0 and s["base_median_ms"] > 0
      # the global rule stores d_{t-1} (one params-sized buffer) plus a few scalars
      assert 0.99 <= s["extra_state_in_params"] <= 1.01
  for key in ("update_only", "update_only_donated"):
    assert all(per["finite"] for per in res[key].values())
  assert res["whole_step"]["finite"] and res["whole_step_donated"]["finite"]
  assert "donated" in open(stem + ".md").read()
  sw = res["sweep"]
  assert sw["num_alphas"] == 8 and sw["speedup"] > 0
  assert sw["speedup_vs_recompiled"] == pytest.approx(
      sw["sequential_recompiled_s"] / sw["first_call_vmapped_s"])
  # The naive loop really compiles once per α0: its 8 runs take longer than one first call.
  assert sw["sequential_recompiled_s"] > sw["first_call_single_s"]
  saved = json.load(open(stem + ".json"))
  _check_meta(saved["meta"], "")
