"""Converters for data in the forms users hold it: COCO JSON as CVAT and Label Studio export it, folders of
iBUG .pts files, either LSP release alone, a partial SynthesEyes download, SLEAP projects -- and SLEAP
prediction files.  Every input is written on the fly in its tool's own layout (tiny images with white spots
where the keypoints are)."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import sleap_io as sio
from PIL import Image

from pipeline.card import load_card
from pipeline.converters import convert, pts, slp, syntheseyes
from pipeline.prepared import DataError, PreparedDataset
from tests.converter_fixtures import assert_bright_at, assert_nothing_written, spot_image, write_card

SIZE = 64


def back_to_source(ds: PreparedDataset, a: dict) -> np.ndarray:
    """Prepared keypoints [N, K, 2] -> source-image pixels through each row's crop_box."""
    crop = a["crop_box"].astype(np.float64)
    return crop[:, None, :2] + a["keypoints"] * ((crop[:, 2] - crop[:, 0]) / ds.size)[:, None, None]


def assert_on_image(ds: PreparedDataset, a: dict) -> None:
    """Every visible keypoint lies inside the prepared image and on its white spot."""
    for i in range(len(a["id"])):
        vis = a["visible"][i]
        kp = a["keypoints"][i][vis]
        assert ((kp >= 0) & (kp <= ds.size)).all(), f"{a['id'][i]}: a visible keypoint is outside the image"
        for xy in kp:
            assert_bright_at(a["images"][i], xy)


# ---- COCO as CVAT and Label Studio export it -----------------------------------------------------------
HAND = ["wrist", "thumb", "index", "pinky"]
# per image: (file_name in the JSON, file on disk, width, height, [(x, y, v) per keypoint])
CVAT_IMAGES = [
    ("frame_000000.jpg", "frame_000000.jpg", 80, 60, [(20, 30, 2), (30, 20, 2), (40, 22, 1), (0, 0, 0)]),
    ("task_7/frame_000001.jpg", "frame_000001.jpg", 72, 64, [(50, 40, 2), (44, 30, 2), (36, 28, 2), (30, 34, 2)]),
]


def write_cvat_export(root: Path) -> Path:
    """CVAT's "COCO Keypoints 1.0" export: annotations/person_keypoints_default.json + images/default/ (flat).

    Fields as CVAT (Datumaro) writes them: licenses/info, image license/flickr_url/coco_url/date_captured,
    annotation segmentation/area/attributes, float coordinates, v = 2 visible, 1 occluded, 0 absent at (0, 0).
    """
    images, anns = [], []
    for i, (name, disk, w, h, kps) in enumerate(CVAT_IMAGES, start=1):
        images.append({"id": i, "width": w, "height": h, "file_name": name, "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})
        flat = [float(c) for kp in kps for c in kp]
        xs, ys = [x for x, y, v in kps if v], [y for x, y, v in kps if v]
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": [], "area": 0.0,
                     "bbox": [min(xs) - 4.0, min(ys) - 4.0, max(xs) - min(xs) + 8.0, max(ys) - min(ys) + 8.0],
                     "iscrowd": 0, "attributes": {"occluded": False, "keyframe": False}, "keypoints": flat,
                     "num_keypoints": sum(1 for *_, v in kps if v)})
        spot_image(root / "images" / "default" / disk, w, h, [(x, y) for x, y, v in kps if v])
    data = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": 1, "name": "hand", "supercategory": "", "keypoints": HAND,
                            "skeleton": [[1, 2], [1, 3], [1, 4]]}],
            "images": images, "annotations": anns}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "person_keypoints_default.json").write_text(json.dumps(data))
    return root


def check_cvat(ds: PreparedDataset, prefix: str) -> None:
    assert ds.meta["counts"] == {"train": 2}                        # "default" names no split: train
    assert ds.card.keypoints == tuple(HAND)
    assert set(ds.card.links) == {(0, 1), (0, 2), (0, 3)}           # the 1-based skeleton, 0-based
    a = ds.arrays("train")
    assert a["id"].tolist() == [f"{prefix}/1", f"{prefix}/2"]
    assert a["visible"].tolist() == [[True, True, True, False], [True, True, True, True]]   # v=1 counts, v=0 not
    src = back_to_source(ds, a)
    for i, (*_, kps) in enumerate(CVAT_IMAGES):
        want = np.array([(x, y) for x, y, v in kps]) + 0.5
        np.testing.assert_allclose(src[i][a["visible"][i]], want[a["visible"][i]], atol=0.01)
    assert_on_image(ds, a)


def test_coco_cvat_export_as_json_file_with_a_flat_image_folder_through_the_cli(tmp_path, capsys):
    from jobs.cli import main

    root = write_cvat_export(tmp_path / "cvat")
    assert main(["prepare", "coco", "--src", str(root / "annotations" / "person_keypoints_default.json"),
                 "--images", str(root / "images" / "default"), "--out", str(tmp_path / "out"),
                 "--size", str(SIZE)]) == 0
    assert "train 2 (4 keypoints" in capsys.readouterr().out
    ds = PreparedDataset(tmp_path / "out")
    check_cvat(ds, "person_keypoints_default")
    assert ds.card.name == "cvat"                                   # named after the export's folder
    assert ds.meta["images"] == str((root / "images" / "default").resolve())


def test_coco_cvat_export_as_its_folder(tmp_path):
    root = write_cvat_export(tmp_path / "cvat")
    check_cvat(PreparedDataset(convert("coco", root, tmp_path / "out", size=SIZE)), "person_keypoints_default")


LS_IMAGES = [   # file_name as Label Studio writes it (relative to the export, with a task hash), w, h, keypoints
    ("images/3f2a1b7c-hand1.jpg", 90, 70, [(30, 40, 2), (40, 30, 2), (52, 28, 2), (60, 36, 2)]),
    ("images\\9d0e4c21-hand2.jpg", 64, 64, [(20, 20, 2), (0, 0, 0), (30, 40, 2), (44, 44, 2)]),   # Windows export
]


def write_label_studio_export(root: Path) -> Path:
    """Label Studio's COCO export: result.json + images/.  As its converter writes it: the KeyPointLabels
    merged into one category "default" with keypoints and an empty skeleton, next to the rectangle label's
    category; integer keypoints; a separate bbox annotation per rectangle; image and annotation ids from 0."""
    images, anns = [], []
    for i, (name, w, h, kps) in enumerate(LS_IMAGES):
        images.append({"width": w, "height": h, "id": i, "file_name": name})
        anns.append({"id": len(anns), "image_id": i, "category_id": 0, "segmentation": [], "bbox": [5, 5, 50, 50],
                     "ignore": 0, "iscrowd": 0, "area": 2500})                          # the hand's rectangle
        xs, ys = [x for x, y, v in kps if v], [y for x, y, v in kps if v]
        anns.append({"id": len(anns), "image_id": i, "category_id": 1, "keypoints": [c for kp in kps for c in kp],
                     "num_keypoints": sum(1 for *_, v in kps if v),
                     "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0})
        spot_image(root / "images" / name.replace("\\", "/").split("/")[-1], w, h, [(x, y) for x, y, v in kps if v])
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 0, "name": "Hand"},
                           {"id": 1, "name": "default", "supercategory": "default", "keypoints": HAND,
                            "skeleton": []}],
            "info": {"year": 2026, "version": "1.0", "description": "", "contributor": "Label Studio", "url": "",
                     "date_created": "2026-11-30 10:00:00"}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "result.json").write_text(json.dumps(data, indent=2))
    return root


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "json+images"])
def test_coco_label_studio_export(tmp_path, as_file):
    root = write_label_studio_export(tmp_path / "ls-export")
    src, images = (root / "result.json", root / "images") if as_file else (root, None)
    ds = PreparedDataset(convert("coco", src, tmp_path / "out", images=images, size=SIZE))
    assert ds.meta["counts"] == {"train": 2}
    assert ds.card.keypoints == tuple(HAND) and ds.card.links == ()
    a = ds.arrays("train")
    assert a["id"].tolist() == ["result/1", "result/3"]             # the rectangles (ids 0, 2) are not rows
    assert a["visible"].tolist() == [[True] * 4, [True, False, True, True]]
    src_xy = back_to_source(ds, a)
    for i, (*_, kps) in enumerate(LS_IMAGES):
        vis = a["visible"][i]
        np.testing.assert_allclose(src_xy[i][vis], (np.array([(x, y) for x, y, v in kps]) + 0.5)[vis], atol=0.01)
    assert_on_image(ds, a)


def test_coco_json_file_with_a_missing_image_names_file_and_row(tmp_path):
    root = write_label_studio_export(tmp_path / "ls-export")
    (root / "images" / "9d0e4c21-hand2.jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"result\.json, row annotations\[3\] \(id 3\): image 'images\\\\9d0e4c21"):
        convert("coco", root / "result.json", out, images=root / "images", size=SIZE)
    assert_nothing_written(out)


# ---- ATRW, JSON files wherever the archives unpacked them --------------------------------------------------
def write_atrw_unpacked(root: Path) -> list[str]:
    """The CVWC 2019 pose-track archives unpacked into their own folders: atrw_anno_pose_train/keypoint_{train,
    val}.json ('filename' key) and atrw_pose_{train,val}/{train,val}/<image>.jpg."""
    names = list(load_card("atrw").keypoints)
    cat = {"supercategory": "tiger", "id": 1, "name": "tiger", "keypoints": names, "skeleton": [[1, 3], [2, 3]]}
    for split, image_id in (("train", 3), ("val", 8)):
        kps = [c for i in range(15) for c in (10 + 4 * i, 12 + 2 * i, 0 if i == 13 else 2)]     # tail unlabeled
        data = {"images": [{"id": image_id, "filename": f"{image_id:04d}.jpg", "width": 80, "height": 60}],
                "annotations": [{"id": image_id, "image_id": image_id, "category_id": 1, "keypoints": kps,
                                 "num_keypoints": 14, "bbox": [0, 0, 80, 60], "iscrowd": 0, "area": 4800}],
                "categories": [cat]}
        (root / "atrw_anno_pose_train").mkdir(parents=True, exist_ok=True)
        (root / "atrw_anno_pose_train" / f"keypoint_{split}.json").write_text(json.dumps(data))
        spot_image(root / f"atrw_pose_{split}" / split / f"{image_id:04d}.jpg", 80, 60,
                   [(10 + 4 * i, 12 + 2 * i) for i in range(15) if i != 13])
    return names


def test_atrw_json_files_found_wherever_they_are(tmp_path):
    write_atrw_unpacked(tmp_path / "atrw")
    ds = PreparedDataset(convert("atrw", tmp_path / "atrw", tmp_path / "out", size=80))
    assert ds.meta["counts"] == {"train": 1, "val": 1}
    for split in ("train", "val"):
        a = ds.arrays(split)
        assert a["visible"][0].sum() == 14
        want = np.array([(10 + 4 * i, 12 + 2 * i) for i in range(15)]) + 0.5
        np.testing.assert_allclose(back_to_source(ds, a)[0][a["visible"][0]], want[a["visible"][0]], atol=0.01)
        assert_on_image(ds, a)


def test_atrw_two_files_for_one_split_are_named(tmp_path):
    write_atrw_unpacked(tmp_path / "atrw")
    second = tmp_path / "atrw" / "copy" / "keypoint_val.json"
    second.parent.mkdir()
    second.write_text((tmp_path / "atrw" / "atrw_anno_pose_train" / "keypoint_val.json").read_text())
    with pytest.raises(DataError, match=rf"{re.escape(str(second))}: a second keypoint_val\.json"):
        convert("atrw", tmp_path / "atrw", tmp_path / "out")


# ---- iBUG .pts folders ---------------------------------------------------------------------------------
def write_pts(path: Path, points: np.ndarray) -> None:
    """An iBUG .pts file (1-based coordinates) as 300-W ships them."""
    body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}}}\n")


def write_pts_folder(root: Path, k: int = 5) -> dict[str, np.ndarray]:
    """A flat folder: three faces, as .ppm, .jpg and .png; returns the pixel-index spots per stem."""
    rng = np.random.default_rng(5)
    truth = {}
    for stem, suffix in (("face_a", ".ppm"), ("face_b", ".jpg"), ("face_c", ".png")):
        spots = rng.integers(6, 40, size=(k, 2))
        spot_image(root / f"{stem}{suffix}", 48, 48, [tuple(s) for s in spots])
        write_pts(root / f"{stem}.pts", spots + 1.0)                 # 1-based: pixel index + 1
        truth[stem] = spots
    return truth


def test_pts_folder_with_five_points_gets_a_generic_card(tmp_path):
    truth = write_pts_folder(tmp_path / "faces")
    ds = PreparedDataset(convert("pts", tmp_path / "faces", tmp_path / "out", size=SIZE))
    assert ds.meta["counts"] == {"train": 3}
    assert ds.card.keypoints == ("p0", "p1", "p2", "p3", "p4") and ds.card.links == ()
    a = ds.arrays("train")
    assert a["id"].tolist() == ["face_a", "face_b", "face_c"]
    assert a["visible"].all()
    for i, stem in enumerate(a["id"]):
        np.testing.assert_allclose(back_to_source(ds, a)[i], truth[stem] + 0.5, atol=0.01)
    assert_on_image(ds, a)


def test_pts_folder_is_searched_recursively_and_split_by_folder_names(tmp_path):
    write_pts_folder(tmp_path / "faces" / "trainset")
    write_pts_folder(tmp_path / "faces" / "more" / "testset")
    ds = PreparedDataset(convert("pts", tmp_path / "faces", tmp_path / "out",
                                 card=write_card(tmp_path, "five", ["a", "b", "c", "d", "e"]), size=SIZE))
    assert ds.meta["counts"] == {"train": 3, "test": 3}
    assert ds.card.name == "five"
    assert sorted(ds.arrays("test", with_images=False)["id"]) == [f"more/testset/face_{c}" for c in "abc"]


def test_pts_intruder_with_another_point_count_is_named(tmp_path):
    root = tmp_path / "faces"
    write_pts_folder(root)
    intruder = root / "zz_other.pts"
    write_pts(intruder, np.full((19, 2), 10.0))
    spot_image(root / "zz_other.jpg", 48, 48, [])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{re.escape(str(intruder))}, row 2: n_points is 19, but the other "
                                        rf"\.pts files under .* have 5 \(3 of 4 files\)"):
        convert("pts", root, out, size=SIZE)
    assert_nothing_written(out)


def test_pts_without_image_is_named(tmp_path):
    root = tmp_path / "faces"
    write_pts_folder(root)
    (root / "face_b.jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'face_b.pts'))}: image not found"):
        convert("pts", root, out, size=SIZE)
    assert_nothing_written(out)


def test_pts_card_chosen_by_count(tmp_path):
    write_pts(tmp_path / "ibug" / "a.pts", np.full((68, 2), 5.0))
    assert pts.card_for(tmp_path / "ibug").name == "300w"
    write_pts(tmp_path / "seven" / "a.pts", np.full((7, 2), 5.0))
    card = pts.card_for(tmp_path / "seven")
    assert card.num_keypoints == 7 and card.keypoints[-1] == "p6" and card.links == ()


# ---- LSP, either release alone ---------------------------------------------------------------------------
def write_lsp_release(root: Path, extended: bool, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One release's joints.mat + images/ as distributed: original 3 x 14 x N (flag 1 = occluded), extended
    14 x 3 x N (flag 1 = visible).  Joint 0 of image 1 is occluded; every joint sits on a white spot."""
    rng = np.random.default_rng(7 if extended else 8)
    spots = rng.integers(4, 36, size=(n, 14, 2))
    visible = np.ones((n, 14), bool)
    visible[0, 0] = False
    flag = visible if extended else ~visible
    entries = np.concatenate([spots + 1.0, flag[..., None].astype(float)], axis=2)     # [N, 14, 3], 1-based
    joints = entries.transpose(1, 2, 0) if extended else entries.transpose(2, 1, 0)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    for i in range(n):
        name = f"im{i + 1:05d}.jpg" if extended else f"im{i + 1:04d}.jpg"
        spot_image(root / "images" / name, 40, 40, [tuple(s) for s in spots[i][visible[i]]])
    return spots, visible


@pytest.mark.parametrize("extended", [False, True], ids=["lsp", "lspet"])
@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "joints.mat"])
def test_lsp_release_told_by_shape_and_flags_read_per_release(tmp_path, extended, as_file):
    root = tmp_path / "my_lsp"
    spots, visible = write_lsp_release(root, extended)
    src = root / "joints.mat" if as_file else root
    ds = PreparedDataset(convert("lsp", src, tmp_path / "out", card=write_card(tmp_path, "lsp", 14), size=SIZE))
    assert ds.meta["counts"] == {"train": 3}
    a = ds.arrays("train")
    prefix, digits = ("lspet", 5) if extended else ("lsp", 4)
    assert a["id"].tolist() == [f"{prefix}/im{i:0{digits}d}" for i in (1, 2, 3)]
    np.testing.assert_array_equal(a["visible"], visible)            # joint 0 of image 1 occluded in both
    src_xy = back_to_source(ds, a)
    np.testing.assert_allclose(src_xy[a["visible"]], (spots + 0.5)[visible], atol=0.01)
    assert_on_image(ds, a)


def test_lsp_with_an_unknown_shape_names_the_file(tmp_path):
    root = tmp_path / "my_lsp"
    root.mkdir()
    scipy.io.savemat(root / "joints.mat", {"joints": np.zeros((3, 15, 4))})
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'joints.mat'))}: joints has shape \(3, 15, 4\); "
                                        r"expected 3 x 14 x N \(LSP\) or 14 x 3 x N \(LSP extended\)"):
        convert("lsp", root, tmp_path / "out", card=write_card(tmp_path, "lsp", 14), size=SIZE)


# ---- SynthesEyes, one subject folder ---------------------------------------------------------------------
def ellipse(cx: float, cy: float, a: float, b: float, n: int) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


LIDS, IRIS, PUPIL = ellipse(60, 40, 34, 14, 16), ellipse(58, 41, 13, 13, 32), ellipse(57.5, 41.5, 4, 4, 8)


def test_syntheseyes_with_only_one_subject_folder(tmp_path):
    root = tmp_path / "se" / "SynthEyes_data" / "f02"
    stems = ["f02_36_0.1963_-0.7854", "f02_42_-0.0000_-0.1963"]
    for stem in stems:
        root.mkdir(parents=True, exist_ok=True)
        ldmks = {"ldmks_lids_2d": [tuple(p) for p in LIDS], "ldmks_iris_2d": IRIS, "ldmks_pupil_2d": PUPIL,
                 "ldmks_lids_3d": np.zeros((16, 3)), "ldmks_iris_3d": np.zeros((32, 3)),
                 "ldmks_pupil_3d": np.zeros((8, 3))}
        (root / f"{stem}.pkl").write_bytes(pickle.dumps({"look_vec": np.array([0.1, -0.2, -0.97]),
                                                         "head_pose": np.eye(3), "ldmks": ldmks}, protocol=2))
        spot_image(root / f"{stem}.png", 120, 80, [(57, 41)])          # the pupil centre's pixel
    ds = PreparedDataset(convert("syntheseyes", tmp_path / "se", tmp_path / "out",
                                 card=write_card(tmp_path, "syntheseyes", 17), size=120))
    assert ds.meta["counts"] == {"train": 2}                          # f02 is a training model
    a = ds.arrays("train")
    assert sorted(a["id"]) == [f"f02/{s}" for s in sorted(stems)]
    want = syntheseyes.derive_keypoints(LIDS, IRIS, PUPIL)
    for i in range(2):
        np.testing.assert_allclose(back_to_source(ds, a)[i], want, atol=1e-3)
        assert a["visible"][i].all()
    assert ((a["keypoints"] >= 0) & (a["keypoints"] <= 120)).all()
    for i in range(2):
        assert_bright_at(a["images"][i], a["keypoints"][i, 16])      # the pupil centre


def test_syntheseyes_without_any_subject_folder_is_an_error(tmp_path):
    (tmp_path / "se" / "other").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no SynthesEyes model folder \(f01, f02"):
        convert("syntheseyes", tmp_path / "se", tmp_path / "out", card=write_card(tmp_path, "syntheseyes", 17))


# ---- SLEAP ---------------------------------------------------------------------------------------------
NODES = ["head", "left_ear", "right_ear", "tail"]
# SLEAP coordinates: pixel centres at integers, so a node at (x, y) lies on pixel (x, y)
VIDEO_LABELS = {1: [(30, 20), (24, 14), (36, 14), (30, 38)], 4: [(34, 24), (28, 18), (40, 18), (33, 40)]}
IMAGE_LABELS = {1: [(20, 30), (14, 24), None, (22, 44)]}             # right_ear not visible


def frame_with_spots(width: int, height: int, points) -> np.ndarray:
    """A dark blue frame with a white 5 x 5 square on each (x, y) pixel (large enough to survive H.264)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = 60
    for p in points:
        if p is not None:
            img[p[1] - 2:p[1] + 3, p[0] - 2:p[0] + 3] = 255
    return img


def skeleton():
    sk = sio.Skeleton(list(NODES), edges=[("head", "left_ear"), ("head", "right_ear"), ("head", "tail")])
    sk.add_symmetry("left_ear", "right_ear")
    return sk


def user_instance(sk, points):
    xy = np.array([p if p is not None else (np.nan, np.nan) for p in points], float)
    return sio.Instance.from_numpy(xy, skeleton=sk)


def write_slp_project(root: Path) -> Path:
    """A SLEAP project as the GUI saves it: an .mp4 (6 frames) and an image-list video (2 PNGs), user
    instances on frames 1 and 4 of the video and frame 1 of the images, a prediction-only frame 2."""
    root.mkdir(parents=True, exist_ok=True)
    frames = np.stack([frame_with_spots(64, 48, VIDEO_LABELS.get(i, [])) for i in range(6)])
    sio.save_video(frames, str(root / "arena.mp4"), fps=10)
    pngs = []
    for i in range(2):
        pngs.append(root / "frames" / f"img{i:03d}.png")
        pngs[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(frame_with_spots(50, 60, IMAGE_LABELS.get(i, []))).save(pngs[-1])
    sk = skeleton()
    video = sio.Video.from_filename(str(root / "arena.mp4"))
    images = sio.Video.from_filename([str(p) for p in pngs])
    lfs = [sio.LabeledFrame(video=video, frame_idx=i, instances=[user_instance(sk, p)])
           for i, p in VIDEO_LABELS.items()]
    predicted = sio.PredictedInstance.from_numpy(np.full((4, 2), 10.0), skeleton=sk, point_scores=np.ones(4), score=1)
    lfs.append(sio.LabeledFrame(video=video, frame_idx=2, instances=[predicted]))
    lfs += [sio.LabeledFrame(video=images, frame_idx=i, instances=[user_instance(sk, p)])
            for i, p in IMAGE_LABELS.items()]
    path = root / "mice.slp"
    sio.save_slp(sio.Labels(labeled_frames=lfs, videos=[video, images], skeletons=[sk]), str(path), verbose=False)
    return path


def test_slp_project_rows_card_pool_and_one_crop(tmp_path):
    path = write_slp_project(tmp_path / "project")
    ds = PreparedDataset(convert("slp", path, tmp_path / "out", size=SIZE))
    assert ds.meta["counts"] == {"train": 3}
    assert ds.meta["skipped"] == {"frames with predictions only": 1}
    assert ds.meta["pool_videos"] == [str(tmp_path / "project" / "arena.mp4")]
    assert ds.card.keypoints == tuple(NODES)
    assert set(ds.card.links) == {(0, 1), (0, 2), (0, 3)} and ds.card.flip_pairs == ((1, 2),)
    a = ds.arrays("train")
    assert a["id"].tolist() == ["arena/000001", "arena/000004", "frames/000001"]
    video = tmp_path / "project" / "arena.mp4"
    assert a["source"].tolist() == [f"{video}#1", f"{video}#4", str(tmp_path / "project" / "frames" / "img001.png")]
    assert a["visible"].tolist() == [[True] * 4, [True] * 4, [True, True, False, True]]
    assert (a["crop_box"] == a["crop_box"][0]).all()                # one animal: one project crop
    want = [VIDEO_LABELS[1], VIDEO_LABELS[4], IMAGE_LABELS[1]]
    src_xy = back_to_source(ds, a)
    for i, points in enumerate(want):
        for k, p in enumerate(points):
            if p is not None:
                np.testing.assert_allclose(src_xy[i, k], np.array(p) + 0.5, atol=0.01)
    assert_on_image(ds, a)


def test_slp_several_animals_are_cropped_one_by_one(tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    animals = [[(12, 12), (8, 8), (16, 8), (12, 20)], [(50, 40), (46, 36), (54, 36), (50, 52)]]
    Image.fromarray(frame_with_spots(64, 64, animals[0] + animals[1])).save(root / "f0.png")
    sk = skeleton()
    images = sio.Video.from_filename([str(root / "f0.png")])
    lf = sio.LabeledFrame(video=images, frame_idx=0, instances=[user_instance(sk, p) for p in animals])
    sio.save_slp(sio.Labels(labeled_frames=[lf], videos=[images], skeletons=[sk]), str(root / "two.slp"), verbose=False)
    ds = PreparedDataset(convert("slp", root / "two.slp", tmp_path / "out", size=SIZE))
    a = ds.arrays("train")
    assert a["id"].tolist() == ["two/000000/0", "two/000000/1"]
    assert not np.allclose(a["crop_box"][0], a["crop_box"][1])
    for i in range(2):
        np.testing.assert_allclose(back_to_source(ds, a)[i], np.array(animals[i]) + 0.5, atol=0.01)
    assert_on_image(ds, a)


def test_slp_bad_point_and_missing_video_name_file_frame_and_instance(tmp_path):
    path = write_slp_project(tmp_path / "project")
    labels = sio.load_slp(str(path))
    inst = labels.labeled_frames[1].instances[0]
    inst.points["xy"][2] = np.nan                                    # visible, but no coordinate
    inst.points["visible"][2] = True
    bad = tmp_path / "project" / "bad.slp"
    sio.save_slp(labels, str(bad), verbose=False)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}, row labeled frame 1 \(video arena, frame 4\), "
                                        r"instance 0: node 'right_ear' is visible but its coordinate is NaN"):
        convert("slp", bad, out, size=SIZE)
    assert_nothing_written(out)

    (tmp_path / "project" / "arena.mp4").rename(tmp_path / "elsewhere.mp4")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, row labeled frame 0 \(video arena, frame 1\), "
                                        r"instance 0: video not found"):
        convert("slp", path, out, size=SIZE)
    assert_nothing_written(out)


@pytest.mark.parametrize("with_video", [True, False], ids=["video", "image-list"])
def test_write_slp_predictions_opens_with_the_same_skeleton(tmp_path, with_video):
    root = tmp_path / "project"
    write_slp_project(root)
    source = root / "arena.mp4" if with_video else [root / "frames" / "img000.png", root / "frames" / "img001.png"]
    frames = [0, 3, 5] if with_video else [1, 0]
    rng = np.random.default_rng(11)
    kp = rng.uniform(2, 40, size=(len(frames), 4, 2))
    kp[0, 3] = np.nan                                                # no prediction for the tail in one frame
    scores = rng.uniform(0.1, 1.0, size=(len(frames), 4))
    scores[0, 3] = np.nan
    out = slp.write_slp_predictions(tmp_path / "pred" / "predictions.slp", NODES, [(0, 1), (0, 2), (0, 3)], source,
                                    frames, kp, scores)
    labels = sio.load_slp(str(out))
    assert len(labels.skeletons) == 1
    assert labels.skeletons[0].node_names == NODES
    assert sorted(labels.skeletons[0].edge_names) == [("head", "left_ear"), ("head", "right_ear"), ("head", "tail")]
    assert sorted(lf.frame_idx for lf in labels.labeled_frames) == sorted(frames)
    for lf in labels.labeled_frames:
        assert len(lf.instances) == 1 and not lf.user_instances
        inst = lf.instances[0]
        assert isinstance(inst, sio.PredictedInstance)
        n = frames.index(lf.frame_idx)
        np.testing.assert_allclose(inst.numpy(), kp[n] - 0.5, atol=1e-4)   # NaN where there is no prediction
        np.testing.assert_allclose(inst.points["score"][np.isfinite(scores[n])], scores[n][np.isfinite(scores[n])],
                                   atol=1e-6)
        np.testing.assert_allclose(inst.score, np.nanmean(scores[n]), atol=1e-6)
    if with_video:
        assert Path(labels.videos[0].filename) == root / "arena.mp4"
        assert labels.videos[0].shape == sio.load_video(str(root / "arena.mp4")).shape   # from the header
    else:
        assert [Path(f) for f in labels.videos[0].filename] == source
    # the per-frame tables, written from arrays, are the ones sleap-io writes from its own objects
    reference = sio.Labels(labeled_frames=[sio.LabeledFrame(video=labels.videos[0], frame_idx=f, instances=[
        sio.PredictedInstance.from_numpy(np.where(np.isfinite(kp[n]), kp[n] - 0.5, np.nan), skeleton=labels.skeletons[0],
                                         point_scores=np.nan_to_num(scores[n]), score=float(np.nanmean(scores[n])))])
        for n, f in enumerate(frames)], videos=labels.videos, skeletons=labels.skeletons)
    sio.save_slp(reference, str(tmp_path / "reference.slp"), verbose=False)
    with h5py.File(out) as ours, h5py.File(tmp_path / "reference.slp") as theirs:
        for table in ("frames", "instances", "pred_points"):
            assert ours[table].dtype == theirs[table].dtype
            assert ours[table][:].tobytes() == theirs[table][:].tobytes(), table


def test_write_slp_predictions_refuses_bad_input(tmp_path):
    kp, scores = np.zeros((1, 4, 2)), np.ones((1, 4))
    with pytest.raises(FileNotFoundError, match="video not found"):
        slp.write_slp_predictions(tmp_path / "p.slp", NODES, [], tmp_path / "missing.mp4", [0], kp, scores)
    with pytest.raises(ValueError, match=r"keypoints must be \[N, 3, 2\]"):
        slp.write_slp_predictions(tmp_path / "p.slp", NODES[:3], [], tmp_path / "missing.mp4", [0], kp, scores)
    assert not (tmp_path / "p.slp").exists()
