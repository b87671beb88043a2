"""`fskp label --slp`: a SLEAP project in (written by sleap-io: a video, a skeleton, user-labeled frames), SLEAP
predictions out (a ``.predictions.slp`` that sleap-io opens with the same skeleton and one predicted instance
per frame).  The project is test_label.py's moving "mouse", labeled in SLEAP's convention (pixel centres at
integers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_label import LABELED, N_FRAMES, PARTS, TINY, mouse_frame

sio = pytest.importorskip("sleap_io")
pytestmark = pytest.mark.timeout(900)


def write_slp_project(root: Path) -> Path:
    root.mkdir(parents=True)
    frames = [mouse_frame(i) for i in range(N_FRAMES)]
    sio.save_video(np.stack([f for f, _ in frames]), str(root / "session1.mp4"), fps=10)
    skeleton = sio.Skeleton(list(PARTS), edges=[("nose", "head"), ("head", "tail")])
    video = sio.Video.from_filename(str(root / "session1.mp4"))
    labeled = [sio.LabeledFrame(video=video, frame_idx=i,
                                instances=[sio.Instance.from_numpy(frames[i][1] - 0.5, skeleton=skeleton)])
               for i in LABELED]
    path = root / "mouse.slp"
    sio.save_slp(sio.Labels(labeled_frames=labeled, videos=[video], skeletons=[skeleton]), str(path), verbose=False)
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_label_a_sleap_project_and_write_sleap_predictions(ray_local, tmp_path):
    from jobs.cli import main

    slp = write_slp_project(tmp_path / "project")
    out = tmp_path / "out"
    assert main(["label", "--slp", str(slp), "--out", str(out), "--shots", "4", "--no-overlay",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY]) == 0
    held = (out / "held_out.json").read_text()
    assert '"frames": 4' in held or '"frames":4' in held.replace(" ", "")        # 8 labeled, 4 trained on
    labels = sio.load_slp(str(out / "predictions" / "session1.predictions.slp"))
    assert labels.skeletons[0].node_names == PARTS
    assert sorted(tuple(sorted(e)) for e in labels.skeletons[0].edge_names) == [("head", "nose"), ("head", "tail")]
    assert sorted(lf.frame_idx for lf in labels.labeled_frames) == list(range(N_FRAMES))     # the whole video
    for lf in labels.labeled_frames:
        assert len(lf.instances) == 1 and isinstance(lf.instances[0], sio.PredictedInstance)
    # the same numbers as the DeepLabCut CSV of the video (SLEAP's pixel centres at integers: 0.5 less)
    import csv

    with open(out / "predictions" / "session1.csv", newline="") as f:
        rows = list(csv.reader(f))[3:]
    first = next(lf for lf in labels.labeled_frames if lf.frame_idx == int(rows[0][0]))
    csv_xy = np.array([float(v) for v in rows[0][1:]]).reshape(len(PARTS), 3)[:, :2]
    np.testing.assert_allclose(first.instances[0].numpy(), csv_xy, atol=1e-3)


def test_several_animals_in_a_frame_are_refused_before_training(tmp_path):
    from jobs.labeling.inputs import read_slp_project
    from pipeline.prepared import DataError

    root = tmp_path / "two"
    root.mkdir()
    frame, kp = mouse_frame(0)
    from PIL import Image

    Image.fromarray(frame).save(root / "f0.png")
    skeleton = sio.Skeleton(list(PARTS), edges=[("nose", "head"), ("head", "tail")])
    images = sio.Video.from_filename([str(root / "f0.png")])
    lf = sio.LabeledFrame(video=images, frame_idx=0, instances=[sio.Instance.from_numpy(kp, skeleton=skeleton),
                                                                 sio.Instance.from_numpy(kp + 5, skeleton=skeleton)])
    sio.save_slp(sio.Labels(labeled_frames=[lf], videos=[images], skeletons=[skeleton]), str(root / "two.slp"),
                 verbose=False)
    with pytest.raises(DataError, match="several user instances in one frame"):
        read_slp_project(root / "two.slp", tmp_path / "work")
