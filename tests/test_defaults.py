"""The commands exactly as a user types them: no --num-cpus, --cpus-per-worker, --threads or --max-concurrent, on a
Ray each command starts itself with this machine's real CPU count.  Each must finish within a bound (on the
2-core CI machine a sweep of defaults once waited forever for its first unlabeled batch).

The options given are the ones a user picks for a quick run (iterations, resolution): none is about resources.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[1]
#: a user's environment: no tracking URI set (conftest points the in-process tests at a shared one), no cluster
ENV = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")},
       "PYTHONPATH": str(ROOT)}


def fskp(args: list[str], cwd: Path, bound_s: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                         text=True, timeout=bound_s)
    took = time.time() - t0
    print(f"fskp {' '.join(args)}: {took:.0f} s")
    return out, took


def test_reproduce_with_the_default_resources_completes(tmp_path):
    """Issue 18's command: it once started one trial and sat without a step for 20 minutes."""
    from mlflow.tracking import MlflowClient

    from pipeline.synth.dataset import generate

    data = generate("face", tmp_path / "D", 40, seed=0, size=64, workers=1)
    out, took = fskp(["reproduce", "--datasets", str(data), "--shots", "10", "--variants", "full,supervised",
                      "--iterations", "4", "--size", "64", "--experiment", "E"], tmp_path, bound_s=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "at most 2 at once" in out.stdout + out.stderr          # two trials share the two cores
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")                 # the default store, in the cwd
    runs = client.search_runs([client.get_experiment_by_name("E").experiment_id])
    cells = [r for r in runs if "dataset" in r.data.tags]
    assert sorted((r.data.tags["shots"], r.data.tags["variant"]) for r in cells) == [("10", "full"), ("10", "supervised")]
    assert all(r.info.status == "FINISHED" for r in cells)
    assert all(float(r.data.params["cpus_per_worker"]) < 1.0 for r in cells)      # sized to leave Ray Data room


def test_label_with_the_default_resources_completes(tmp_path):
    from tests.test_label import write_project

    project = write_project(tmp_path / "mouse-project")
    out, took = fskp(["label", "--project", str(project), "--out", str(tmp_path / "out"), "--iterations", "6",
                      "--no-overlay"], tmp_path, bound_s=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "1 job(s) at once" in text and "precision " in text      # sized and chosen on this machine, and said
    assert (tmp_path / "out" / "label.json").exists()


def test_quickstart_says_one_line_per_cell_and_resumes(tmp_path):
    """`fskp quickstart` (tiny grid): a legible display -- one line per cell event and the table, Ray's and the
    workers' output left in Ray's log files -- and a second run trains nothing."""
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--n", "40", "--shots", "2", "--variants", "full,xiao",
            "--iterations", "4"]
    out, took = fskp(args, tmp_path, bound_s=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sum(line.strip().startswith("finished") for line in lines) == 2, out.stdout
    assert sum(line.strip().startswith("started") for line in lines) == 2, out.stdout
    assert not [line for line in lines if "RayTrainWorker" in line or "PlacementGroupCleaner" in line], out.stdout
    assert len(lines) < 60, out.stdout                   # was 1,267 lines for the default grid
    table = (tmp_path / "qs" / "table.md").read_text()
    assert "| ours (full) |" in table and "| Xiao et al. (heatmap regression) |" in table
    # pretrained weights without a hub (the package the install brings): no cell marked as random weights
    assert not [row for row in table.splitlines() if row.startswith("|") and "†" in row], table
    again, _ = fskp(args, tmp_path, bound_s=300)
    assert again.returncode == 0 and "2 already finished in MLflow" in again.stdout, again.stdout[-2000:]
    assert not any(line.strip().startswith("started") for line in again.stdout.splitlines())
