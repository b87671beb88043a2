"""Converters for COCO keypoint JSON, ATRW, CarFusion and DeepLabCut projects.

Each fixture is written in the format's real layout (tiny PIL images); the DeepLabCut converter also
runs on the real project in /work/shared/data/dlc-reaching through `fskp prepare`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.card import load_card
from pipeline.converters import convert
from pipeline.converters import coco, dlc
from pipeline.prepared import DataError, PreparedDataset, square_crop_box
from tests.converter_fixtures import assert_nothing_written, write_card, write_image

REAL_DLC = Path("/work/shared/data/dlc-reaching")


def back_to_source(ds: PreparedDataset, arrays: dict) -> np.ndarray:
    """Prepared keypoints [N, K, 2] -> source-image pixels via crop_box (pipeline/prepared.py)."""
    crop = arrays["crop_box"].astype(np.float64)
    return crop[:, None, :2] + arrays["keypoints"] * ((crop[:, 2] - crop[:, 0]) / ds.size)[:, None, None]


def shipped_card(name: str, keypoints: list[str]):
    """pipeline/cards/<name>.yaml, checked to have as many keypoints as the fixture writes."""
    card = load_card(name)
    assert card.num_keypoints == len(keypoints)
    return card


# ---- COCO --------------------------------------------------------------------------------------------
COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "tail"]
COCO_SKELETON = [[1, 2], [1, 3], [2, 4], [3, 5]]          # 1-based, as COCO writes it; tail unconnected


def coco_ann(ann_id, image_id, kps, bbox=(4, 6, 40, 30)):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
            "num_keypoints": sum(1 for v in kps[2::3] if v > 0), "keypoints": kps, "area": 1.0}


def write_coco(root: Path) -> Path:
    """COCO 2017 layout: annotations/person_keypoints_<split>2017.json + <split>2017/ image folders."""
    cat = {"id": 1, "name": "critter", "supercategory": "animal", "keypoints": COCO_NAMES, "skeleton": COCO_SKELETON}
    train_kps = [10, 12, 2, 8, 10, 2, 14, 10, 1, 6, 8, 2, 18, 8, 2, 0, 0, 0]          # right_eye occluded, tail unlabeled
    files = {
        "train2017": ([{"id": 7, "file_name": "000007.jpg", "width": 64, "height": 48}],
                      [coco_ann(100, 7, train_kps),
                       coco_ann(101, 7, [30, 30, 2, 28, 28, 2, 32, 28, 2, 26, 27, 2, 34, 27, 2, 30, 40, 2]),
                       coco_ann(102, 7, [0] * 18)]),                                     # nothing labeled: skipped
        "val2017": ([{"id": 9, "file_name": "000009.jpg", "width": 50, "height": 40}],
                    [coco_ann(200, 9, [20, 20, 2, 18, 18, 2, 22, 18, 2, 16, 17, 2, 24, 17, 2, 20, 30, 2],
                              bbox=(10, 10, 20, 25))]),
    }
    for tag, (images, anns) in files.items():
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"person_keypoints_{tag}.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": anns, "categories": [cat]}))
        for im in images:
            write_image(root / tag / im["file_name"], im["width"], im["height"], seed=im["id"])
    return root


def test_coco_card_built_from_categories(tmp_path):
    card = coco.card_for(write_coco(tmp_path / "critters"))
    assert card.name == "critters" and card.keypoints == tuple(COCO_NAMES)
    assert set(card.links) == {(0, 1), (0, 2), (1, 3), (2, 4)}
    assert set(card.flip_pairs) == {(1, 2), (3, 4)}
    assert list(card.parts.values()) == [(0, 1, 2, 3, 4)]        # tail is alone: in no part
    assert (card.metric.kind, card.metric.normalize, card.metric.alpha) == ("pck", "bbox_max_side", 0.1)


def test_coco_card_without_skeleton_has_one_part_with_all_keypoints():
    card = coco.card_from_keypoints("x", "x", ["a", "b", "c"], [], origin="test")
    assert list(card.parts.values()) == [(0, 1, 2)] and card.links == ()


def test_coco_converts_splits_visibility_and_coordinates(tmp_path):
    src = write_coco(tmp_path / "critters")
    ds = PreparedDataset(convert("coco", src, tmp_path / "out"))
    assert ds.meta["counts"] == {"train": 2, "val": 1}
    assert ds.meta["skipped"] == {"annotations with no labeled keypoint": 1}
    a = ds.arrays("train")
    assert list(a["id"]) == ["person_keypoints_train2017/100", "person_keypoints_train2017/101"]
    # v=1 (occluded but labeled) counts; v=0 does not
    assert a["visible"][0].tolist() == [True, True, True, True, True, False]
    # COCO pixel indices + 0.5 = the prepared format's source pixels
    want = np.array([[10, 12], [8, 10], [14, 10], [6, 8], [18, 8]]) + coco.PIXEL_INDEX_OFFSET
    np.testing.assert_allclose(back_to_source(ds, a)[0, :5], want, atol=0.01)
    box = ds.table("train", ["box"]).column("box").to_pylist()[0]
    assert box == [4.0, 6.0, 44.0, 36.0]                        # COCO [x, y, w, h] -> (x0, y0, x1, y1)
    assert Path(ds.table("val", ["source"]).column("source")[0].as_py()) == src / "val2017" / "000009.jpg"


def test_coco_with_a_given_card_reorders_keypoints_by_name(tmp_path):
    src = write_coco(tmp_path / "critters")
    order = ["tail", "right_ear", "left_ear", "right_eye", "left_eye", "nose"]
    ds = PreparedDataset(convert("coco", src, tmp_path / "out", card=write_card(tmp_path, "mine", order)))
    a = ds.arrays("train")
    assert a["visible"][0].tolist() == [False, True, True, True, True, True]
    np.testing.assert_allclose(back_to_source(ds, a)[0, 5], [10.5, 12.5], atol=0.01)   # nose


def test_coco_split_comes_from_the_file_name(tmp_path):
    assert coco.split_of(Path("ap10k-val-split1.json")) == "val"
    with pytest.raises(DataError, match="cannot tell the split"):
        coco.split_of(Path("keypoints_all.json"))


def _break_coco(src: Path, how: str) -> str:
    """Damage the train file of a COCO fixture; returns the file's name."""
    path = src / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    kps = data["annotations"][1]["keypoints"]
    if how == "missing image":
        (src / "train2017" / "000007.jpg").unlink()
    elif how == "coordinate count":
        data["annotations"][1]["keypoints"] = kps[:-1]
    elif how == "NaN coordinate":
        kps[3] = float("nan")
    elif how == "far outside":
        kps[0] = 5000
    path.write_text(json.dumps(data))                           # json writes NaN as the literal NaN
    return path.name


@pytest.mark.parametrize("how, message", [("missing image", "not found"), ("coordinate count", "3 x 6 = 18"),
                                          ("NaN coordinate", "NaN"), ("far outside", "far outside")])
def test_coco_bad_input_names_file_and_row_and_writes_nothing(tmp_path, how, message):
    src = write_coco(tmp_path / "critters")
    name = _break_coco(src, how)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as e:
        convert("coco", src, out)
    assert name in str(e.value)
    row = "annotations[0] (id 100)" if how == "missing image" else "annotations[1] (id 101)"
    assert e.value.row == row and row in str(e.value)
    assert_nothing_written(out)


# ---- ATRW --------------------------------------------------------------------------------------------
ATRW_NAMES = ["left_ear", "right_ear", "nose", "right_shoulder", "right_front_paw", "left_shoulder",
              "left_front_paw", "right_hip", "right_knee", "right_back_paw", "left_hip", "left_knee",
              "left_back_paw", "tail", "center"]


def write_atrw(root: Path) -> Path:
    """The CVWC 2019 pose track layout: keypoint_<split>.json (images' 'filename' key) + <split>/ folders."""
    cat = {"supercategory": "tiger", "id": 1, "name": "tiger", "keypoints": ATRW_NAMES,
           "skeleton": [[1, 3], [2, 3], [3, 15], [15, 14], [4, 5], [6, 7], [8, 9], [9, 10], [11, 12], [12, 13]]}
    for split, image_id in (("train", 2), ("val", 1)):
        kps = []
        for i in range(15):
            kps += [20 + 3 * i, 10 + 2 * i, 0 if i == 13 else 2]              # tail not labeled
        data = {"images": [{"id": image_id, "filename": f"{image_id:06d}.jpg", "width": 96, "height": 64}],
                "annotations": [coco_ann(image_id, image_id, kps, bbox=(15, 5, 70, 45))], "categories": [cat]}
        root.mkdir(parents=True, exist_ok=True)
        (root / f"keypoint_{split}.json").write_text(json.dumps(data))
        write_image(root / split / f"{image_id:06d}.jpg", 96, 64, seed=image_id)
    return root


def test_atrw_reads_the_official_pose_layout(tmp_path):
    src = write_atrw(tmp_path / "atrw")
    card = shipped_card("atrw", ATRW_NAMES)
    ds = PreparedDataset(convert("atrw", src, tmp_path / "out", card=card))
    assert ds.meta["counts"] == {"train": 1, "val": 1}
    a = ds.arrays("train")
    assert a["id"].tolist() == ["train/2"]
    assert a["visible"][0].sum() == 14 and not a["visible"][0, card.keypoints.index("tail")]
    np.testing.assert_allclose(a["crop_box"][0], [0, -16, 96, 80])     # the whole 96 x 64 tiger crop, squared
    want = np.array([[20 + 3 * i, 10 + 2 * i] for i in range(15)]) + 0.5
    order = [ATRW_NAMES.index(n) for n in card.keypoints] if set(card.keypoints) == set(ATRW_NAMES) else range(15)
    vis = a["visible"][0]
    np.testing.assert_allclose(back_to_source(ds, a)[0][vis], want[list(order)][vis], atol=0.01)


def test_atrw_without_annotation_files_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="keypoint_train.json"):
        convert("atrw", tmp_path / "empty", tmp_path / "out", card=write_card(tmp_path, "atrw", ATRW_NAMES))


# ---- CarFusion ---------------------------------------------------------------------------------------
CAR_NAMES = [f"kp{i}" for i in range(1, 15)]


def write_carfusion(root: Path) -> Path:
    """Sequence folders with gt/<cam>_<frame>.txt (x,y,keypoint_id,car_id,visibility) + images_jpg/."""
    seqs = {"train/car_fifth2": ["40,30,1,1,1", "60,31,2,1,2", "0,0,3,1,1",        # kp3 not placed
                                 "200,30,4,1,1",                                    # kp4 outside the 120-px frame
                                 "90,50,1,2,1", "100,55,5,2,3"],
            "test/car_fifth1": ["20,20,14,1,1", "30,25,7,1,1"],
            "train/car_craig1": ["10,10,1,1,1", "12,12,2,1,1"]}                     # not in the paper's split
    for seq, lines in seqs.items():
        (root / seq / "gt").mkdir(parents=True)
        (root / seq / "gt" / "12_000041.txt").write_text("\n".join(lines) + "\n")
        write_image(root / seq / "images_jpg" / "12_000041.jpg", 120, 80)
    return root


def test_carfusion_one_instance_per_car_fifth_street_split(tmp_path):
    src = write_carfusion(tmp_path / "carfusion")
    card = shipped_card("carfusion", CAR_NAMES)
    ds = PreparedDataset(convert("carfusion", src, tmp_path / "out", card=card))
    assert ds.meta["counts"] == {"train": 2, "test": 1}
    a = ds.arrays("train")
    assert a["id"].tolist() == ["car_fifth2/12_000041/car1", "car_fifth2/12_000041/car2"]
    assert np.flatnonzero(a["visible"][0]).tolist() == [0, 1]              # occluded kp2 counts; kp3, kp4 do not
    assert np.flatnonzero(a["visible"][1]).tolist() == [0, 4]
    src_xy = back_to_source(ds, a)
    np.testing.assert_allclose(src_xy[0, :2], [[40.5, 30.5], [60.5, 31.5]], atol=0.01)
    np.testing.assert_allclose(src_xy[1, [0, 4]], [[90.5, 50.5], [100.5, 55.5]], atol=0.01)
    assert np.flatnonzero(ds.arrays("test")["visible"][0]).tolist() == [6, 13]


def test_carfusion_bad_line_names_file_and_line(tmp_path):
    src = write_carfusion(tmp_path / "carfusion")
    gt = src / "test/car_fifth1/gt/12_000041.txt"
    gt.write_text("20,20,14,1,1\n30,25,7\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="expected 4 or 5") as e:
        convert("carfusion", src, out, card=load_card(write_card(tmp_path, "carfusion", CAR_NAMES)))
    assert e.value.path == str(gt) and e.value.row == 2
    assert_nothing_written(out)


# ---- DeepLabCut --------------------------------------------------------------------------------------
DLC_PARTS = ["left_paw", "right_paw", "nose"]
DLC_ROWS = {  # frame -> [x, y] per body part, "" for not labeled
    "img001.png": ["10.2", "20.7", "30.0", "21.5", "20.25", "5.5"],
    "img007.png": ["12", "22", "", "", "19", "6"],                   # right_paw: empty cells
    "img013.png": ["14", "24", "33", "25", "NaN", "NaN"],            # nose: NaN
}


def write_dlc(root: Path, index_columns: int = 1, videos: bool = False) -> Path:
    """A single-animal DeepLabCut project; index_columns 1 (older DLC) or 3 (newer DLC)."""
    video_dir = root / "labeled-data" / "mouse1"
    video_dir.mkdir(parents=True)
    config = {"Task": "Grooming", "scorer": "Ann", "date": "Jan1", "bodyparts": DLC_PARTS,
              "skeleton": [["left_paw", "nose"], ["right_paw", "nose"]],
              "video_sets": {"/nonexistent/lab/mouse1.avi": {"crop": "0, 64, 0, 48"}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pad = [""] * (index_columns - 1)
    rows = [["scorer", *pad, *["Ann"] * 6],
            ["bodyparts", *pad, *[p for p in DLC_PARTS for _ in (0, 1)]],
            ["coords", *pad, *["x", "y"] * 3]]
    for i, (frame, cells) in enumerate(DLC_ROWS.items()):
        write_image(video_dir / frame, 64, 48, seed=i)
        index = [f"labeled-data/mouse1/{frame}"] if index_columns == 1 else ["labeled-data", "mouse1", frame]
        rows.append([*index, *cells])
    write_image(video_dir / "img020.png", 64, 48, seed=9)          # extracted but not labeled
    with open(video_dir / "CollectedData_Ann.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    if videos:
        (root / "videos").mkdir()
        (root / "videos" / "mouse1.avi").write_bytes(b"")
    return root


def test_dlc_card_from_config(tmp_path):
    card = dlc.card_for(write_dlc(tmp_path / "proj"))
    assert card.name == "dlc-grooming" and card.keypoints == tuple(DLC_PARTS)
    assert set(card.links) == {(0, 2), (1, 2)} and card.flip_pairs == ((0, 1),)
    assert list(card.parts.values()) == [(0, 1, 2)]


@pytest.mark.parametrize("index_columns", [1, 3])
def test_dlc_project_crop_visibility_and_coordinates(tmp_path, index_columns):
    src = write_dlc(tmp_path / "proj", index_columns)
    ds = PreparedDataset(convert("dlc", src, tmp_path / "out"))
    assert ds.meta["counts"] == {"train": 3, "unlabeled": 1}
    a = ds.arrays("train")
    assert a["id"].tolist() == ["mouse1/img001", "mouse1/img007", "mouse1/img013"]
    assert a["visible"].tolist() == [[True, True, True], [True, False, True], [True, True, False]]
    # one square crop for the whole project: all labeled keypoints' box, squared, margin 0.25
    labeled = np.array([[10.2, 20.7], [30, 21.5], [20.25, 5.5], [12, 22], [19, 6], [14, 24], [33, 25]]) + 0.5
    want_crop = square_crop_box((*labeled.min(0), *labeled.max(0)), dlc.DEFAULT_MARGIN)
    crops = np.concatenate([a["crop_box"], ds.arrays("unlabeled")["crop_box"]])
    np.testing.assert_allclose(crops, np.tile(want_crop, (4, 1)), atol=1e-4)
    src_xy = back_to_source(ds, a) - dlc.PIXEL_INDEX_OFFSET
    np.testing.assert_allclose(src_xy[0], [[10.2, 20.7], [30, 21.5], [20.25, 5.5]], atol=0.01)
    np.testing.assert_allclose(src_xy[2, :2], [[14, 24], [33, 25]], atol=0.01)


def test_dlc_pool_videos(tmp_path):
    assert dlc.pool_videos(write_dlc(tmp_path / "a")) == []
    src = write_dlc(tmp_path / "b", videos=True)
    assert dlc.pool_videos(src) == [src / "videos" / "mouse1.avi"]     # video_sets' path is not on this machine
    listed = tmp_path / "elsewhere.mp4"
    listed.write_bytes(b"")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["video_sets"] = {str(listed): {"crop": "0, 64, 0, 48"}}
    (src / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert dlc.pool_videos(src) == [listed]


@pytest.mark.parametrize("how, line, message", [
    ("missing image", 5, "image not found"),
    ("column count", 6, "expected 7 columns, got 6"),
    ("non-numeric", 4, "non-numeric value 'abc' for right_paw x"),
    ("half a point", 4, "only one of x, y"),
    ("far outside", 5, "far outside"),
])
def test_dlc_bad_input_names_csv_and_row_and_writes_nothing(tmp_path, how, line, message):
    src = write_dlc(tmp_path / "proj")
    path = src / "labeled-data" / "mouse1" / "CollectedData_Ann.csv"
    rows = list(csv.reader(open(path, newline="")))
    if how == "missing image":
        (src / "labeled-data" / "mouse1" / "img007.png").unlink()
    elif how == "column count":
        rows[5] = rows[5][:-1]
    elif how == "non-numeric":
        rows[3][3] = "abc"
    elif how == "half a point":
        rows[3][4] = ""
    elif how == "far outside":
        rows[4][1] = "900"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as e:
        convert("dlc", src, out)
    assert e.value.path == str(path) and e.value.row == line
    assert f"CollectedData_Ann.csv, row {line}" in str(e.value)
    assert_nothing_written(out)


@pytest.mark.skipif(not REAL_DLC.exists(), reason="shared DeepLabCut example project not present")
def test_dlc_real_reaching_project_through_the_cli(tmp_path, capsys):
    from jobs.cli import main

    out = tmp_path / "reaching"
    assert main(["prepare", "dlc", "--src", str(REAL_DLC), "--out", str(out)]) == 0
    ds = PreparedDataset(out)
    assert ds.meta["counts"] == {"train": 55} and ds.card.num_keypoints == 5
    a = ds.arrays("train")

    with open(REAL_DLC / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv", newline="") as f:
        rows = list(csv.reader(f))
    parts = rows[1]
    expected = {}
    for r in rows[3:]:
        frame_id = "reachingvideo1/" + Path(r[0]).stem
        xy = [[float(r[j]) if r[j] else math.nan, float(r[j + 1]) if r[j + 1] else math.nan]
              for j in range(1, len(r), 2)]
        expected[frame_id] = (np.array(xy), [parts[j] for j in range(1, len(r), 2)])
    assert sorted(a["id"]) == sorted(expected)
    tongue = ds.card.index("Tongue")
    empty_tongue = {i for i, (xy, names) in expected.items() if math.isnan(xy[names.index("Tongue"), 0])}
    assert len(empty_tongue) == sum(1 for r in rows[3:] if r[1 + 2 * parts[1::2].index("Tongue")] == "")
    assert {i for i, v in zip(a["id"], a["visible"][:, tongue]) if not v} == empty_tongue

    crop = a["crop_box"]
    assert np.allclose(crop, crop[0], atol=1e-4)                          # one crop for the whole project
    assert abs((crop[0, 2] - crop[0, 0]) - (crop[0, 3] - crop[0, 1])) < 1e-3  # square
    src_xy = back_to_source(ds, a) - dlc.PIXEL_INDEX_OFFSET
    for n, frame_id in enumerate(a["id"]):
        xy, names = expected[frame_id]
        want = xy[[names.index(k) for k in ds.card.keypoints]]
        labeled = ~np.isnan(want[:, 0])
        assert a["visible"][n].tolist() == labeled.tolist()
        np.testing.assert_allclose(src_xy[n][labeled], want[labeled], atol=0.01)
