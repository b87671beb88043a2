"""Jobs that fit the machine and never hang (jobs/resources.py, jobs/watchdog.py): the sizing arithmetic, the
watchdog, options refused before Ray starts, training at another resolution, and a deliberately starved
training job that must stop with a clear error in time."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.resources import DATA_RESERVE_CPUS, NodeShape, plan_training, threads_for

ROOT = Path(__file__).resolve().parents[1]


# ---- sizing ------------------------------------------------------------------------------------------------
def fits(plan, node: NodeShape, workers: int = 1, driver: float = 0.0, per_node: int | None = None) -> bool:
    n = per_node or plan.concurrent
    return n * (driver + DATA_RESERVE_CPUS + workers * plan.cpus_per_worker) <= node.cpus + 1e-9


def test_one_training_on_a_two_core_laptop_leaves_room_for_its_data():
    node = NodeShape(2)
    plan = plan_training([node], concurrent=1)
    assert plan.concurrent == 1 and fits(plan, node)
    assert plan.cpus_per_worker == pytest.approx(1.5) and plan.threads == 2     # both cores for torch


def test_a_sweep_on_two_cores_runs_two_single_threaded_trials_that_fit():
    node = NodeShape(2)
    plan = plan_training([node], driver_cpus=0.1)
    assert plan.concurrent == 2 and plan.threads == 1
    assert fits(plan, node, driver=0.1)


def test_gpu_sweeps_share_gpus_by_fraction_and_cpus_by_node():
    nodes = [NodeShape(8, 1), NodeShape(8, 1), NodeShape(4)]        # two GPU workers and a CPU head
    plan = plan_training(nodes, gpu=True, gpu_fraction=0.25, driver_cpus=0.1)
    assert plan.concurrent == 8                                       # 4 per GPU, on 2 GPU nodes
    assert fits(plan, NodeShape(8, 1), driver=0.1, per_node=4)


def test_requests_that_cannot_fit_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match="lower --cpus-per-worker"):
        plan_training([NodeShape(2)], cpus_per_worker=2.0, concurrent=1)
    with pytest.raises(ValueError, match="several NCCL ranks"):
        plan_training([NodeShape(8, 1)], gpu=True, gpu_fraction=0.5, workers=2)
    # an explicit worker size is honoured by running fewer trials at once, not by overcommitting
    plan = plan_training([NodeShape(4)], cpus_per_worker=1.0, driver_cpus=0.1)
    assert plan.concurrent == 2 and fits(plan, NodeShape(4), driver=0.1)


def test_threads_follow_the_cpus_ray_gave():
    assert [threads_for(c) for c in (0.25, 1.0, 1.4, 1.5, 4.0)] == [1, 1, 2, 2, 4]


# ---- watchdog ----------------------------------------------------------------------------------------------
def test_watchdog_passes_items_and_errors_through_and_stops_a_stall():
    from jobs.watchdog import StallError, watched

    assert list(watched(iter(range(5)), timeout_s=5, what="item")) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise KeyError("bad row")
    with pytest.raises(KeyError, match="bad row"):
        list(watched(broken(), timeout_s=5, what="item"))

    def stalls():
        yield 1
        time.sleep(30)
        yield 2
    t0 = time.time()
    items = watched(stalls(), timeout_s=0.5, what="batch", explain=lambda: "nothing free")
    assert next(items) == 1
    with pytest.raises(StallError, match=r"no batch for 0\.5 s: nothing free"):
        next(items)
    assert time.time() - t0 < 5


def test_progress_lines_say_how_long_is_left():
    from jobs.watchdog import time_left

    assert time_left(108_000 - 1_800, 17.5) == "about 1 h 41 min left"          # an hour-long video at 17.5 frames/s
    assert time_left(540, 0.2, of="training") == "about 45 min of training left"
    assert time_left(20, 1.0) == "under a minute left"
    assert time_left(0, 17.5) == "" and time_left(100, 0.0) == ""                # done, or no rate yet


# ---- refused before Ray starts -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from pipeline.synth.dataset import generate

    return generate("face", tmp_path_factory.mktemp("res") / "synth_face", 30, seed=0, size=64, workers=1)


def test_reproduce_with_wrong_options_fails_in_seconds_before_ray(tiny_data, tmp_path):
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "reproduce", "--datasets", str(tiny_data),
                          "--shots", "1,500", "--variants", "full,supervised", "--size", "60", "--iterations", "5",
                          "--experiment", "wrong"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stderr
    assert "before starting Ray; nothing was trained" in text
    assert "--size 60" in text and "--shots 500: the train split has only 24 labeled rows" in text
    assert "Token authentication" not in out.stdout + out.stderr and not (tmp_path / "runs").exists()
    assert took < 60, f"took {took:.0f} s"
    print(f"refused in {took:.1f} s")


# ---- training at another resolution; a starved job stops with a clear error --------------------------------
@pytest.fixture(scope="module")
def ray_two_cpus():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")     # this machine's real count
    yield
    ray.shutdown()


def job(data, tmp, **kw):
    from jobs.training import TrainJob

    return TrainJob(data=str(data), shots="4", selection="random", variant="full", iterations=4, backbone="resnet18",
                    unlabeled_batch=4, checkpoint_every=4, log_every=2, experiment="resources",
                    tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=str(tmp / "runs"),
                    perceptual_vit="vit_tiny_patch16_224", backbone_weights="none", perceptual_weights="none", **kw)


@pytest.mark.timeout(600)
def test_training_at_another_resolution_scores_in_prepared_pixels(ray_two_cpus, tiny_data, tmp_path):
    from jobs.training import run_training

    result = run_training(job(tiny_data, tmp_path, size=32))           # prepared at 64 px
    assert result.error is None, result.error
    # the metric is in the prepared images' pixels: errors of a 4-step model are tens of 64-px pixels
    assert 2.0 < result.metrics["test/mean_error_px"] < 64.0
    import torch

    state = torch.load(Path(result.checkpoint_path) / "model.pt", weights_only=True)
    assert state["config"]["image_size"] == 32


@pytest.mark.timeout(600)
def test_a_starved_training_stops_with_a_clear_error_in_time(ray_two_cpus, tiny_data, tmp_path):
    """Something else holds the CPUs the data stream needs: the watchdog names it instead of waiting forever."""
    import ray

    from jobs.training import run_training

    @ray.remote(num_cpus=DATA_RESERVE_CPUS)
    class Hog:                                   # takes exactly the share the plan leaves to Ray Data
        def ready(self):
            return True
    hog = Hog.remote()
    ray.get(hog.ready.remote())
    try:
        t0 = time.time()
        result = run_training(job(tiny_data, tmp_path, size=64, stall_timeout=20, max_failures=0))
        took = time.time() - t0
    finally:
        ray.kill(hog)
    assert result.error is not None
    assert "no unlabeled batch for 20 s" in result.error and "CPUs free" in result.error, result.error
    assert took < 240, f"the error took {took:.0f} s"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert run.info.status == "FAILED" and "no unlabeled batch" in run.data.tags["error"]
