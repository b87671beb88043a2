"""`fskp train` on Ray: MLflow records, resume after a worker failure, corrupt pools, data parallelism.

Tiny settings (64 px, resnet18, a dozen iterations) so the whole module runs in a few minutes on 2 CPUs.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest


pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")        # this machine's real CPU count, as a user's Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small synthetic benchmark (faces, 64 px): 2D/3D keypoints, so the 3D metric is exercised too."""
    from pipeline.synth.dataset import generate

    return generate("face", tmp_path_factory.mktemp("train") / "synth_face", 30, seed=0, size=64, workers=1)


def small_job(data: Path, tmp: Path, **kw):
    from jobs.training import TrainJob

    base = TrainJob(data=str(data), shots="4", selection="random", variant="full", iterations=8, backbone="resnet18",
                    size=64, unlabeled_batch=4, checkpoint_every=4, log_every=2, experiment="tests",
                    tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=str(tmp / "runs"),
                    perceptual_vit="vit_tiny_patch16_224", backbone_weights="none", perceptual_weights="none", threads=1)
    return replace(base, **kw)


def test_train_records_params_metrics_and_artifacts(ray_local, tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.training import run_training

    job = small_job(tiny_data, tmp_path)
    result = run_training(job)
    assert result.error is None, result.error
    client = MlflowClient(job.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    for key in ("dataset", "card_fingerprint", "data_fingerprint", "shots", "selection", "variant", "coefficients",
                "iterations", "seed", "backbone", "code_version", "n_shots"):
        assert key in params, key
    assert params["variant"] == "full" and params["n_shots"] == "4" and params["dataset"] == "synth_face"
    metrics = run.data.metrics
    assert 0 <= metrics["test/nme"] < 1000
    assert 0 <= metrics["test/pck_0.1"] <= 100              # the other metric, for the paper's Table 7
    assert metrics["test/spread_ratio"] > 0                 # collapse check (models/metrics.py::spread_ratio)
    curve = client.get_metric_history(result.run_id, "curve/nme")          # learning curve: every checkpoint
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [4, 8]
    assert sorted(curve, key=lambda m: m.step)[-1].value == pytest.approx(metrics["test/nme"])  # 6 test images < 256
    assert {"test/nme/nose_tip", "test/nme/chin"} <= set(metrics)           # per keypoint
    assert 0 <= metrics["test/aligned_3d_error"] < 1000                      # 3D error after similarity alignment
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4, 6, 8]        # losses along training, logged by rank 0
    alpha = client.get_metric_history(result.run_id, "train/edge_alpha")    # the edge map's weight (Eq. 12)
    assert [m.step for m in alpha] == [2, 4, 6, 8] and all(0.0 < m.value < 1.0 for m in alpha)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "shots.json" in artifacts
    evaluation = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/predictions.png"} <= evaluation
    assert Path(run.data.tags["checkpoint_path"], "model.pt").exists()
    from models.precision import resolve_precision

    assert run.data.tags["fskp.precision"] == resolve_precision("auto", "cpu").name     # what auto chose here
    assert run.data.tags["fskp.precision_reason"].startswith("auto: ")
    assert run.data.tags["fskp.backbone_weights"] == "random (asked: none)"           # where weights came from
    assert run.data.tags["fskp.perceptual_weights"] == "random (asked: none)"
    assert run.data.tags["fskp.threads_per_worker"] == "1"


def test_the_same_job_twice_gives_the_same_run(ray_local, tiny_data, tmp_path):
    """Seeds fix a run (paper: all 0): the pool is read from two Parquet files, whose read tasks may finish in
    either order, yet both runs log the same losses and the same test error."""
    from mlflow.tracking import MlflowClient

    from jobs.training import run_training

    job = small_job(tiny_data, tmp_path, pool_splits=("train", "test"), threads=2, experiment="same-seed")
    client = MlflowClient(job.tracking_uri)
    runs = []
    for _ in range(2):
        result = run_training(job)
        assert result.error is None, result.error
        runs.append(([m.value for m in client.get_metric_history(result.run_id, "train/loss")],
                     result.metrics["test/nme"]))
    assert len(runs[0][0]) == 4
    assert runs[0] == runs[1]


def test_resumes_after_a_worker_failure_in_one_mlflow_run(ray_local, tiny_data, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    from jobs.training import run_training

    job = small_job(tiny_data, tmp_path, fail_at_step=6, experiment="resume")
    result = run_training(job)
    assert result.error is None, result.error
    assert result.metrics["resumed_from_step"] == 4          # the checkpoint of step 4, not a fresh start
    assert result.metrics["step"] == job.iterations
    client = MlflowClient(job.tracking_uri)
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_corrupt_and_truncated_pool_images_are_skipped_and_counted(ray_local, tiny_data, tmp_path):
    from PIL import Image

    from jobs.training import run_training

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(pool / f"frame{i:02d}.png")
    (pool / "corrupt.png").write_bytes(b"not an image at all" * 10)
    data = (pool / "frame00.png").read_bytes()
    (pool / "truncated.png").write_bytes(data[: len(data) // 3])
    result = run_training(small_job(tiny_data, tmp_path, pool=str(pool), iterations=6, experiment="pool"))
    assert result.error is None, result.error
    assert result.metrics["pool_skipped"] >= 2               # each epoch over the pool meets both bad files
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert run.data.metrics["pool_skipped"] == result.metrics["pool_skipped"]


def test_two_workers_see_different_shards_draw_their_own_transforms_and_agree(ray_local, tiny_data, tmp_path):
    from jobs.training import run_training

    job = small_job(tiny_data, tmp_path, workers=2, iterations=4, record_rank_state=True, experiment="ddp")
    result = run_training(job)
    assert result.error is None, result.error
    folders = list((tmp_path / "runs").glob("*/rank0.json"))
    assert len(folders) == 1
    ranks = [json.loads((folders[0].parent / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [set(r["pool_ids"]) for r in ranks]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]     # DDP kept the ranks identical
    assert ranks[0]["random_draw"] != ranks[1]["random_draw"]           # but each rank has its own random stream


def test_multi_worker_runs_refuse_fractional_gpus(tiny_data, tmp_path):
    from jobs.training import check_job
    from pipeline.prepared import PreparedDataset

    with pytest.raises(ValueError, match="--gpu-fraction 0.5 with --workers 2"):
        check_job(small_job(tiny_data, tmp_path, workers=2, gpu=True, gpu_fraction=0.5), PreparedDataset(tiny_data))
    check_job(small_job(tiny_data, tmp_path, workers=1, gpu=True, gpu_fraction=0.5), PreparedDataset(tiny_data))


def test_a_masking_patch_that_does_not_divide_the_size_is_refused_before_ray(tiny_data, tmp_path):
    from jobs.training import check_job
    from pipeline.prepared import PreparedDataset

    with pytest.raises(ValueError, match="mask_patch 12: .* must divide --size 64"):
        check_job(small_job(tiny_data, tmp_path, mask_patch=12), PreparedDataset(tiny_data))
    check_job(small_job(tiny_data, tmp_path, mask_patch=8), PreparedDataset(tiny_data))
    check_job(small_job(tiny_data, tmp_path, mask_patch=12, variant="supervised"), PreparedDataset(tiny_data))


def test_frozen_batch_norm_without_pretrained_statistics_is_refused_before_ray(tiny_data, tmp_path, monkeypatch):
    from jobs.training import check_job
    from models import pretrained
    from pipeline.prepared import PreparedDataset

    with pytest.raises(ValueError, match="--batch-norm frozen-backbone .* and --backbone-weights none: random"):
        check_job(small_job(tiny_data, tmp_path, batch_norm="frozen-backbone"), PreparedDataset(tiny_data))
    monkeypatch.setattr(pretrained, "hub_reachable", lambda: False)        # and resnet18 is in no hub cache here
    real_check = pretrained.check_weights_choice
    monkeypatch.setattr(pretrained, "check_weights_choice",
                        lambda name, choice: "not cached" if choice == "hub" else real_check(name, choice))
    with pytest.raises(ValueError, match="--backbone-weights auto finds none for resnet18 \\(the hub cannot be "
                                         "reached and no offline package is installed for resnet18\\)"):
        check_job(small_job(tiny_data, tmp_path, batch_norm="frozen-backbone", backbone_weights="auto"),
                  PreparedDataset(tiny_data))
    check_job(small_job(tiny_data, tmp_path, batch_norm="frozen-backbone", backbone_weights="auto",   # the package's
                        backbone="efficientnet_lite0"), PreparedDataset(tiny_data))
    with pytest.raises(ValueError, match="batch_norm must be one of batch, frozen-backbone, frozen, got 'fixed'"):
        check_job(small_job(tiny_data, tmp_path, batch_norm="fixed"), PreparedDataset(tiny_data))
    check_job(small_job(tiny_data, tmp_path, batch_norm="batch"), PreparedDataset(tiny_data))


def test_table_2_baseline_learns_depth_from_the_3d_keypoints_through_ray(ray_local, tiny_data, tmp_path):
    """--variant xiao-depth: the shots' 3D keypoints reach the Train worker as depth labels and the depth term
    is trained and logged; data without 3D keypoints is refused before Ray starts, saying what to use."""
    from mlflow.tracking import MlflowClient

    from jobs.training import check_job, run_training
    from pipeline.card import load_card
    from pipeline.prepared import PreparedDataset, write_prepared
    from tests.conftest import TINY_CARD, tiny_instances

    job = small_job(tiny_data, tmp_path, variant="xiao-depth")
    result = run_training(job)
    assert result.error is None, result.error
    depth = MlflowClient(job.tracking_uri).get_metric_history(result.run_id, "train/depth")
    assert [m.step for m in depth] == [2, 4, 6, 8] and all(m.value > 0 for m in depth)

    (tmp_path / "tiny.yaml").write_text(TINY_CARD)
    flat = write_prepared(tmp_path / "flat", load_card(tmp_path / "tiny.yaml"),
                          tiny_instances(6) + tiny_instances(2, seed=1, split="test"), size=64)
    with pytest.raises(ValueError, match=r"learns depth from 3D keypoints, and the train split has none \(keypoints_3d empty in row train-0000\)"):
        check_job(small_job(flat, tmp_path, variant="xiao-depth"), PreparedDataset(flat))
    check_job(small_job(flat, tmp_path, variant="xiao"), PreparedDataset(flat))


def test_an_interrupted_run_continues_from_its_last_checkpoint(ray_local, tiny_data, tmp_path):
    """The same job again (a resumed sweep's cell) finds the interrupted Ray Train run by its stable name."""
    from mlflow.tracking import MlflowClient

    from jobs.training import run_training

    job = small_job(tiny_data, tmp_path, iterations=6, checkpoint_every=2, fail_at_step=4, max_failures=0,
                    resume=True, experiment="resume")
    first = run_training(job)
    assert first.error is not None                                      # died at step 4
    second = run_training(job)
    assert second.error is None, second.error
    # the last checkpoint Ray Train registered before the worker died: step 2 or 4 (reports are asynchronous)
    assert second.metrics["resumed_from_step"] in (2, 4)
    client = MlflowClient(job.tracking_uri)
    assert client.get_run(second.run_id).data.metrics["resumed_from_step"] == second.metrics["resumed_from_step"]
    runs = [client.get_run(r.run_id) for r in (first, second)]
    assert runs[0].data.tags["fskp.train_run"] == runs[1].data.tags["fskp.train_run"]
    assert runs[0].data.tags["fskp.settings"] == runs[1].data.tags["fskp.settings"]
    other = run_training(replace(job, fail_at_step=None, seed=1))        # another cell: its own run, from 0
    assert other.error is None and other.metrics["resumed_from_step"] == 0


def _parameters(checkpoint: str) -> dict:
    """The trained tensors of a checkpoint (batch-norm statistics left out: they move even at lr 0)."""
    from jobs.evaluation import read_checkpoint

    state = read_checkpoint(checkpoint)[0]["state_dict"]
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_a_run_starts_from_an_earlier_runs_weights(ray_local, tiny_data, tmp_path):
    """--init-from: a refine round continues from the last round's weights (here at lr 0: they come out unchanged)."""
    import torch
    from mlflow.tracking import MlflowClient

    from jobs.training import build_model, run_training
    from pipeline.prepared import PreparedDataset

    first = run_training(small_job(tiny_data, tmp_path, variant="supervised", iterations=4, experiment="init"))
    assert first.error is None, first.error
    job = small_job(tiny_data, tmp_path, variant="supervised", iterations=2, checkpoint_every=2, lr=0.0,
                    experiment="init", init_from=first.checkpoint_path)
    second = run_training(job)
    assert second.error is None, second.error
    start, then = _parameters(first.checkpoint_path), _parameters(second.checkpoint_path)
    assert all(torch.equal(start[k], then[k]) for k in start)
    torch.manual_seed(job.seed)                 # what the run would have kept at lr 0 without --init-from
    seeded = build_model(PreparedDataset(tiny_data).card, job)[0].state_dict()
    assert not all(torch.equal(start[k], seeded[k]) for k in start)
    run = MlflowClient(job.tracking_uri).get_run(second.run_id)
    assert run.data.params["init_from"] == first.checkpoint_path
    assert run.data.tags["fskp.backbone_weights"] == f"init-from {first.checkpoint_path}"


def test_init_from_a_checkpoint_that_cannot_start_the_run_is_refused_before_ray(tiny_data, tmp_path):
    """Another backbone or other keypoints are refused by check_job, naming the checkpoint and what differs."""
    import torch

    from jobs.training import build_model, check_job
    from pipeline.prepared import PreparedDataset

    ds = PreparedDataset(tiny_data)
    job = small_job(tiny_data, tmp_path)
    state = {"state_dict": build_model(ds.card, job)[0].state_dict(), "config": {"backbone": "resnet18"},
             "keypoint_names": list(ds.card.keypoints), "num_keypoints": ds.card.num_keypoints}
    torch.save(state, tmp_path / "model.pt")
    check_job(replace(job, init_from=str(tmp_path)), ds)                                 # the same network: fine
    with pytest.raises(ValueError, match=r"init-from .*model.pt: its network differs .* --backbone resnet18"):
        check_job(replace(job, init_from=str(tmp_path), backbone="resnet34"), ds)
    torch.save({**state, "keypoint_names": ["a"] * ds.card.num_keypoints}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: trained on keypoints a, a"):
        check_job(replace(job, init_from=str(tmp_path / "other.pt")), ds)
    with pytest.raises(ValueError, match=r"missing.*checkpoint not found"):
        check_job(replace(job, init_from=str(tmp_path / "missing")), ds)


def test_init_from_names_a_label_folder_a_checkpoint_or_a_run(tmp_path):
    """fskp label/train --init-from: an fskp label output folder means its checkpoint (label.json)."""
    from mlflow.tracking import MlflowClient

    from jobs.commands.train import resolve_init

    (tmp_path / "round1").mkdir()
    (tmp_path / "round1" / "label.json").write_text(json.dumps({"checkpoint": "/runs/label-x/checkpoint_1"}))
    assert resolve_init(str(tmp_path / "round1")) == "/runs/label-x/checkpoint_1"
    assert resolve_init(str(tmp_path)) == str(tmp_path)                    # a checkpoint folder as given
    assert resolve_init("s3://bucket/runs/checkpoint_2") == "s3://bucket/runs/checkpoint_2"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)              # not the fluent API: an earlier test's active experiment is not in this store
    run = client.create_run(client.create_experiment("init-from"))
    client.set_tag(run.info.run_id, "checkpoint_path", "/runs/train-y/checkpoint_3")
    assert resolve_init(run.info.run_id, uri) == "/runs/train-y/checkpoint_3"
    with pytest.raises(FileNotFoundError, match=r"--init-from nowhere: neither an fskp label output folder"):
        resolve_init("nowhere", uri)
    assert resolve_init(None) is None


def test_nonfinite_loss_stops_with_a_clear_message(ray_local, tiny_data, tmp_path):
    from jobs.training import run_training

    result = run_training(small_job(tiny_data, tmp_path, lr=1e30, iterations=8, experiment="nan", max_failures=0))
    assert result.error is not None and "non-finite loss" in result.error
