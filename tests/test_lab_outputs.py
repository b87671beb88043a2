"""Outputs labs load into their own tools: DeepLabCut's HDF5 files, NWB (ndx-pose), and the detector as ONNX.

The HDF5 layouts follow DeepLabCut's source (pose_estimation_pytorch/apis/videos.py ``create_df_from_prediction``
for analysed videos; refine_training_dataset/outlier_frames.py for machine labels): columns (scorer, bodyparts,
coords) with x, y, likelihood; key ``df_with_missing``.  The ONNX export runs on a detector trained here for
a few dozen steps (no Ray), so its keypoints move with the image and the parity check means something.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tables")
pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")

PARTS = ["nose", "head", "tail"]
W, H = 48, 40


def predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 40, (n, len(PARTS), 2)), rng.uniform(0.05, 0.95, (n, len(PARTS)))


def card():
    from pipeline.converters.coco import card_from_keypoints

    return card_from_keypoints("mouse", "a mouse", PARTS, [(0, 1), (1, 2)], origin="test")


# ---- DeepLabCut HDF5 ---------------------------------------------------------------------------------
def test_analysed_video_h5_is_deeplabcuts_layout(tmp_path):
    import pandas as pd
    import tables

    from pipeline.exports import write_dlc_video_h5

    kp, lk = predictions(4)
    kp[2, 1] = np.nan
    path = write_dlc_video_h5(tmp_path, "/data/videos/session1.mp4", "fskp_Ann", PARTS, [0, 1, 2, 5], kp, lk)
    assert path == tmp_path / "session1DLC_fskp_Ann.h5"
    df = pd.read_hdf(path, "df_with_missing")
    assert list(df.index) == [0, 1, 2, 5] and df.index.dtype == np.int64
    assert df.columns.names == ["scorer", "bodyparts", "coords"]
    assert list(df.columns) == [("DLC_fskp_Ann", p, c) for p in PARTS for c in ("x", "y", "likelihood")]
    assert (df.dtypes == np.float64).all()
    values = df.to_numpy().reshape(4, len(PARTS), 3)
    np.testing.assert_array_equal(values[..., 2], lk)
    expected = kp - 0.5                                         # DeepLabCut's pixel-index coordinates
    np.testing.assert_array_equal(values[..., :2], expected)   # NaN where no keypoint, on both x and y
    assert np.isnan(values[2, 1, :2]).all() and values[2, 1, 2] == lk[2, 1]
    # "table" format with the layout version pandas < 3 needs to read it (DeepLabCut's pandas)
    with tables.open_file(str(path)) as f:
        group = f.get_node("/df_with_missing")
        assert group._v_attrs.pandas_type == "frame_table"
        assert group._v_attrs.pandas_version == "0.15.2"


def test_machine_labels_are_indexed_like_deeplabcuts_labeled_data(tmp_path):
    import pandas as pd

    from pipeline.exports import write_dlc_machinelabels

    kp, lk = predictions(3, seed=1)
    images = [f"labeled-data/session1/img{i:03d}.png" for i in (4, 9, 12)]
    path = write_dlc_machinelabels(tmp_path, 2, "fskp_Ann", PARTS, images, kp, lk)
    assert path == tmp_path / "labeled-data" / "session1" / "machinelabels-iter2.h5"
    df = pd.read_hdf(path, "df_with_missing")
    assert isinstance(df.index, pd.MultiIndex) and df.index.nlevels == 3
    assert list(df.index) == [("labeled-data", "session1", f"img{i:03d}.png") for i in (4, 9, 12)]
    assert df.columns.names == ["scorer", "bodyparts", "coords"]
    assert list(df.columns) == [("DLC_fskp_Ann", p, c) for p in PARTS for c in ("x", "y", "likelihood")]
    np.testing.assert_array_equal(df.to_numpy().reshape(3, 3, 3)[..., :2], kp - 0.5)
    np.testing.assert_array_equal(df.to_numpy().reshape(3, 3, 3)[..., 2], lk)

    with pytest.raises(ValueError, match="per labeled-data folder"):
        write_dlc_machinelabels(tmp_path, 0, "s", PARTS, images[:2] + ["labeled-data/other/img1.png"], kp, lk)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        write_dlc_machinelabels(tmp_path, 0, "s", PARTS, [images[0], "img1.png", images[2]], kp, lk)


# ---- NWB ---------------------------------------------------------------------------------------------
def test_nwb_file_validates_and_holds_the_predictions(tmp_path):
    from pynwb import NWBHDF5IO, validate

    from pipeline.exports import write_nwb

    kp, lk = predictions(6, seed=2)
    kp[3, 0] = np.nan
    video = tmp_path / "session1.mp4"
    video.write_bytes(b"")                       # only its name and time are used
    path = write_nwb(tmp_path / "out" / "session1.nwb", card(), kp, lk, timestamps=np.arange(6) / 30.0,
                     source=[video], source_rate=30.0, source_frames=10, scorer="DLC_fskp_Ann")
    assert validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        pose = nwb.processing["behavior"]["PoseEstimation"]
        assert list(pose.pose_estimation_series) == sorted(PARTS)
        for k, name in enumerate(PARTS):
            series = pose.pose_estimation_series[name]
            np.testing.assert_array_equal(series.data[:], kp[:, k] - 0.5)
            np.testing.assert_array_equal(series.confidence[:], lk[:, k])
            np.testing.assert_allclose(series.timestamps[:], np.arange(6) / 30.0)
            assert series.unit == "pixels"
        skeleton = nwb.processing["behavior"]["Skeletons"].skeletons["mouse"]
        assert list(skeleton.nodes[:]) == PARTS
        assert skeleton.edges[:].tolist() == [[0, 1], [1, 2]]
        assert pose.skeleton is skeleton and pose.scorer == "DLC_fskp_Ann" and pose.source_software == "fskp"
        assert list(pose.source_video.external_file[:]) == ["../session1.mp4"]
        assert pose.source_video.num_samples == 10


# ---- hooked into fskp label / predict ----------------------------------------------------------------
def write_video(path: Path, n: int) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            frame = np.full((H, W, 3), 10 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def test_label_outputs_include_h5_and_nwb_beside_the_csv(tmp_path):
    """write_outputs (fskp label and fskp predict) writes them for a video and a frame folder."""
    import pandas as pd
    from PIL import Image
    from pynwb import NWBHDF5IO, validate

    from jobs.inference import Predictions
    from jobs.labeling.inputs import LabelingInput
    from jobs.labeling.outputs import write_outputs

    project = tmp_path / "project"
    folder = project / "labeled-data" / "session1"
    folder.mkdir(parents=True)
    images = []
    for i in (3, 7):
        images.append(folder / f"img{i:03d}.png")
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(images[-1])
    video = write_video(project / "session1.mp4", 5)
    ids = [str(p) for p in images] + [f"{video}#{i}" for i in range(5)]
    kp, lk = predictions(len(ids), seed=3)
    preds = Predictions(ids=ids, keypoints=kp, uncertainty=1 - lk, embedding=np.zeros((len(ids), 4), np.float16),
                        ok=np.ones(len(ids), bool))
    inp = LabelingInput(card=card(), labeled=[], root=project, scorer="Ann", iteration=1)
    out = tmp_path / "out"
    outputs = write_outputs(inp, preds, out, overlay=False, n_suggestions=0)

    h5 = out / "predictions" / "session1DLC_fskp_Ann.h5"
    machine = out / "predictions" / "labeled-data" / "session1" / "machinelabels-iter1.h5"
    assert outputs["dlc_h5:session1"] == str(h5) and Path(outputs["dlc_machinelabels:labeled-data_session1"]) == machine
    video_df = pd.read_hdf(h5, "df_with_missing")
    assert list(video_df.index) == list(range(5))
    np.testing.assert_allclose(video_df.to_numpy().reshape(5, 3, 3)[..., :2], kp[2:] - 0.5)
    frames_df = pd.read_hdf(machine, "df_with_missing")
    assert list(frames_df.index) == [("labeled-data", "session1", "img003.png"), ("labeled-data", "session1", "img007.png")]
    np.testing.assert_allclose(frames_df.to_numpy().reshape(2, 3, 3)[..., 2], lk[:2])

    video_nwb, frames_nwb = Path(outputs["nwb:session1"]), Path(outputs["nwb:labeled-data_session1"])
    assert video_nwb == out / "predictions" / "session1.nwb"
    for path in (video_nwb, frames_nwb):
        assert validate(path=str(path)) == []
    with NWBHDF5IO(str(video_nwb), "r") as io:
        series = io.read().processing["behavior"]["PoseEstimation"].pose_estimation_series["tail"]
        assert series.rate == pytest.approx(10.0) and series.starting_time == 0.0
        np.testing.assert_allclose(series.data[:], kp[2:, 2] - 0.5)
    with NWBHDF5IO(str(frames_nwb), "r") as io:
        pose = io.read().processing["behavior"]["PoseEstimation"]
        assert [Path(f).name for f in pose.source_video.external_file[:]] == ["img003.png", "img007.png"]


# ---- ONNX --------------------------------------------------------------------------------------------
SIZE = 64


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, 3, S, S] in [0, 1] of a bright bar on a dark ground, and its 3 keypoints in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 3, SIZE, SIZE), 0.1, np.float32)
    keypoints = np.zeros((n, 3, 2), np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    for i in range(n):
        head = rng.uniform(16, 48, 2)
        pts = np.stack([head + (6, 0), head, head - (14, 0)])
        for (x, y), r in zip(pts, (3, 5, 3)):
            images[i, :, (xx - x) ** 2 + (yy - y) ** 2 < r * r] = 0.9
        keypoints[i] = pts / SIZE * 2 - 1
    return images, keypoints


#: 80 steps left the detector so weak on one CPU kind (AMD EPYC: 6-8 px on the easy frames, the likelihood's
#: frame AUROC 0.80) that the suggestion test below failed there while passing on another
TRAIN_STEPS = 240


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A resnet18 detector at 64 px trained TRAIN_STEPS supervised steps on the bars (about 40 s on 2 cores);
    saved as fskp train saves it."""
    import torch

    from models.config import LossConfig, ModelConfig, OptimConfig
    from models.model import KeypointModel
    from models.train_step import make_optimizer, prepare_for_training, train_step

    torch.manual_seed(0)
    c = card()
    config = ModelConfig(num_keypoints=3, links=c.links, backbone="resnet18", backbone_weights="none", image_size=SIZE,
                         head_channels=32, unet_width=4, unet_levels=3, perceptual_vit="vit_tiny_patch16_224",
                         perceptual_weights="none")
    model = KeypointModel(config)
    loss_cfg, optim_cfg = LossConfig(variant="supervised"), OptimConfig(lr=3e-3)
    model = prepare_for_training(model, loss_cfg, optim_cfg, "cpu")
    optimizer = make_optimizer(model, optim_cfg)
    images, keypoints = blob_images(64, seed=0)
    for step in range(TRAIN_STEPS):
        rows = np.arange(step * 8, step * 8 + 8) % len(images)
        batch = {"labeled": torch.from_numpy(images[rows]), "keypoints": torch.from_numpy(keypoints[rows]),
                 "visible": torch.ones(8, 3, dtype=torch.bool), "unlabeled": torch.from_numpy(images[rows[:2]])}
        train_step(model, optimizer, batch, step, TRAIN_STEPS, loss_cfg, precision="fp32")
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    folder.mkdir()
    torch.save({**model.checkpoint(), "step": TRAIN_STEPS, "card_name": c.name, "card_fingerprint": c.fingerprint,
                "num_keypoints": 3, "keypoint_names": PARTS}, folder / "model.pt")
    return folder


def test_onnx_export_matches_pytorch_within_a_tenth_of_a_pixel(trained_checkpoint, tmp_path):
    import onnx
    import onnxruntime
    import torch

    from jobs.cli import main
    from jobs.evaluation import load_checkpoint

    out = tmp_path / "detector.onnx"
    assert main(["export", "--run", str(trained_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    graph = onnx.load(str(out))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["keypoint_names"]) == PARTS and json.loads(meta["links"]) == [[0, 1], [1, 2]]
    assert meta["image_size"] == str(SIZE) and "crop_box" not in meta

    frames, truth = blob_images(7, seed=123)                  # test frames, batch size unlike the export's
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    keypoints, uncertainty = session.run(["keypoints", "uncertainty"], {"images": frames})
    model, _ = load_checkpoint(trained_checkpoint)
    with torch.no_grad():
        det = model.detector(torch.from_numpy(frames))
    reference = det.keypoints.numpy()
    assert keypoints.shape == (7, 3, 2) and uncertainty.shape == (7, 3)
    difference_px = np.abs(keypoints - reference).max() * SIZE / 2
    assert difference_px < 0.1, f"onnxruntime and PyTorch differ by {difference_px:.4f} px"
    np.testing.assert_allclose(uncertainty, 1 - torch.sigmoid(det.certainty).numpy(), atol=1e-5)
    likelihood, = session.run(["likelihood"], {"images": frames})      # no calibration beside the checkpoint
    np.testing.assert_allclose(likelihood, 1 - uncertainty, atol=1e-6)
    assert meta["likelihood"].startswith("[N, K] 1 - uncertainty (not calibrated")
    # the detector learned something, so the frames' keypoints differ and the comparison is not of constants
    assert reference.std(0).mean() * SIZE / 2 > 3.0
    assert np.abs(reference - truth).mean() * SIZE / 2 < 8.0


def test_export_resolves_an_mlflow_run_and_keeps_its_crop(trained_checkpoint, tmp_path):
    import mlflow
    import onnx

    from jobs.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)     # no global state: earlier tests leave an active experiment
    run = client.create_run(client.create_experiment("export"))
    client.set_tag(run.info.run_id, "checkpoint_path", str(trained_checkpoint))
    client.set_tag(run.info.run_id, "crop_box", json.dumps([10.0, 20.0, 74.0, 84.0]))
    out = tmp_path / "from-run.onnx"
    assert main(["export", "--run", run.info.run_id, "--out", str(out), "--tracking-uri", uri]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["crop_box"]) == [10.0, 20.0, 74.0, 84.0]
    assert main(["export", "--run", "no-such-run", "--out", str(tmp_path / "x.onnx"), "--tracking-uri", uri]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_export_carries_the_calibrated_likelihood_fskp_predict_writes(trained_checkpoint, tmp_path):
    """With fskp label's confidence.npz beside the checkpoint, the graph computes the calibrated likelihood
    (certainty and the frame's distance to the training frames) that fskp predict writes, within 0.01."""
    import shutil

    import onnx
    import onnxruntime
    import torch

    from jobs.cli import main
    from jobs.evaluation import load_checkpoint
    from jobs.inference import reduce_embedding
    from jobs.labeling.confidence import Calibration

    checkpoint = tmp_path / "checkpoint_000001"
    shutil.copytree(trained_checkpoint, checkpoint)
    model, _ = load_checkpoint(checkpoint)
    training, _ = blob_images(4, seed=7)
    with torch.no_grad():
        reference = reduce_embedding(model.detector.detect_and_embed(torch.from_numpy(training))[1].numpy())
    calibration = Calibration(coef=np.array([0.5, -0.3]), intercept=-2.0, reference=reference.astype(np.float32),
                              fitted_on=40, cross_validated_auroc=0.7)
    calibration.save(checkpoint / "confidence.npz")

    out = tmp_path / "calibrated.onnx"
    assert main(["export", "--run", str(checkpoint), "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "calibrated on 40 held-out keypoints" in meta["likelihood"]

    frames = np.concatenate([training[:2], blob_images(6, seed=321)[0]])    # two training frames: novelty 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    uncertainty, likelihood = session.run(["uncertainty", "likelihood"], {"images": frames})
    with torch.no_grad():
        _, embedding = model.detector.detect_and_embed(torch.from_numpy(frames))
    written = calibration.likelihood(uncertainty, reduce_embedding(embedding.numpy()))
    assert np.abs(likelihood - written).max() < 0.01
    assert np.abs(likelihood - (1 - uncertainty)).max() > 0.05          # not the uncalibrated certainty
    assert likelihood[:2].min() > likelihood[2:].max()       # b < 0: a training frame (novelty 0) is the likeliest
    assert 0.05 < likelihood[2:].mean() < 0.95


# ---- suggestions from the calibrated likelihood ------------------------------------------------------
def distracted_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames the detector has not seen the like of: a noisy ground, the labeled bar dimmer, and a bright
    second bar (a distractor) about where the labeled one would be mirrored through the centre; keypoints of
    the labeled bar, [-1, 1]."""
    rng = np.random.default_rng(seed)
    images, keypoints = blob_images(n, seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    for i in range(n):
        ground = rng.uniform(0.2, 0.35, (3, SIZE, SIZE)).astype(np.float32)
        images[i] = np.where(images[i] > 0.5, 0.5, ground)                     # the labeled bar, dimmer
        head = SIZE - (keypoints[i, 1] + 1) * SIZE / 2 + rng.uniform(-4, 4, 2)    # mirrored: far from the bar
        for (x, y), r in zip(np.stack([head + (6, 0), head, head - (14, 0)]), (3, 5, 3)):
            images[i, :, (xx - x) ** 2 + (yy - y) ** 2 < r * r] = 0.9
    return images, keypoints


@pytest.mark.parametrize("rule", ["outliers", "coverage"])
def test_suggestions_rank_the_frames_the_model_gets_wrong_first(trained_checkpoint, rule):
    """fskp label's path on a generated set: the likelihood calibrated on held-out frames (some like the
    training frames, some not) ranks, among new frames, the ones the model gets wrong first.  The outliers
    rule fills most of its first 7 with them; the coverage rule starts with one and then spreads its picks (the
    wrong frames are alike: after one of them, labeling the next adds less)."""
    import torch

    from jobs.evaluation import load_checkpoint
    from jobs.inference import reduce_embedding
    from jobs.labeling.confidence import fit_calibration
    from pipeline.suggest import suggest_frames

    model, _ = load_checkpoint(trained_checkpoint)

    def predict(images):
        with torch.no_grad():
            det, embedding = model.detector.detect_and_embed(torch.from_numpy(images))
        return det.keypoints.numpy(), 1 - torch.sigmoid(det.certainty).numpy(), reduce_embedding(embedding.numpy())

    def error_px(kp, truth):                                    # [N, K] in the model's 64 px input
        return np.linalg.norm(kp - truth, axis=-1) * SIZE / 2

    train, _ = blob_images(64, seed=0)                          # the fixture's training frames
    _, _, reference = predict(train[:16])
    (easy, easy_kp), (hard, hard_kp) = blob_images(20, seed=11), distracted_images(20, seed=12)
    kp, u, emb = predict(np.concatenate([easy, hard]))
    err = error_px(kp, np.concatenate([easy_kp, hard_kp]))
    right = err < 10.0
    calibration, _ = fit_calibration(u, emb, reference, right, np.ones_like(right))
    assert calibration is not None, f"{right.sum()} of {right.size} held-out keypoints right"

    (easy, easy_kp), (hard, hard_kp) = blob_images(30, seed=21), distracted_images(10, seed=22)
    kp, u, emb = predict(np.concatenate([easy, hard]))
    frame_err = error_px(kp, np.concatenate([easy_kp, hard_kp])).mean(1)
    ids = [f"easy{i:02d}" for i in range(30)] + [f"hard{i:02d}" for i in range(10)]
    picks = suggest_frames(ids, 1 - calibration.likelihood(u, emb), emb, reference, n=10, rule=rule)
    picked = np.array([frame_err[ids.index(p.id)] for p in picks])
    top = picked[:5]
    assert frame_err[30:].mean() > 1.5 * frame_err[:30].mean()         # the distracted frames are the wrong ones
    worst = np.percentile(frame_err, 70)
    if rule == "coverage":       # top 5 at 1.4x the mean on an AMD EPYC, 1.13x on an Intel Xeon (AMX): it spreads
        assert picked[0] > worst and top.mean() > frame_err.mean(), (picked, worst)
        return
    # at least 5 of the first 7 among the 30 % worst frames: 7 random picks do that with probability 0.018.  (On an
    # AMD EPYC two novel frames the model gets right came 1st and 2nd, then five wrong ones: "4 of the first 5" failed)
    assert (picked[:7] > worst).sum() >= 5, (picked, worst)
    assert picked[:7].mean() > 1.3 * frame_err.mean()                  # 1.43x on that AMD EPYC
