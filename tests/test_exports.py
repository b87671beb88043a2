"""Exports of predictions (pipeline/exports.py) and reading them back: DeepLabCut machine-label CSV (also
through `fskp prepare dlc --labels`), COCO keypoint JSON, overlay images and an overlay video."""
from __future__ import annotations

import csv
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.converters import coco, convert, dlc
from pipeline.draw import keypoint_colours
from pipeline.exports import (likelihood_from_uncertainty, overlay_names, write_coco_json, write_dlc_csv,
                              write_overlay_images, write_overlay_video)
from pipeline.prepared import DataError, PreparedDataset

PARTS = ["left_paw", "right_paw", "nose"]
FRAMES = ["img001.png", "img007.png", "img013.png"]
INDEX = [f"labeled-data/mouse1/{f}" for f in FRAMES]
# predictions, prepared convention (pixel centres at +0.5), and their likelihoods
KEYPOINTS = np.array([[[10.7, 21.2], [30.5, 22.0], [20.75, 6.0]],
                      [[12.5, 22.5], [31.25, 23.5], [19.5, 6.5]],
                      [[14.5, 24.5], [np.nan, np.nan], [18.0, 7.25]]])
LIKELIHOOD = np.array([[0.99, 0.95, 0.9],
                       [0.97, 0.55, 0.2],        # right_paw: under the default 0.6, over the project's 0.5
                       [0.98, 0.1, 0.61]])       # right_paw: no position at all


def write_project(root: Path, pcutoff: float | None = 0.5) -> Path:
    """A single-animal DeepLabCut project (as in test_convert_coco_dlc) whose hand labels differ from KEYPOINTS."""
    folder = root / "labeled-data" / "mouse1"
    folder.mkdir(parents=True)
    config = {"Task": "Grooming", "scorer": "Ann", "bodyparts": PARTS, "skeleton": [["left_paw", "nose"]]}
    if pcutoff is not None:
        config["pcutoff"] = pcutoff
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = [["scorer", *["Ann"] * 6], ["bodyparts", *[p for p in PARTS for _ in (0, 1)]], ["coords", *["x", "y"] * 3]]
    rng = np.random.default_rng(0)
    for name, index in zip(FRAMES, INDEX):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)
        rows.append([index, "40", "40", "41", "41", "42", "30"])
    with open(folder / "CollectedData_Ann.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name]


# ---- likelihood --------------------------------------------------------------------------------------
def test_likelihood_is_one_minus_uncertainty():
    np.testing.assert_allclose(likelihood_from_uncertainty(np.array([[0.0, 0.25], [0.9, np.nan]])),
                               [[1.0, 0.75], [0.1, np.nan]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        likelihood_from_uncertainty(np.array([0.5, 1.5]))


# ---- DeepLabCut --------------------------------------------------------------------------------------
def test_dlc_csv_has_deeplabcut_machine_label_layout(tmp_path):
    path = write_dlc_csv(tmp_path / "machine.csv", "fskp_tiny", PARTS, INDEX, KEYPOINTS, LIKELIHOOD)
    rows = list(csv.reader(open(path, newline="")))
    assert rows[0] == ["scorer", *["fskp_tiny"] * 9]
    assert rows[1] == ["bodyparts", *[p for p in PARTS for _ in range(3)]]
    assert rows[2] == ["coords", *["x", "y", "likelihood"] * 3]
    assert [r[0] for r in rows[3:]] == INDEX
    assert [float(c) for c in rows[3][1:4]] == pytest.approx([10.2, 20.7, 0.99])   # DeepLabCut: - 0.5
    assert rows[5][4:7] == ["", "", "0.1"]                                         # no position: empty x, y
    assert no_partial_files(tmp_path)


def test_dlc_csv_with_frame_numbers_and_failed_write_leaves_nothing(tmp_path):
    path = write_dlc_csv(tmp_path / "video.csv", "s", PARTS, [0, 1, 2], KEYPOINTS, LIKELIHOOD)
    assert [r[0] for r in csv.reader(open(path))][3:] == ["0", "1", "2"]

    class Broken:
        def __str__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dlc_csv(tmp_path / "broken.csv", "s", PARTS, [0, Broken(), 2], KEYPOINTS, LIKELIHOOD)
    assert not (tmp_path / "broken.csv").exists() and no_partial_files(tmp_path)
    with pytest.raises(ValueError, match="3 index entries for 2 frames"):
        write_dlc_csv(tmp_path / "bad.csv", "s", PARTS, [0, 1, 2], KEYPOINTS[:2], LIKELIHOOD[:2])


def test_dlc_csv_round_trip_through_the_reader(tmp_path):
    src = write_project(tmp_path / "proj")
    path = write_dlc_csv(tmp_path / "machine.csv", "fskp", PARTS, INDEX, KEYPOINTS, LIKELIHOOD)
    frames = dlc.read_label_file(path, src, tuple(PARTS))                    # default pcutoff 0.6
    assert [f.id for f in frames] == ["mouse1/img001", "mouse1/img007", "mouse1/img013"]
    visible = np.array([f.visible for f in frames])
    assert visible.tolist() == [[True, True, True], [True, False, False], [True, False, True]]
    assert visible.tolist() == (np.isfinite(KEYPOINTS[..., 0]) & (LIKELIHOOD >= 0.6)).tolist()
    got = np.array([f.keypoints for f in frames])
    np.testing.assert_allclose(got[visible], KEYPOINTS[visible], atol=1e-6)
    lower = dlc.read_label_file(path, src, tuple(PARTS), pcutoff=0.5)
    assert lower[1].visible.tolist() == [True, True, False]


@pytest.mark.parametrize("cell, message", [("", "likelihood is missing"),
                                           ("high", "non-numeric value 'high' for right_paw likelihood"),
                                           ("1.5", "outside")])
def test_dlc_bad_likelihood_names_file_and_line(tmp_path, cell, message):
    src = write_project(tmp_path / "proj")
    path = write_dlc_csv(tmp_path / "machine.csv", "fskp", PARTS, INDEX, KEYPOINTS, LIKELIHOOD)
    rows = list(csv.reader(open(path, newline="")))
    rows[4][6] = cell                                     # frame 2's right_paw likelihood; its x, y are given
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataError, match=message) as e:
        dlc.read_label_file(path, src, tuple(PARTS))
    assert e.value.path == str(path) and e.value.row == 5


def test_prepare_dlc_reads_machine_labels_with_the_projects_pcutoff(tmp_path, capsys):
    from jobs.cli import main

    src = write_project(tmp_path / "proj", pcutoff=0.5)
    labels = write_dlc_csv(tmp_path / "elsewhere" / "machine.csv", "fskp", PARTS, INDEX, KEYPOINTS, LIKELIHOOD)
    out = tmp_path / "out"
    assert main(["prepare", "dlc", "--src", str(src), "--labels", str(labels), "--out", str(out)]) == 0
    ds = PreparedDataset(out)
    assert ds.meta["counts"] == {"train": 3} and ds.meta["labels"] == str(labels.resolve())
    a = ds.arrays("train")
    assert a["id"].tolist() == ["mouse1/img001", "mouse1/img007", "mouse1/img013"]
    want_visible = np.isfinite(KEYPOINTS[..., 0]) & (LIKELIHOOD >= 0.5)     # the project's pcutoff, not 0.6
    assert a["visible"].tolist() == want_visible.tolist() and a["visible"][1, 1]
    crop = a["crop_box"].astype(np.float64)
    source_xy = crop[:, None, :2] + a["keypoints"] * ((crop[:, 2] - crop[:, 0]) / ds.size)[:, None, None]
    np.testing.assert_allclose(source_xy[want_visible], KEYPOINTS[want_visible], atol=0.01)   # not CollectedData


def test_dlc_pcutoff_defaults_and_is_checked(tmp_path):
    assert dlc.pcutoff_of(tmp_path, {}) == 0.6
    with pytest.raises(DataError, match="pcutoff"):
        dlc.pcutoff_of(tmp_path, {"pcutoff": 60})
    src = write_project(tmp_path / "proj", pcutoff=None)
    labels = write_dlc_csv(tmp_path / "machine.csv", "fskp", PARTS, INDEX, KEYPOINTS, LIKELIHOOD)
    card = dlc.card_for(src)
    got = [i for i in dlc.instances(src, card, Counter(), labels=labels) if i.split == "train"]
    assert got[1].visible.tolist() == [True, False, False]                  # 0.55 < default 0.6


def test_labels_refused_by_formats_without_a_label_file(tmp_path):
    with pytest.raises(ValueError, match="does not read a separate label file"):
        convert("coco", tmp_path, tmp_path / "out", labels=tmp_path / "x.csv")


# ---- COCO --------------------------------------------------------------------------------------------
def test_coco_json_structure_flags_and_round_trip(tmp_path, tiny_card):
    images = [{"file_name": f"frames/{f}", "width": 64, "height": 48, "frame_index": i} for i, f in enumerate(FRAMES)]
    path = write_coco_json(tmp_path / "ann" / "person_keypoints_train.json", tiny_card, images, KEYPOINTS,
                           LIKELIHOOD, cutoff=0.6)
    data = json.loads(path.read_text())
    assert [im["id"] for im in data["images"]] == [1, 2, 3] and data["images"][2]["frame_index"] == 2
    cat = data["categories"][0]
    assert cat["id"] == 1 and cat["name"] == "tiny" and cat["keypoints"] == ["left", "right", "top"]
    assert sorted(map(sorted, cat["skeleton"])) == [[1, 2], [1, 3], [2, 3]]
    anns = data["annotations"]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (2, 1), (3, 1)]
    flags = np.array([a["keypoints"][2::3] for a in anns])
    assert flags.tolist() == [[2, 2, 2], [2, 0, 0], [2, 0, 2]]
    assert anns[1]["keypoints"][3:9] == [0, 0, 0, 0, 0, 0]                      # v = 0: x = y = 0
    assert [a["num_keypoints"] for a in anns] == [3, 1, 2]
    assert anns[2]["keypoint_scores"] == [0.98, 0.1, 0.61]
    assert anns[0]["score"] == pytest.approx(LIKELIHOOD[0].mean())
    assert anns[2]["bbox"] == pytest.approx([14.5, 7.25, 3.5, 17.25])           # around the v = 2 keypoints
    assert anns[2]["area"] == pytest.approx(3.5 * 17.25) and anns[1]["area"] == 0
    for n, a in enumerate(anns):
        kp, vis = coco.parse_keypoints(a["keypoints"], 3, path, f"annotations[{n}]")
        assert vis.tolist() == (flags[n] == 2).tolist()
        np.testing.assert_allclose(kp[vis], KEYPOINTS[n][vis], atol=1e-9)

    for im in images:                                   # and through the COCO converter's file reader
        Image.new("RGB", (64, 48)).save(tmp_path / "ann" / Path(im["file_name"]).name)
    got = list(coco.read_annotation_file(path, "train", [tmp_path / "ann"], tiny_card, Counter()))
    np.testing.assert_allclose(got[2].keypoints[[0, 2]], KEYPOINTS[2, [0, 2]], atol=1e-9)
    assert no_partial_files(tmp_path / "ann")


def test_coco_json_rejects_a_mismatched_card_and_cutoff(tmp_path, tiny_card):
    images = [{"file_name": "a.png", "width": 64, "height": 48}] * 3
    with pytest.raises(ValueError, match="2 keypoints per frame but 3 names"):
        write_coco_json(tmp_path / "a.json", tiny_card, images, KEYPOINTS[:, :2], LIKELIHOOD[:, :2], 0.6)
    with pytest.raises(ValueError, match="cutoff"):
        write_coco_json(tmp_path / "a.json", tiny_card, images, KEYPOINTS, LIKELIHOOD, 60)
    assert not (tmp_path / "a.json").exists()


# ---- overlays ----------------------------------------------------------------------------------------
def test_overlay_names_do_not_collide():
    names = overlay_names([Path("a/img1.png"), Path("b/img1.png"), Path("b/img2.png"), Path("c/b/img1.png")])
    assert names == ["a_img1.jpg", "b_img1.jpg", "img2.jpg", "b_img1-2.jpg"]


def test_overlay_images_keep_size_and_draw_visible_and_hidden_keypoints(tmp_path):
    sources = []
    for folder, (w, h) in (("a", (832, 747)), ("b", (832, 747)), ("c", (64, 48))):
        sources.append(tmp_path / "src" / folder / ("frame.png" if folder != "c" else "small.png"))
        sources[-1].parent.mkdir(parents=True)
        Image.new("RGB", (w, h), (128, 128, 128)).save(sources[-1])
    kp = np.array([[[100.5, 200.5], [400.5, 300.5]]] * 2 + [[[10.5, 10.5], [40.5, 30.5]]])
    lk = np.array([[0.9, 0.2]] * 3)
    paths = write_overlay_images(sources, tmp_path / "out", kp, lk, links=[(0, 1)], cutoff=0.6)
    assert [p.name for p in paths] == ["a_frame.jpg", "b_frame.jpg", "small.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_frame.jpg", "b_frame.jpg", "small.jpg"]
    for src, out in zip(sources, paths):
        assert Image.open(out).size == Image.open(src).size
    big = np.asarray(Image.open(paths[0]).convert("RGB")).astype(int)
    colours = keypoint_colours(2)
    assert np.abs(big[200, 100] - colours[0]).max() < 40                # visible: a filled disc
    inside = big[302:305, 399:402].reshape(-1, 3).mean(0)              # hidden: hollow (off the link)
    assert np.abs(inside - colours[1]).max() > 80 and abs(inside.mean() - 128) < 20   # (JPEG bleeds chroma)
    ring = 5 + 0.03 * 832 * 0.8                                         # uncertainty ring of the hidden one
    assert np.abs(big[300, 400 - int(round(ring)) - 1: 400 - int(round(ring)) + 2] - 128).max() > 40
    assert no_partial_files(tmp_path / "out")


def make_video(path: Path, n: int = 12, w: int = 64, h: int = 48, rate: int = 10) -> Path:
    """A tiny mpeg4 video of a white square moving right on black."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[10:22, 3 * i:3 * i + 12] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def decode(path: Path) -> tuple[list[np.ndarray], Fraction]:
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], rate


@pytest.mark.parametrize("w, h", [(64, 48), (63, 47)])
def test_overlay_video_has_every_frame_at_the_source_size_and_rate(tmp_path, w, h):
    video = make_video(tmp_path / "in.mp4", w=w, h=h)
    keypoints = {i: (np.array([[3 * i + 6.5, 16.5], [30.5, 40.5]]), np.array([0.95, 0.3])) for i in range(10)}
    calls = []
    out = tmp_path / "out" / "overlay.mp4"
    n = write_overlay_video(video, out, keypoints, links=[(0, 1)], cutoff=0.6,
                            progress=lambda i, total: calls.append((i, total)))
    assert n == 12 and calls[-1] == (12, 12) and len(calls) == 12
    frames, rate = decode(out)
    source, _ = decode(video)
    assert len(frames) == 12 and rate == 10
    assert frames[0].shape == (h + h % 2, w + w % 2, 3)                # odd sizes gain one row / column
    diff = [np.abs(a[:h, :w].astype(int) - b.astype(int)).mean() for a, b in zip(frames, source)]
    assert min(diff[:10]) > 2 * max(diff[10:])                        # frames 10, 11 are not in the dict: undrawn
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.mp4"]


def test_likelihood_strip_shows_each_parts_worst_stretch(tmp_path):
    from pipeline.draw import STRIP_ROW, likelihood_colour, likelihood_strip

    n, fps, pcutoff = 108_000, 30.0, 0.6                      # an hour at 30 frames/s: 90 frames a column
    likelihood = np.lib.format.open_memmap(tmp_path / "likelihood.npy", "w+", np.float64, (n, 3))
    likelihood[:] = 0.95
    likelihood[40_000:42_000, 1] = 0.1                        # the second part lost for 67 s
    likelihood[90_045, 2] = 0.2                               # one bad frame of the third part
    likelihood[:180, 0] = np.nan                              # frames never decoded
    image = likelihood_strip(["nose", "ear", "tail"], likelihood, np.arange(n), fps, pcutoff, "a.mp4")
    left, top = 130, 22
    assert image.shape == (top + 3 * STRIP_ROW + 30, left + 1200 + 70, 3)
    pixel = lambda part, frame: tuple(image[top + part * STRIP_ROW + STRIP_ROW // 2, left + frame // 90])  # noqa: E731
    good, bad, grey = (tuple(likelihood_colour(np.array(v), pcutoff)) for v in (0.95, 0.1, np.nan))
    assert pixel(1, 41_000) == bad and pixel(0, 41_000) == good and pixel(1, 30_000) == good
    assert pixel(2, 90_045) == tuple(likelihood_colour(np.array(0.2), pcutoff))   # one frame is not averaged away
    assert pixel(2, 90_045)[0] > pixel(2, 90_045)[1] and good[1] > good[0]     # red under pcutoff, green above
    assert pixel(0, 0) == grey and pixel(0, 200) == good


@pytest.mark.parametrize("n", [7, 1200, 8193, 30_001])
def test_lowest_per_column_is_each_columns_minimum_read_in_chunks(n):
    from pipeline.draw import lowest_per_column

    likelihood = np.random.default_rng(n).uniform(0, 1, (n, 2))
    likelihood[n // 2] = np.nan
    columns = min(1200, n)
    starts, worst, below = lowest_per_column(likelihood, columns, 0.6)
    ends = np.r_[starts[1:], n]
    expected = np.array([np.fmin.reduce(likelihood[a:b], axis=0) for a, b in zip(starts, ends)])   # column by column
    np.testing.assert_array_equal(worst, expected)
    assert below.tolist() == (likelihood < 0.6).sum(axis=0).tolist()
