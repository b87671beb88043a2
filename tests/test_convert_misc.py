"""CUB-200-2011, LSP, SynthesEyes and Human3.6M converters on small fixtures in each dataset's own format."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.card import load_card
from pipeline.converters import convert, syntheseyes
from pipeline.prepared import DataError, PreparedDataset, square_crop_box
from tests.converter_fixtures import assert_bright_at, assert_nothing_written, spot_image, write_card

SIZE = 32


def _replace_line(path: Path, line_no: int, text: str | None) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if text is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = text + "\n"
    path.write_text("".join(lines))


# ---- CUB-200-2011 ------------------------------------------------------------------------------------
CUB_IMAGES = [  # image_id, image name, class_id
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg", 1),
    (2, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2),
    (3, "120.Fox_Sparrow/Fox_Sparrow_0003_114588.jpg", 120),
    (4, "200.Common_Yellowthroat/Common_Yellowthroat_0004_190606.jpg", 200),
]
CUB_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
             "right eye", "right leg", "right wing", "tail", "throat"]
CUB_HIDDEN = (3, 9)          # part ids written as not visible (x y = 0 0)


@pytest.fixture
def cub_src(tmp_path):
    """Four birds, one per split-deciding class; the beak (part 2) sits on a white spot."""
    rng = np.random.default_rng(2)
    root = tmp_path / "cub" / "CUB_200_2011"
    (root / "parts").mkdir(parents=True)
    images, labels, boxes, locs, truth = [], [], [], [], {}
    for image_id, name, class_id in CUB_IMAGES:
        box = (15.0 + image_id, 10.0, 50.0, 40.0)
        xy = np.round(rng.uniform(box[:2], (box[0] + box[2], box[1] + box[3]), size=(15, 2)), 1)
        spot = (30 + image_id, 25)
        xy[1] = spot
        vis = np.ones(15, bool)
        for p in CUB_HIDDEN:
            vis[p - 1], xy[p - 1] = False, (0.0, 0.0)
        images.append(f"{image_id} {name}")
        labels.append(f"{image_id} {class_id}")
        boxes.append(f"{image_id} {' '.join(str(v) for v in box)}")
        locs += [f"{image_id} {p + 1} {xy[p, 0]:.1f} {xy[p, 1]:.1f} {int(vis[p])}" for p in range(15)]
        spot_image(root / "images" / name, 90, 70, [spot])
        truth[str(Path(name).with_suffix(""))] = (xy, vis, box)
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "parts" / "parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_PARTS)))
    (root / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    return tmp_path / "cub", truth


def test_cub_class_split_boxes_and_hidden_parts(tmp_path, cub_src):
    src, truth = cub_src
    size = 64                                           # about the source scale, so the spot stays visible
    ds = PreparedDataset(convert("cub", src, tmp_path / "out", card=write_card(tmp_path, "cub", 15), size=size))
    assert ds.meta["counts"] == {"train": 2, "val": 1, "test": 1}
    assert list(ds.arrays("val", with_images=False)["id"]) == ["120.Fox_Sparrow/Fox_Sparrow_0003_114588"]
    for split in ("train", "val", "test"):
        a = ds.arrays(split)
        for i, row_id in enumerate(a["id"]):
            xy, vis, (x, y, w, h) = truth[row_id]
            crop = square_crop_box((x, y, x + w, y + h), 0.25)         # the CUB box decides the crop
            np.testing.assert_allclose(a["crop_box"][i], crop, rtol=1e-5)
            expected = (xy + 0.5 - np.array(crop[:2])) * size / (crop[2] - crop[0])
            np.testing.assert_allclose(a["keypoints"][i][vis], expected[vis], atol=1e-3)
            np.testing.assert_array_equal(a["visible"][i], vis)         # hidden parts stay hidden
            assert_bright_at(a["images"][i], expected[1])


@pytest.mark.parametrize("file, line_no, text, row, message", [
    ("images", None, None, "3", r"image not found: .*Fox_Sparrow_0003_114588\.jpg"),
    ("parts/part_locs", 20, "2 5 31.0 22.0", "20", "expected 5 whitespace-separated fields, got 4"),
    ("parts/part_locs", 20, "2 5 nan 22.0 1", "20", "coordinate 'nan' is NaN"),
    ("parts/part_locs", 20, "2 5 5000 22.0 1", "16-30", r"keypoint 4 at \(5000\.5, 22\.5\) is far outside the 90x70"),
    ("parts/part_locs", 20, "2 5 31.0 22.0 2", "20", "visible flag 2 is not 0 or 1"),
    ("image_class_labels", 4, "4 250", "4", "class_id 250 not in 1..200"),
], ids=["missing-image", "coordinate-count", "nan", "far-outside", "bad-flag", "bad-class"])
def test_cub_bad_input_names_file_and_row(tmp_path, cub_src, file, line_no, text, row, message):
    src, _ = cub_src
    root = src / "CUB_200_2011"
    path = root / f"{file}.txt"
    if line_no is None:
        (root / "images" / CUB_IMAGES[2][1]).unlink()
    else:
        _replace_line(path, line_no, text)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, row {row}: {message}"):
        convert("cub", src, out, card=write_card(tmp_path, "cub", 15), size=SIZE)
    assert_nothing_written(out)


def test_cub_image_without_box_is_an_error(tmp_path, cub_src):
    src, _ = cub_src
    boxes = src / "CUB_200_2011" / "bounding_boxes.txt"
    _replace_line(boxes, 2, None)
    with pytest.raises(DataError, match=rf"{re.escape(str(boxes))}: no entry for image_id 2 \(.*images\.txt, line 2\)"):
        convert("cub", src, tmp_path / "out", card=write_card(tmp_path, "cub", 15), size=SIZE)
    assert_nothing_written(tmp_path / "out")


# ---- LSP + LSP extended ------------------------------------------------------------------------------
LSP_SPOTS = {"lsp/im0001": (12, 9), "lsp/im1500": (14, 11), "lspet/im00001": (10, 13)}   # neck on a spot


def write_lsp(src: Path, rng, with_images: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """lsp_dataset (3x14x2000, flag 1 = occluded) and lspet_dataset (14x3x10000, flag 1 = visible).

    Every image but the spotted ones is a hard link to one small JPEG, to keep the fixture fast.
    """
    truth = {}
    blank = src / "blank.jpg"
    src.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), 20, np.uint8)).save(blank)
    for folder, n, digits in (("lsp_dataset", 2000, 4), ("lspet_dataset", 10000, 5)):
        xy = np.round(rng.uniform(3, 21, size=(n, 14, 2)), 2)         # 1-based pixel coordinates
        visible = np.ones((n, 14), bool)
        visible[0, 0] = False                                           # one occluded / invisible joint
        for row_id, spot in LSP_SPOTS.items():
            if row_id.startswith(folder.split("_")[0] + "/"):
                xy[int(row_id.split("im")[1]) - 1, 12] = np.array(spot) + 1
        flag = (~visible if folder == "lsp_dataset" else visible).astype(float)
        entries = np.concatenate([xy, flag[..., None]], axis=2)         # [n, 14, 3]
        joints = entries.transpose(2, 1, 0) if folder == "lsp_dataset" else entries.transpose(1, 2, 0)
        (src / folder / "images").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(src / folder / "joints.mat", {"joints": joints})
        for i in range(n):
            row_id = f"{folder.split('_')[0]}/im{i + 1:0{digits}d}"
            image = src / folder / "images" / f"im{i + 1:0{digits}d}.jpg"
            if row_id in LSP_SPOTS:
                spot_image(image, 24, 24, [LSP_SPOTS[row_id]])
            elif with_images:
                os.link(blank, image)
            truth[row_id] = (xy[i], visible[i])
    return truth


@pytest.fixture(scope="module")
def lsp_prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lsp")
    truth = write_lsp(tmp / "src", np.random.default_rng(3))
    out = convert("lsp", tmp / "src", tmp / "out", card=write_card(tmp, "lsp", 14), size=SIZE)
    return PreparedDataset(out), truth


def test_lsp_split_flags_and_one_based_coordinates(lsp_prepared):
    ds, truth = lsp_prepared
    assert ds.meta["counts"] == {"train": 11000, "test": 1000}
    test_ids = set(ds.arrays("test", with_images=False)["id"])
    assert len(test_ids) == 1000 and "lsp/im1001" in test_ids and "lsp/im2000" in test_ids
    for split, ids in (("train", ["lsp/im0001", "lspet/im00001"]), ("test", ["lsp/im1500"])):
        a = ds.arrays(split, ids=ids)
        for i, row_id in enumerate(ids):
            xy, vis = truth[row_id]
            kp = xy - 0.5                                               # 1-based pixel index -> continuous
            crop = square_crop_box((*kp[vis].min(0), *kp[vis].max(0)), 0.25)
            np.testing.assert_allclose(a["crop_box"][i], crop, rtol=1e-5)
            expected = (kp - np.array(crop[:2])) * SIZE / (crop[2] - crop[0])
            np.testing.assert_allclose(a["keypoints"][i], expected, atol=1e-3)   # occluded positions kept too
            np.testing.assert_array_equal(a["visible"][i], vis)
            assert_bright_at(a["images"][i], expected[12])
    assert not ds.arrays("train", ids=["lsp/im0001"], with_images=False)["visible"][0, 0]    # LSP flag 1
    assert not ds.arrays("train", ids=["lspet/im00001"], with_images=False)["visible"][0, 0]  # LSPET flag 0


@pytest.mark.parametrize("edit, row, message", [
    (lambda j: j.transpose(1, 0, 2), None, r"joints has shape \(14, 3, 2000\), expected \(3, 14, 2000\)"),
    (lambda j: _set_lsp(j, 2, 3, 0, 2.0), 1, r"image 1 has joint flags \[0\.0, 2\.0\]"),
    (lambda j: _set_lsp(j, 0, 4, 0, np.nan), 1, "image 1 has a NaN or infinite coordinate on a visible joint"),
    (lambda j: _set_lsp(j, 0, 4, 0, 900.0), 1, r"keypoint 4 at \(899\.5, .*\) is far outside the 24x24 image"),
    (None, 1, r"image not found: .*im0001\.jpg"),
], ids=["lspet-layout", "bad-flag", "nan", "far-outside", "missing-image"])
def test_lsp_bad_input_names_file_and_image(tmp_path, edit, row, message):
    src = tmp_path / "src"
    rng = np.random.default_rng(4)
    # joints.mat files only (plus image 1 unless it is the one missing): every error is at image 1
    for folder, shape in (("lsp_dataset", (3, 14, 2000)), ("lspet_dataset", (14, 3, 10000))):
        (src / folder / "images").mkdir(parents=True)
        joints = np.zeros(shape)
        joints[:2] = rng.uniform(3, 21, size=joints[:2].shape) if folder == "lsp_dataset" else 0
        if folder == "lsp_dataset" and edit is not None:
            joints = edit(joints)
        scipy.io.savemat(src / folder / "joints.mat", {"joints": joints})
    if edit is not None:
        spot_image(src / "lsp_dataset/images/im0001.jpg", 24, 24, [])
    mat = src / "lsp_dataset" / "joints.mat"
    out = tmp_path / "out"
    where = re.escape(str(mat)) + (f", row {row}" if row else "")
    with pytest.raises(DataError, match=rf"{where}: {message}"):
        convert("lsp", src, out, card=write_card(tmp_path, "lsp", 14), size=SIZE)
    assert_nothing_written(out)


def _set_lsp(joints: np.ndarray, coord: int, joint: int, image: int, value: float) -> np.ndarray:
    joints[coord, joint, image] = value
    return joints


# ---- SynthesEyes -------------------------------------------------------------------------------------
def ellipse(cx, cy, a, b, n, start=0, reverse=False) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    pts = np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)
    pts = np.roll(pts, -start, axis=0)
    return pts[::-1] if reverse else pts


LIDS, IRIS, PUPIL = ellipse(60, 40, 30, 12, 16), ellipse(55, 42, 8, 8, 32), ellipse(56.5, 41.5, 3, 3, 8)


@pytest.mark.parametrize("start, reverse", [(0, False), (5, False), (11, True)])
def test_syntheseyes_keypoints_from_contours(start, reverse):
    """Corners at the x extremes, lids split by the corner line, iris rays, pupil mean -- whatever the
    contour's starting point and direction."""
    kp = syntheseyes.derive_keypoints(ellipse(60, 40, 30, 12, 16, start, reverse), IRIS, PUPIL)
    assert kp.shape == (17, 2)
    np.testing.assert_allclose(kp[0], (30, 40), atol=1e-9)             # left corner
    np.testing.assert_allclose(kp[4], (90, 40), atol=1e-9)             # right corner
    np.testing.assert_allclose(kp[2], (60, 28), atol=1e-9)             # upper lid centre: the top (y down)
    np.testing.assert_allclose(kp[6], (60, 52), atol=1e-9)             # lower lid centre
    assert kp[1, 0] < 60 < kp[3, 0] and kp[1, 1] < 40 and kp[7, 0] < 60 < kp[5, 0] and kp[5, 1] > 40
    np.testing.assert_allclose(kp[1], (120 - kp[3, 0], kp[3, 1]), atol=1e-9)     # symmetric quarter points
    np.testing.assert_allclose(kp[5], (kp[3, 0], 80 - kp[3, 1]), atol=1e-9)       # lower mirrors upper
    angles = np.radians(np.arange(0, 360, 45))                         # right, lower right, bottom, ...
    np.testing.assert_allclose(kp[8:16], np.stack([55 + 8 * np.cos(angles), 42 + 8 * np.sin(angles)], 1), atol=1e-9)
    np.testing.assert_allclose(kp[16], (56.5, 41.5), atol=1e-9)


@pytest.mark.parametrize("start, reverse", [(0, False), (2, False), (4, True)])
def test_syntheseyes_lid_points_at_arc_length_quarters(start, reverse):
    """A hexagonal margin whose upper and lower paths are 10 + 20 + 10 long: the quarter points are vertices."""
    hexagon = np.array([(30, 40), (36, 32), (56, 32), (62, 40), (56, 48), (36, 48)], float)
    lids = np.roll(hexagon, -start, axis=0)
    lids = lids[::-1] if reverse else lids
    np.testing.assert_allclose(syntheseyes.eyelid_points(lids),
                               [(30, 40), (36, 32), (46, 32), (56, 32), (62, 40), (56, 48), (46, 48), (36, 48)],
                               atol=1e-9)


def syntheseyes_pickle(path: Path, **ldmks_overrides) -> None:
    ldmks = {"ldmks_lids_2d": [tuple(p) for p in LIDS],                # Python-2 era lists of tuples
             "ldmks_iris_2d": IRIS.copy(), "ldmks_pupil_2d": PUPIL.copy(),
             "ldmks_lids_3d": np.zeros((16, 3)), "ldmks_iris_3d": np.zeros((32, 3)), "ldmks_pupil_3d": np.zeros((8, 3))}
    ldmks.update(ldmks_overrides)
    data = {"look_vec": np.array([0.1, -0.2, -0.97]), "head_pose": np.eye(3),
            "ldmks": {k: v for k, v in ldmks.items() if v is not None}}
    path.write_bytes(pickle.dumps(data, protocol=2))


@pytest.fixture
def syntheseyes_src(tmp_path):
    root = tmp_path / "se" / "SynthEyes_data"
    for model in syntheseyes.TRAIN_MODELS + syntheseyes.TEST_MODELS:
        for stem in [f"{model}_36_0.1963_-0.7854"] + ([f"{model}_42_-0.0000_-0.1963"] if model == "f01" else []):
            (root / model).mkdir(parents=True, exist_ok=True)
            syntheseyes_pickle(root / model / f"{stem}.pkl")
            spot_image(root / model / f"{stem}.png", 120, 80, [(56, 41)])   # the pupil centre's pixel
    return tmp_path / "se"


def test_syntheseyes_models_split_and_whole_image_crop(tmp_path, syntheseyes_src):
    size = 120                                          # the source scale, so the spot stays visible
    ds = PreparedDataset(convert("syntheseyes", syntheseyes_src, tmp_path / "out",
                                 card=write_card(tmp_path, "syntheseyes", 17), size=size))
    assert ds.meta["counts"] == {"train": 9, "test": 2}
    assert set(ds.arrays("test", with_images=False)["id"]) == {"f05/f05_36_0.1963_-0.7854", "m05/m05_36_0.1963_-0.7854"}
    a = ds.arrays("train")
    expected = (syntheseyes.derive_keypoints(LIDS, IRIS, PUPIL) - np.array([0.0, -20.0])) * size / 120
    for i in range(len(a["id"])):
        np.testing.assert_allclose(a["crop_box"][i], (0, -20, 120, 100), atol=1e-4)   # the 120x80 image, padded
        np.testing.assert_allclose(a["keypoints"][i], expected, atol=1e-3)
        assert a["visible"][i].all()
        assert_bright_at(a["images"][i], expected[16])


def test_syntheseyes_bad_input(tmp_path, syntheseyes_src):
    root = syntheseyes_src / "SynthEyes_data"
    out = tmp_path / "out"
    card = write_card(tmp_path, "syntheseyes", 17)
    pkl = root / "m02" / "m02_36_0.1963_-0.7854.pkl"

    syntheseyes_pickle(pkl, ldmks_iris_2d=None)
    with pytest.raises(DataError, match=rf"{re.escape(str(pkl))}: ldmks has no 'ldmks_iris_2d'"):
        convert("syntheseyes", syntheseyes_src, out, card=card, size=SIZE)
    assert_nothing_written(out)

    syntheseyes_pickle(pkl, ldmks_pupil_2d=np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]))
    with pytest.raises(DataError, match=rf"{re.escape(str(pkl))}: ldmks\['ldmks_pupil_2d'\] has a NaN"):
        convert("syntheseyes", syntheseyes_src, out, card=card, size=SIZE)

    pkl.write_bytes(pickle.dumps({"ldmks": {}, "hook": os.getcwd}, protocol=2))    # a pickle that calls code
    with pytest.raises(DataError, match=rf"{re.escape(str(pkl))}: unreadable pickle: refusing to load"):
        convert("syntheseyes", syntheseyes_src, out, card=card, size=SIZE)

    syntheseyes_pickle(pkl)
    pkl.with_suffix(".png").unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(pkl))}: image not found"):
        convert("syntheseyes", syntheseyes_src, out, card=card, size=SIZE)
    assert_nothing_written(out)

    with pytest.raises(ValueError, match="has 20 keypoints"):
        convert("syntheseyes", syntheseyes_src, out, card=write_card(tmp_path, "eyes20", 20), size=SIZE)


# ---- Human3.6M (simplified) --------------------------------------------------------------------------
H36M_SEQUENCES = {s: ["Directions 1"] for s in ("S1", "S5", "S6", "S7", "S8", "S9", "S11")}
H36M_SEQUENCES["S1"] += ["Walking.54138969", "WalkDog 1"]     # WalkDog is not an activity of the protocol


@pytest.fixture
def h36m_src(tmp_path):
    """32x32 frames whose right half the mask removes; joint 0 sits on a white spot in the left half."""
    rng = np.random.default_rng(5)
    root = tmp_path / "h36m" / "human_images"
    truth = {}
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    for subject, sequences in H36M_SEQUENCES.items():
        for seq in sequences:
            frames = ["1", "2"] if seq.startswith("Walking") else ["1"]
            for d in ("WithBackground", "BackgroudMask", "Landmarks"):
                (root / subject / d / seq).mkdir(parents=True)
            for frame in frames:
                img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                img[11:14, 7:10] = 255                                   # spot at pixel (8, 12)
                Image.fromarray(img).save(root / subject / "WithBackground" / seq / f"{frame}.jpg", quality=95)
                Image.fromarray(mask).save(root / subject / "BackgroudMask" / seq / f"{frame}.png")
                xy = rng.uniform(2, 30, size=(32, 2))
                xy[0] = (8.5, 12.5)
                scipy.io.savemat(root / subject / "Landmarks" / seq / f"{frame}.mat",
                                 {"keypoints_2d": xy[:, ::-1] / 32})          # rows (y, x) in [0, 1]
                truth[f"{subject}/{seq}/{frame}"] = xy
    return tmp_path / "h36m", truth


def test_h36m_subjects_activities_and_masks(tmp_path, h36m_src):
    src, truth = h36m_src
    ds = PreparedDataset(convert("h36m", src, tmp_path / "out", card=write_card(tmp_path, "h36m", 32), size=SIZE))
    assert ds.meta["counts"] == {"train": 8, "test": 1}
    assert ds.meta["skipped"] == {"h36m: sequence of an activity outside the protocol": 1}
    assert list(ds.arrays("test", with_images=False)["id"]) == ["S11/Directions 1/1"]
    for split in ("train", "test"):
        a = ds.arrays(split)
        for i, row_id in enumerate(a["id"]):
            np.testing.assert_allclose(a["crop_box"][i], (0, 0, 32, 32))          # the whole frame
            np.testing.assert_allclose(a["keypoints"][i], truth[row_id], atol=1e-3)   # (y, x) -> (x, y)
            assert a["visible"][i].all()
            assert (a["images"][i][:, 16:] == 0).all()                            # background removed
            assert_bright_at(a["images"][i], truth[row_id][0])


def test_h36m_bad_input(tmp_path, h36m_src):
    src, _ = h36m_src
    root = src / "human_images"
    card = write_card(tmp_path, "h36m", 32)
    out = tmp_path / "out"
    mat = root / "S11/Landmarks/Directions 1/1.mat"
    scipy.io.savemat(mat, {"keypoints_2d": np.zeros((17, 2))})
    with pytest.raises(DataError, match=rf"{re.escape(str(mat))}: keypoints_2d has shape \(17, 2\), expected \(32,"):
        convert("h36m", src, out, card=card, size=SIZE)
    assert_nothing_written(out)

    scipy.io.savemat(mat, {"pose": np.zeros((32, 2))})
    with pytest.raises(DataError, match=rf"{re.escape(str(mat))}: .* has no variable 'keypoints_2d'"):
        convert("h36m", src, out, card=card, size=SIZE)

    (root / "S5/BackgroudMask/Directions 1/1.png").unlink()
    with pytest.raises(DataError, match=r"S5/Landmarks/Directions 1/1\.mat: mask not found"):
        convert("h36m", src, out, card=card, size=SIZE)
    assert_nothing_written(out)


# ---- the shipped cards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, k", [("cub", 15), ("lsp", 14), ("syntheseyes", 17), ("h36m", 32)])
def test_real_card_matches_the_format(name, k):
    assert load_card(name).num_keypoints == k
