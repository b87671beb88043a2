"""`fskp predict --video` on a lab's folder of videos: each video predicted once, the next run predicts only the
new or changed ones, and a run that fails part way keeps the videos it finished (jobs/labeling/analysed.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

SIDE = 96


def write_video(path: Path, frames: int, seed: int) -> Path:
    """A small H.264 video: a bright square moving over noise."""
    import av

    rng = np.random.default_rng(seed)
    background = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = background.copy()
            x = 10 + (i * 3) % (SIDE - 40)
            image[30:60, x:x + 30] = 230
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small model whose head is drawn large, so that its predictions differ from frame to
    frame (bookkeeping is tested, not accuracy)."""
    import torch

    from models.config import ModelConfig
    from models.model import KeypointModel
    from pipeline.card import load_card

    card = load_card("synth_animal")
    config = ModelConfig.from_card(card, backbone="mobilenetv3_small_050", image_size=64, backbone_weights="none",
                                   perceptual_vit="mobilenetv3_small_050", perceptual_weights="none")
    model = KeypointModel(config)
    torch.manual_seed(0)
    for layer in [*model.detector.upsample, model.detector.out]:         # the head starts near zero: not here
        if isinstance(layer, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            torch.nn.init.normal_(layer.weight, std=0.2)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save({**model.checkpoint(), "step": 0, "card_name": card.name,
                "card_fingerprint": card.fingerprint, "num_keypoints": card.num_keypoints,
                "keypoint_names": list(card.keypoints)}, path)
    return path


def checkpoint_keypoints(checkpoint: Path) -> list[str]:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["keypoint_names"]


def predict(checkpoint: Path, videos, out: Path, *extra: str) -> int:
    from jobs.cli import main

    return main(["predict", "--checkpoint", str(checkpoint), "--video", *map(str, videos), "--out", str(out),
                 "--no-overlay", "--suggestions", "2", *extra])


def coco_frames(out: Path) -> list[str]:
    return sorted(image["file_name"] for image in json.loads((out / "predictions" / "keypoints_coco.json").read_text())
                  ["images"])


def test_a_folder_of_videos_is_predicted_once_then_only_what_is_new(checkpoint, tmp_path, capsys):
    videos, out = tmp_path / "videos", tmp_path / "out"
    write_video(videos / "monday.mp4", 12, seed=0)
    write_video(videos / "day2" / "tuesday.mp4", 9, seed=1)          # folders are searched recursively
    (videos / "notes.txt").write_text("not a video")
    assert predict(checkpoint, [videos], out) == 0
    said = capsys.readouterr().out
    assert "videos 1/1: tuesday.mp4, monday.mp4" in said and "already predicted" not in said     # one group, by path
    monday_csv = out / "predictions" / "monday.csv"
    first = monday_csv.stat().st_mtime_ns
    assert (out / "predictions" / "monday.fskp.npz").is_file() and (out / "predictions" / "tuesday.fskp.npz").is_file()
    from PIL import Image

    with Image.open(out / "predictions" / "monday.likelihood.png") as strip:       # a row per body part
        assert strip.width > 12 and strip.height > 14 * len(checkpoint_keypoints(checkpoint))
    assert len(coco_frames(out)) == 21

    # next week: one new video; the two of last week are kept as they are, the joint files cover all three
    write_video(videos / "wednesday.mp4", 7, seed=2)
    assert predict(checkpoint, [videos], out) == 0
    said = capsys.readouterr().out
    assert "2 of 3 video(s) already predicted" in said and "videos 1/1: wednesday.mp4\n" in said
    summary = json.loads((out / "predict.json").read_text())               # written last, for a scheduled job
    assert summary["videos_predicted"] == [str(videos / "wednesday.mp4")] and summary["frames"] == 28
    assert sorted(map(Path, summary["videos_kept"])) == [videos / "day2" / "tuesday.mp4", videos / "monday.mp4"]
    assert summary["outputs"]["dlc_csv:monday"] == str(out / "predictions" / "monday.csv")
    assert monday_csv.stat().st_mtime_ns == first
    assert (out / "predictions" / "wednesday.csv").is_file()
    assert len(coco_frames(out)) == 28 and any(f.startswith("wednesday.mp4#") for f in coco_frames(out))
    # the kept predictions are the ones written: the CSV's coordinates read back from the record
    from jobs.labeling.analysed import kept_files, kept_predictions, prediction_settings

    settings = prediction_settings(checkpoint, None, None, 1, False, 0.6, False)
    files, why = kept_files(out, videos / "monday.mp4", settings)
    assert why == "" and files["dlc_csv:monday"] == str(monday_csv)
    kept = kept_predictions(out, videos / "monday.mp4")
    rows = np.loadtxt(monday_csv, delimiter=",", skiprows=3)[:, 1:].reshape(12, -1, 3)
    assert np.ptp(rows[..., 0], axis=0).max() > 1.0                          # frames differ
    np.testing.assert_allclose(rows[..., :2] + 0.5, kept.keypoints, atol=1e-3)  # DeepLabCut: pixel centres at 0

    # a video replaced under the same name is predicted again, and says why; other settings too
    write_video(videos / "monday.mp4", 10, seed=3)
    os.utime(videos / "monday.mp4", ns=(first + 10**9, first + 10**9))
    assert predict(checkpoint, [videos], out) == 0
    said = capsys.readouterr().out
    assert "predicting again monday.mp4: the video changed since" in said and "2 of 3 video(s) already" in said
    assert len(np.loadtxt(monday_csv, delimiter=",", skiprows=3)) == 10
    assert kept_files(out, videos / "day2" / "tuesday.mp4", {**settings, "frame_step": 2})[1] == \
        "predicted before with other frame_step"


def test_videos_are_predicted_in_groups_of_enough_frames(tmp_path):
    from jobs.labeling.analysed import video_groups

    videos = [write_video(tmp_path / f"{name}.mp4", n, seed=0) for name, n in (("a", 12), ("b", 5), ("c", 4),
                                                                               ("d", 3))]
    assert video_groups(videos, frames=10) == [videos[:1], videos[1:]]        # a alone; b, c and d make 12
    assert video_groups(videos, frames=8) == [videos[:1], videos[1:3], videos[3:]]
    assert video_groups(videos, frame_step=2, frames=5) == [videos[:1], videos[1:3], videos[3:]]   # 6, 3 + 2, 2


def test_a_failed_video_leaves_the_finished_ones_for_the_next_run(checkpoint, tmp_path, capsys, monkeypatch):
    import jobs.inference
    import jobs.labeling.analysed

    monkeypatch.setattr(jobs.labeling.analysed, "GROUP_FRAMES", 1)          # a group per video

    videos, out = tmp_path / "videos", tmp_path / "out"
    write_video(videos / "a.mp4", 8, seed=0)
    write_video(videos / "b.mp4", 8, seed=1)
    real = jobs.inference.predict_frames

    def decoder_dies_on_b(checkpoint, sources, crop, **options):
        if any(Path(s).name == "b.mp4" for s in sources):
            raise RuntimeError("the decoder died")
        return real(checkpoint, sources, crop, **options)

    monkeypatch.setattr(jobs.inference, "predict_frames", decoder_dies_on_b)
    with pytest.raises(RuntimeError, match="the decoder died"):
        predict(checkpoint, [videos], out)
    assert "stopped at b.mp4: 1 of the 2 videos are predicted" in capsys.readouterr().err
    assert (out / "predictions" / "a.fskp.npz").is_file() and not (out / "predictions" / "b.fskp.npz").exists()
    assert not (out / "predictions" / "keypoints_coco.json").exists()     # no joint file over a part of the videos
    assert not (out / "predict.json").exists()                             # nor a summary of a run that stopped
    monkeypatch.setattr(jobs.inference, "predict_frames", real)
    assert predict(checkpoint, [videos], out) == 0
    said = capsys.readouterr().out
    assert "1 of 2 video(s) already predicted" in said and "kept: a.mp4" in said
    assert len(coco_frames(out)) == 16
    assert predict(checkpoint, [videos], out, "--overwrite") == 0             # --overwrite: both again
    assert "videos 2/2: b.mp4" in capsys.readouterr().out


def test_video_paths_that_cannot_be_predicted_are_refused_by_name(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "frame.png").write_bytes(b"")
    assert predict(checkpoint, [tmp_path / "empty"], tmp_path / "out") == 2
    assert f"{tmp_path / 'empty'}: no video in this folder" in capsys.readouterr().err
    assert predict(checkpoint, [tmp_path / "frame.png"], tmp_path / "out") == 2
    assert "frame.png: not a video file" in capsys.readouterr().err
    assert predict(checkpoint, [tmp_path / "missing.mp4"], tmp_path / "out") == 2
    assert "missing.mp4: no such video or folder" in capsys.readouterr().err
    write_video(tmp_path / "day1" / "cam.mp4", 2, seed=0)
    write_video(tmp_path / "day2" / "cam.avi", 2, seed=0)
    assert predict(checkpoint, [tmp_path / "day1", tmp_path / "day2"], tmp_path / "out") == 2
    assert "day1/cam.mp4 and " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
