"""`fskp label` and `fskp predict` end to end on a tiny generated DeepLabCut project with a tiny video.

The project: a "mouse" (a bright body with a nose and a tail) moving across a dark arena, filmed as a
24-frame video; 8 frames extracted and labeled (DeepLabCut layout and CSV), plus 3 extracted frames of
noise that nobody labeled.  (The ranking of suggestions is tested on real CNN features in test_suggest.py:
a 6-iteration model's features here carry no meaning.)
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.timeout(900)

PARTS = ["nose", "head", "tail"]
W, H, N_FRAMES = 96, 80, 24
LABELED = [0, 3, 6, 9, 12, 15, 18, 21]
OUTLIERS = ["img900.png", "img901.png", "img902.png"]


def mouse_frame(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame i of the video and its keypoints [3, 2] (pixel centres at +0.5)."""
    from PIL import Image, ImageDraw

    t = i / (N_FRAMES - 1)
    head = np.array([20 + 50 * t, 30 + 15 * np.sin(3 * t)])
    kp = np.stack([head + (8, 0), head, head - (22, -4)])
    im = Image.new("RGB", (W, H), (25, 30, 35))
    d = ImageDraw.Draw(im)
    d.line([tuple(kp[1]), tuple(kp[2])], fill=(200, 180, 160), width=5)
    d.ellipse([kp[1][0] - 6, kp[1][1] - 5, kp[1][0] + 6, kp[1][1] + 5], fill=(230, 210, 190))
    d.ellipse([kp[0][0] - 2, kp[0][1] - 2, kp[0][0] + 2, kp[0][1] + 2], fill=(255, 120, 120))
    return np.asarray(im), kp


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("label") / "mouse-project")


def write_project(root: Path) -> Path:
    """The tiny DeepLabCut project described above, written to ``root``."""
    from PIL import Image

    folder = root / "labeled-data" / "session1"
    folder.mkdir(parents=True)
    (root / "videos").mkdir()
    frames = [mouse_frame(i) for i in range(N_FRAMES)]
    write_video(root / "videos" / "session1.mp4", [f for f, _ in frames])
    rows = [["scorer"] + ["Ann"] * 6, ["bodyparts"] + [p for p in PARTS for _ in "xy"], ["coords"] + ["x", "y"] * 3]
    for i in LABELED:
        Image.fromarray(frames[i][0]).save(folder / f"img{i:03d}.png")
        rows.append([f"labeled-data/session1/img{i:03d}.png"] + [f"{v - 0.5:.2f}" for v in frames[i][1].ravel()])
    rng = np.random.default_rng(0)
    for name in OUTLIERS:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / name)
    with open(folder / "CollectedData_Ann.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    config = {"Task": "Mouse", "scorer": "Ann", "date": "Nov25", "bodyparts": PARTS,
              "skeleton": [["nose", "head"], ["head", "tail"]], "pcutoff": 0.5,
              "video_sets": {"/lab/raw/session1.mp4": {"crop": f"0, {W}, 0, {H}"}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")        # this machine's real CPU count, as a user's Ray
    yield
    ray.shutdown()


TINY = ["--iterations", "6", "--size", "64", "--backbone", "resnet18", "--perceptual-vit", "vit_tiny_patch16_224",
        "--unlabeled-batch", "4", "--checkpoint-every", "6", "--log-every", "3", "--suggestions", "5"]


def read_dlc_rows(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[:3], rows[3:]


@pytest.fixture(scope="module")
def labeled(project, ray_local, tmp_path_factory):
    from jobs.cli import main

    out = tmp_path_factory.mktemp("label-out") / "out"
    uri = f"sqlite:///{out.parent}/mlflow.db"
    assert main(["label", "--project", str(project), "--out", str(out), "--shots", "4",
                 "--tracking-uri", uri, *TINY]) == 0
    return out, uri


def test_label_writes_every_output(labeled, project):
    out, _ = labeled
    summary = json.loads((out / "label.json").read_text())
    assert summary["keypoints"] == PARTS and len(summary["shots"]) == 4
    assert (out / "shots.txt").read_text().splitlines() == summary["shots"]

    # held-out error: the 4 labeled frames not trained on, in source pixels, per body part
    report = json.loads((out / "held_out.json").read_text())
    assert report["frames"] == 4 and report["keypoints"] == 12
    assert set(report["per_bodypart_px"]) == set(PARTS) and 0 <= report["pck"] <= 100
    assert np.isfinite(report["mean_error_px"])
    # the images were predicted with test-time crops (the default); the crop alone scored beside them
    assert summary["test_time_crops"] is True
    assert set(report["one_crop"]) == {"mean_error_px", "median_error_px", "pck"}
    assert np.isfinite(report["one_crop"]["mean_error_px"])
    from mlflow.tracking import MlflowClient

    run = MlflowClient(labeled[1]).get_run(summary["run_id"])
    assert run.data.tags["test_time_crops"] == "True"
    assert run.data.metrics["held_out/mean_error_px"] == pytest.approx(report["mean_error_px"])
    assert run.data.metrics["held_out/one_crop/median_error_px"] == pytest.approx(report["one_crop"]["median_error_px"])
    held = {f"labeled-data/session1/img{i:03d}.png" for i in LABELED} - set(summary["shots"])
    assert set(report["per_frame_px"]) == held
    # how far the likelihood can be trusted on them: AUROC and the reliability plot
    confidence = report["confidence"]
    assert confidence["keypoints"] == 12
    assert sum(b["keypoints"] for b in confidence["reliability"]) == 12
    auroc = confidence["auroc_likelihood_right"]
    assert auroc is None if confidence["right"] in (0.0, 1.0) else 0.0 <= auroc <= 1.0
    # 12 held-out keypoints are too few to fit a calibration on: the outputs say the likelihood is the raw one
    assert confidence["likelihood"].startswith("uncalibrated") and not (out / "confidence.npz").exists()
    with Image.open(out / "reliability.png") as im:
        assert im.format == "PNG" and im.size == (480, 360)

    # DeepLabCut machine labels: the video (one row per frame, frame numbers) and the extracted frames
    header, rows = read_dlc_rows(out / "predictions" / "session1.csv")
    assert header[1][1:] == [p for p in PARTS for _ in range(3)]
    assert header[2][1:] == ["x", "y", "likelihood"] * 3
    kinds = {"video": None, "frames": None}
    for name in (out / "predictions").glob("*.csv"):
        h, r = read_dlc_rows(name)
        kinds["video" if r[0][0].isdigit() else "frames"] = r
    assert [int(r[0]) for r in kinds["video"]] == list(range(N_FRAMES))
    assert sorted(r[0] for r in kinds["frames"]) == sorted(
        [f"labeled-data/session1/img{i:03d}.png" for i in LABELED] + [f"labeled-data/session1/{n}" for n in OUTLIERS])
    values = np.array([[float(c) for c in r[1:]] for r in kinds["video"]]).reshape(N_FRAMES, 3, 3)
    assert ((values[..., 2] > 0) & (values[..., 2] < 1)).all()               # likelihoods in (0, 1)
    assert (values[..., 0] > -W).all() and (values[..., 0] < 2 * W).all()

    # COCO keypoints JSON: every frame, K triplets, v in {0, 2}
    coco = json.loads((out / "predictions" / "keypoints_coco.json").read_text())
    assert len(coco["images"]) == N_FRAMES + len(LABELED) + len(OUTLIERS) == len(coco["annotations"])
    assert coco["categories"][0]["keypoints"] == PARTS
    assert coco["categories"][0]["skeleton"] == [[1, 2], [2, 3]]
    for ann in coco["annotations"]:
        assert len(ann["keypoints"]) == 9 and set(ann["keypoints"][2::3]) <= {0, 2}

    # overlays: a video with every frame and an image per extracted frame
    import av

    videos = list((out / "overlay").glob("*.mp4"))
    assert len(videos) == 1
    with av.open(str(videos[0])) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == N_FRAMES and decoded[0].shape == (H, W, 3)
    assert len(list((out / "overlay").rglob("*.jpg"))) == len(LABELED) + len(OUTLIERS)

    # suggestions: ranked, never a training frame, with a contact sheet
    with open(out / "suggestions.csv", newline="") as f:
        sugg = list(csv.DictReader(f))
    assert [int(s["rank"]) for s in sugg] == list(range(1, 6))
    assert summary["suggest_by"] == "coverage"                      # the default rule, recorded with the run
    assert not {Path(s["id"]).name for s in sugg} & {Path(s).name for s in summary["shots"]}
    assert (out / "suggestions.png").stat().st_size > 0


def test_exported_frames_csv_reimports_with_fskp_prepare(labeled, project, tmp_path):
    from jobs.cli import main
    from pipeline.prepared import PreparedDataset

    out, _ = labeled
    frames_csv = next(p for p in (out / "predictions").glob("*.csv") if p.stem != "session1")
    assert main(["prepare", "dlc", "--src", str(project), "--labels", str(frames_csv),
                 "--out", str(tmp_path / "again"), "--size", "64"]) == 0
    ds = PreparedDataset(tmp_path / "again")
    assert ds.card.keypoints == tuple(PARTS)
    header, rows = read_dlc_rows(frames_csv)
    lik = np.array([[float(c) for c in r[3::3]] for r in rows])
    confident = int((lik >= 0.5).any(1).sum())        # the project's pcutoff is 0.5
    assert sum(ds.meta["counts"].get(s, 0) for s in ("train",)) == confident


def test_predict_on_a_video_with_the_run(labeled, project, tmp_path):
    from jobs.cli import main

    out, uri = labeled
    summary = json.loads((out / "label.json").read_text())
    assert main(["predict", "--run", summary["run_id"], "--video", str(project / "videos" / "session1.mp4"),
                 "--out", str(tmp_path / "pred"), "--tracking-uri", uri, "--no-overlay", "--suggestions", "3",
                 "--suggest-by", "outliers"]) == 0
    with open(tmp_path / "pred" / "suggestions.csv", newline="") as f:
        sugg = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in sugg] == [1, 2, 3] and all("session1.mp4#" in r["id"] for r in sugg)
    _, rows = read_dlc_rows(tmp_path / "pred" / "predictions" / "session1.csv")
    _, label_rows = read_dlc_rows(out / "predictions" / "session1.csv")
    assert len(rows) == N_FRAMES
    # same model, same crop (read from the run): the same predictions
    np.testing.assert_allclose(np.array(rows, float), np.array(label_rows, float), atol=1e-3)

    # a calibration beside the checkpoint (fskp label writes one when it can fit it) gives every likelihood
    from jobs.labeling.confidence import Calibration

    flat = Calibration(coef=np.zeros(2), intercept=float(np.log(0.3 / 0.7)), reference=np.ones((1, 128), np.float32),
                       fitted_on=40, cross_validated_auroc=0.5)
    saved = flat.save(Path(summary["checkpoint"]))
    try:
        assert main(["predict", "--run", summary["run_id"], "--video", str(project / "videos" / "session1.mp4"),
                     "--out", str(tmp_path / "calibrated"), "--tracking-uri", uri, "--no-overlay",
                     "--suggestions", "0"]) == 0
    finally:
        saved.unlink()
    _, rows = read_dlc_rows(tmp_path / "calibrated" / "predictions" / "session1.csv")
    values = np.array(rows, float)[:, 1:].reshape(N_FRAMES, 3, 3)
    np.testing.assert_allclose(values[..., 2], 0.3, atol=1e-6)
    from pynwb import NWBHDF5IO                     # and the NWB file says what its confidence now is

    with NWBHDF5IO(str(tmp_path / "calibrated" / "predictions" / "session1.nwb"), "r") as io:
        for series in io.read().processing["behavior"]["PoseEstimation"].pose_estimation_series.values():
            assert series.confidence_definition.startswith("likelihood calibrated on 40 held-out labeled keypoints")
    np.testing.assert_allclose(values[..., :2], np.array(label_rows, float)[:, 1:].reshape(N_FRAMES, 3, 3)[..., :2],
                               atol=1e-3)


def test_predict_with_test_time_crops(labeled, project, tmp_path, capsys):
    from jobs.cli import main

    out, uri = labeled
    summary = json.loads((out / "label.json").read_text())
    assert main(["predict", "--checkpoint", summary["checkpoint"], "--images", str(project / "labeled-data"),
                 "--out", str(tmp_path / "none"), "--tta"]) == 2
    assert "--tta needs a crop" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main(["predict", "--run", summary["run_id"], "--video", str(project / "videos" / "session1.mp4"),
                 "--out", str(tmp_path / "tta"), "--tracking-uri", uri, "--no-overlay", "--suggestions", "0",
                 "--tta"]) == 0
    err = capsys.readouterr().err                # the median of 7: tests/test_test_time_crops.py
    assert "test-time crops: the crop and 6 moved or scaled copies" in err and "(4 frames x 7 crops)" in err
    _, rows = read_dlc_rows(tmp_path / "tta" / "predictions" / "session1.csv")
    values = np.array(rows, float)[:, 1:].reshape(N_FRAMES, 3, 3)
    assert np.isfinite(values).all() and ((values[..., 2] > 0) & (values[..., 2] < 1)).all()


def test_test_time_crops_from_one_decode_match_one_pass_per_crop(labeled, project):
    """The 7 views of a frame, cut from one decode and predicted in one model call, are what 7 separate
    passes over the video (one crop each) predict."""
    from jobs.inference import jittered_boxes, predict_frames, predict_frames_tta

    summary = json.loads((labeled[0] / "label.json").read_text())
    video = [str(project / "videos" / "session1.mp4")]
    crop = (0.0, 0.0, float(W), float(H))
    combined, views = predict_frames_tta(summary["checkpoint"], video, crop, progress=False)
    assert len(views) == 7 and len(combined.ids) == N_FRAMES
    for n in (0, 2, 6):                                 # the crop itself, moved left, scaled by 1.1
        single = predict_frames(summary["checkpoint"], video, jittered_boxes(crop)[n], progress=False)
        assert single.ids == views[n].ids
        np.testing.assert_allclose(views[n].keypoints, single.keypoints, atol=0.05)
        np.testing.assert_allclose(views[n].uncertainty, single.uncertainty, atol=1e-3)
    assert not np.allclose(views[0].keypoints, views[6].keypoints, atol=0.05)     # the views do differ


def test_label_refuses_unknown_frames(project, tmp_path):
    from jobs.labeling.inputs import read_dlc_project
    from jobs.labeling.shots import choose_shots

    inp = read_dlc_project(project)
    with pytest.raises(ValueError, match="img999"):
        choose_shots(inp, tmp_path, None, ["img000", "img999"])
    assert choose_shots(inp, tmp_path, None, ["img003", "session1/img006"]) == ["session1/img003", "session1/img006"]


def write_dlc_csv_for(path: Path, names: list[str], frames: dict[str, np.ndarray]) -> Path:
    """A CollectedData-style CSV: index = image name, x/y per body part (DeepLabCut's pixel-index convention)."""
    rows = [["scorer"] + ["Ann"] * 2 * len(PARTS), ["bodyparts"] + [p for p in PARTS for _ in "xy"],
            ["coords"] + ["x", "y"] * len(PARTS)]
    rows += [[name] + [f"{v - 0.5:.3f}" for v in kp.ravel()] for name, kp in frames.items()]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_read_video_extracts_the_labeled_frames_by_number(project, tmp_path):
    from jobs.labeling.inputs import read_video

    labels = write_dlc_csv_for(tmp_path / "labels.csv", PARTS, {f"img{i:04d}.png": mouse_frame(i)[1] for i in (2, 11)})
    inp = read_video(project / "videos" / "session1.mp4", labels, tmp_path / "work", links="nose-head,head-tail")
    assert inp.card.keypoints == tuple(PARTS) and inp.card.links == ((0, 1), (1, 2))
    assert [Path(i.source).name for i in inp.labeled] == ["img000002.png", "img000011.png"]
    np.testing.assert_allclose(inp.labeled[1].keypoints, mouse_frame(11)[1], atol=1e-3)
    assert inp.videos == [project / "videos" / "session1.mp4"] and inp.unlabeled == []
    from PIL import Image

    extracted = np.asarray(Image.open(inp.labeled[1].source)).astype(float)
    assert np.abs(extracted - mouse_frame(11)[0]).mean() < 12            # frame 11 of the (lossy) video


def test_read_images_with_coco_labels(tmp_path):
    from PIL import Image

    from jobs.labeling.inputs import read_images

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(mouse_frame(i * 5)[0]).save(folder / f"f{i}.png")
    kp = mouse_frame(5)[1]
    coco = {"images": [{"id": 7, "file_name": "f1.png", "width": W, "height": H}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "num_keypoints": 3,
                             "keypoints": [v for x, y in kp - 0.5 for v in (round(x, 3), round(y, 3), 2)]}],
            "categories": [{"id": 1, "name": "mouse", "keypoints": PARTS, "skeleton": [[1, 2], [2, 3]]}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    inp = read_images(folder, tmp_path / "labels.json")
    assert inp.card.links == ((0, 1), (1, 2))
    assert [Path(i.source).name for i in inp.labeled] == ["f1.png"]
    np.testing.assert_allclose(inp.labeled[0].keypoints, kp, atol=1e-3)
    assert sorted(p.name for p in inp.unlabeled) == ["f0.png", "f2.png", "f3.png"]
    assert inp.relative(folder / "f2.png") == "f2.png"


def test_labels_naming_missing_video_frames_are_refused(project, tmp_path):
    from jobs.labeling.inputs import read_video
    from pipeline.prepared import DataError

    labels = write_dlc_csv_for(tmp_path / "labels.csv", PARTS, {"img0500.png": mouse_frame(0)[1]})
    with pytest.raises(DataError, match="500"):
        read_video(project / "videos" / "session1.mp4", labels, tmp_path / "work")
