"""Storage as URIs: Ray Train checkpoints in an S3-compatible object store (moto in server mode on 127.0.0.1,
reached through the standard AWS_ENDPOINT_URL, as MinIO or Ceph would be), nothing written locally."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
BUCKET = "fskp-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    """A moto S3 server with one bucket; the AWS_* variables point every process started from here at it."""
    pytest.importorskip("moto")
    import boto3

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        yield f"s3://{BUCKET}"
    finally:
        server.kill()
        server.wait()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def ray_with_s3(s3_store):
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")      # after the AWS_* variables: workers see them
    yield s3_store
    ray.shutdown()


def test_locations_keep_their_scheme(tmp_path):
    from pipeline.storage import join, resolve_location

    assert resolve_location("s3://bucket/fskp/runs/") == "s3://bucket/fskp/runs"
    assert resolve_location("gs://bucket/runs") == "gs://bucket/runs"
    assert resolve_location(f"file://{tmp_path}/runs") == str(tmp_path / "runs")
    assert join("s3://bucket/runs", "cell", "rank0.json") == "s3://bucket/runs/cell/rank0.json"


def test_a_prepared_dataset_in_the_object_store_reads_as_the_local_one(s3_store, tmp_path):
    """Written to the store by `fskp synth --out s3://...` (meta.json last), read in place: the same rows,
    arrays and card as the same dataset written locally; the pool streams from it through Ray Data."""
    import boto3

    from pipeline.prepared import PreparedDataset
    from pipeline.synth.dataset import generate

    local = generate("face", tmp_path / "synth_face", 12, seed=3, size=32, workers=1, progress=False)
    remote = generate("face", f"{s3_store}/prepared/synth_face/", 12, seed=3, size=32, workers=1, progress=False)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="prepared/")["Contents"]]
    assert "prepared/synth_face/meta.json" in keys and any(k.endswith(".parquet") for k in keys)
    a, b = PreparedDataset(local), PreparedDataset(remote)
    assert b.root == f"{s3_store}/prepared/synth_face" and b.remote and not a.remote
    assert b.fingerprint == a.fingerprint and b.card == a.card and b.meta["counts"] == a.meta["counts"]
    assert [f.rsplit("/", 1)[1] for f in b.files("train")] == [Path(f).name for f in a.files("train")]
    for key, value in a.arrays("test").items():
        assert (b.arrays("test")[key] == value).all() if value.dtype != object else list(b.arrays("test")[key]) == list(value)
    with pytest.raises(FileExistsError, match="already exists"):
        generate("face", remote, 12, seed=3, size=32, workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        PreparedDataset(f"{s3_store}/prepared/nothing-here")


def test_the_pool_streams_from_the_object_store(ray_with_s3, tmp_path):
    from pipeline.pool import pool_dataset
    from pipeline.synth.dataset import generate

    remote = generate("face", f"{ray_with_s3}/pool/synth_face", 12, seed=1, size=32, workers=1, progress=False)
    rows = pool_dataset(remote, 32).take_all()
    assert len(rows) == 10 and all(r["image"].shape == (32, 32, 3) for r in rows)   # the train split (2 of 12 are test)
    with pytest.raises(ValueError, match="must be on a local or shared"):
        pool_dataset([f"{ray_with_s3}/raw/frames"], 32)
    from jobs.training import TrainJob, check_job             # and `fskp train --pool s3://...` before Ray starts
    from pipeline.prepared import PreparedDataset

    with pytest.raises(ValueError, match=r"--pool s3://.*raw/frames: a pool of raw images or videos must be"):
        check_job(TrainJob(data=remote, pool=f"{ray_with_s3}/raw/frames"), PreparedDataset(remote))


def test_checkpoints_go_to_the_object_store_and_load_back(ray_with_s3, tmp_path, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient

    from jobs.evaluation import load_checkpoint
    from jobs.training import TrainJob, run_training
    from pipeline.synth.dataset import generate

    data = generate("face", f"{ray_with_s3}/data/synth_face", 24, seed=0, size=64, workers=1, progress=False)
    assert data == f"{ray_with_s3}/data/synth_face"     # written straight to the store: no local copy to read
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    job = TrainJob(data=data, shots="4", selection="random", iterations=4, backbone="resnet18", size=64,
                   unlabeled_batch=4, checkpoint_every=2, log_every=2, experiment="s3",
                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage_path=f"{ray_with_s3}/runs",
                   perceptual_vit="vit_tiny_patch16_224", backbone_weights="none", perceptual_weights="none",
                   threads=1, record_rank_state=True)
    client = MlflowClient(job.tracking_uri)        # artifacts in the store too, as an MLflow server would put them
    client.create_experiment("s3", artifact_location=f"{ray_with_s3}/mlartifacts")
    result = run_training(job)
    assert result.error is None, result.error
    tags = client.get_run(result.run_id).data.tags
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"shots.json", "evaluation"} <= artifacts
    assert tags["checkpoint_path"].startswith(f"{ray_with_s3}/runs/") and tags["fskp.storage_path"] == f"{ray_with_s3}/runs"
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]]
    assert any(k.endswith("/model.pt") for k in keys) and any(k.endswith("/rank0.json") for k in keys)
    model, state = load_checkpoint(tags["checkpoint_path"])
    assert state["step"] == 4 and state["card_name"] == "synth_face"
    assert client.get_run(result.run_id).data.params["data"] == data       # the location is recorded as given
    assert list(work.iterdir()) == []        # nothing local: no "runs", no "s3:" folder, no "mlruns", no "shots"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "work"]
    assert not Path("s3:").exists()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(f"{ray_with_s3}/runs/no-such-run/model.pt")


def test_a_sweep_finds_its_datasets_in_the_object_store(s3_store):
    """`fskp reproduce --datasets s3://...` and `--data-root s3://...` (the cluster's way) resolve before Ray starts."""
    from jobs.grid import Cell
    from jobs.sweep import attach_data, check_data, resolve_dataset
    from pipeline.synth.dataset import generate

    uri = generate("car", f"{s3_store}/root/synth_car", 10, seed=0, size=32, workers=1, progress=False)
    assert resolve_dataset(uri + "/") == ("synth_car", uri)
    cells = attach_data([Cell("synth_car", "2", "supervised"), Cell("synth_face", "2", "supervised")],
                        data_root=f"{s3_store}/root")
    assert [c.data for c in cells] == [uri, f"{s3_store}/root/synth_face"]
    with pytest.raises(FileNotFoundError, match=f"--out {s3_store}/root/synth_face"):
        check_data(cells)                   # the face dataset is not in the store: named before Ray starts
    check_data(cells[:1])
