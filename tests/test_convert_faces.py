"""WFLW and 300-W converters on small fixtures written in each dataset's own format."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.card import load_card
from pipeline.converters import convert
from pipeline.prepared import DataError, PreparedDataset, square_crop_box
from tests.converter_fixtures import assert_bright_at, assert_nothing_written, spot_image, write_card

SIZE = 64


# ---- WFLW --------------------------------------------------------------------------------------------
WFLW_LIST = Path("WFLW_annotations/list_98pt_rect_attr_train_test")


def wflw_line(landmarks: np.ndarray, box, name: str) -> str:
    coords = " ".join(f"{v:.6f}" for v in landmarks.ravel())
    return f"{coords} {' '.join(str(b) for b in box)} 0 1 0 0 1 0 {name}\n"


@pytest.fixture
def wflw_src(tmp_path):
    """Two faces in one train image, one face in a test image; landmark 0 sits on a white spot."""
    rng = np.random.default_rng(0)
    src = tmp_path / "wflw"
    faces = {"train": [("0--Parade/0_Parade_1.jpg", (10, 12, 50, 60), (20, 30)),
                       ("0--Parade/0_Parade_1.jpg", (60, 20, 110, 70), (80, 40))],
             "test": [("1--Handshaking/1_Hand_2.jpg", (15, 10, 65, 55), (40, 25))]}
    truth = {}
    for split, entries in faces.items():
        lines = []
        for line_no, (name, box, spot) in enumerate(entries, start=1):
            lm = rng.uniform(box[:2], box[2:], size=(98, 2))
            lm[0] = spot
            lines.append(wflw_line(lm, box, name))
            truth[f"{split}-{line_no:05d}"] = (lm, box, name)
        (src / WFLW_LIST).mkdir(parents=True, exist_ok=True)
        (src / WFLW_LIST / f"list_98pt_rect_attr_{split}.txt").write_text("".join(lines))
    spot_image(src / "WFLW_images/0--Parade/0_Parade_1.jpg", 120, 90, [(20, 30), (80, 40)])
    spot_image(src / "WFLW_images/1--Handshaking/1_Hand_2.jpg", 80, 70, [(40, 25)])
    return src, truth


def test_wflw_splits_boxes_and_keypoints(tmp_path, wflw_src):
    src, truth = wflw_src
    out = convert("wflw", src, tmp_path / "out", card=write_card(tmp_path, "wflw", 98), size=SIZE)
    ds = PreparedDataset(out)
    assert ds.meta["counts"] == {"train": 2, "test": 1}
    assert ds.meta["format"] == "wflw"
    for split in ("train", "test"):
        a = ds.arrays(split)
        for i, row_id in enumerate(a["id"]):
            lm, box, name = truth[row_id]
            crop = square_crop_box(box, 0.25)                  # the line's face box decides the crop
            np.testing.assert_allclose(a["crop_box"][i], crop, rtol=1e-5)
            side = crop[2] - crop[0]
            expected = (lm + 0.5 - np.array(crop[:2])) * SIZE / side    # 0-based pixel index -> centre
            np.testing.assert_allclose(a["keypoints"][i], expected, atol=1e-3)
            assert a["visible"][i].all()
            assert a["source"][i].endswith(name)
            assert_bright_at(a["images"][i], expected[0])


def _edit_line(path: Path, line_no: int, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    cells = lines[line_no - 1].split()
    lines[line_no - 1] = " ".join(edit(cells)) + "\n"
    path.write_text("".join(lines))


def _set(index, value):
    def edit(cells):
        cells[index] = value
        return cells
    return edit


@pytest.mark.parametrize("split, line_no, edit, message", [
    ("test", 1, None, r"image not found: .*1_Hand_2\.jpg"),
    ("train", 2, lambda cells: cells[1:], "expected 207 whitespace-separated fields, got 206"),
    ("train", 2, _set(5, "nan"), "landmark coordinate 'nan' is NaN"),
    ("train", 2, _set(0, "5000"), r"keypoint 0 at \(5000\.5, .*\) is far outside the 120x90 image"),
    ("train", 1, _set(197, "oops"), "box coordinate 'oops' is not a number"),
], ids=["missing-image", "coordinate-count", "nan", "far-outside", "malformed-box"])
def test_wflw_bad_input_names_file_and_row(tmp_path, wflw_src, split, line_no, edit, message):
    src, _ = wflw_src
    listing = src / WFLW_LIST / f"list_98pt_rect_attr_{split}.txt"
    if edit is None:
        (src / "WFLW_images/1--Handshaking/1_Hand_2.jpg").unlink()
    else:
        _edit_line(listing, line_no, edit)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}, row {line_no}: {message}"):
        convert("wflw", src, out, card=write_card(tmp_path, "wflw", 98), size=SIZE)
    assert_nothing_written(out)


def test_wflw_missing_list_file_and_wrong_card(tmp_path, wflw_src):
    src, _ = wflw_src
    (src / WFLW_LIST / "list_98pt_rect_attr_test.txt").unlink()
    with pytest.raises(DataError, match=r"list_98pt_rect_attr_test\.txt: annotation file not found"):
        convert("wflw", src, tmp_path / "out", card=write_card(tmp_path, "wflw", 98), size=SIZE)
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(ValueError, match="has 68 keypoints but WFLW annotates 98"):
        convert("wflw", src, tmp_path / "out", card=write_card(tmp_path, "other", 68), size=SIZE)
    assert_nothing_written(tmp_path / "out")


# ---- 300-W -------------------------------------------------------------------------------------------
W300_FOLDERS = {"lfpw/trainset": ["image_0001", "image_0002"], "helen/trainset": ["100032540_1"],
                "afw/": ["134212_1"], "lfpw/testset": ["image_0003"], "helen/testset": ["296814969_3"],
                "ibug/": ["image_003_1"]}


def pts_text(points_one_based: np.ndarray) -> str:
    body = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points_one_based)
    return f"version: 1\nn_points:  {len(points_one_based)}\n{{\n{body}}}\n"


@pytest.fixture
def w300_src(tmp_path):
    """One or two faces per 300-W folder; landmark 30 (nose tip) sits on a white spot."""
    rng = np.random.default_rng(1)
    src = tmp_path / "300w"
    truth = {}
    for folder, stems in W300_FOLDERS.items():
        for j, stem in enumerate(stems):
            spot = (30 + 5 * j, 28)
            pts = np.round(rng.uniform((15, 12), (60, 55), size=(68, 2)), 3)    # as written to the file
            pts[30] = np.array(spot) + 1                        # 1-based coordinates of the spot's pixel
            (src / folder).mkdir(parents=True, exist_ok=True)
            (src / folder / f"{stem}.pts").write_text(pts_text(pts))
            suffix = ".png" if folder.startswith("lfpw") else ".jpg"
            spot_image(src / folder / f"{stem}{suffix}", 72, 64, [spot])
            truth[f"{folder.rstrip('/')}/{stem}"] = pts
    return src, truth


def test_300w_common_split_and_one_based_coordinates(tmp_path, w300_src):
    src, truth = w300_src
    out = convert("300w", src, tmp_path / "out", card=write_card(tmp_path, "300w", 68), size=SIZE)
    ds = PreparedDataset(out)
    assert ds.meta["counts"] == {"train": 4, "test": 3}
    assert set(ds.arrays("test", with_images=False)["id"]) == {"lfpw/testset/image_0003",
                                                                "helen/testset/296814969_3", "ibug/image_003_1"}
    for split in ("train", "test"):
        a = ds.arrays(split)
        for i, row_id in enumerate(a["id"]):
            pts = truth[row_id]
            xy = pts - 0.5                                         # 1-based pixel index -> continuous
            crop = square_crop_box((*xy.min(0), *xy.max(0)), 0.25)
            np.testing.assert_allclose(a["crop_box"][i], crop, rtol=1e-5)
            expected = (xy - np.array(crop[:2])) * SIZE / (crop[2] - crop[0])
            np.testing.assert_allclose(a["keypoints"][i], expected, atol=1e-3)
            assert a["visible"][i].all()
            assert_bright_at(a["images"][i], expected[30])


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_300w_bad_pts_files_name_file_and_line(tmp_path, w300_src):
    src, truth = w300_src
    card = write_card(tmp_path, "300w", 68)
    out = tmp_path / "out"
    pts = src / "afw/134212_1.pts"
    original = pts.read_text()

    _rewrite(pts, "n_points:  68", "n_points:  67")
    with pytest.raises(DataError, match=rf"{re.escape(str(pts))}, row 2: n_points is 67, expected 68"):
        convert("300w", src, out, card=card, size=SIZE)
    assert_nothing_written(out)

    pts.write_text(original)
    lines = original.splitlines()
    lines[5] = lines[5] + " 7.0"                                    # line 6: the third point gets 3 values
    pts.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(pts))}, row 6: expected 2 coordinates \(x y\), got 3"):
        convert("300w", src, out, card=card, size=SIZE)
    assert_nothing_written(out)

    lines = original.splitlines()
    lines[7] = "nan 12.0"
    pts.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(pts))}, row 8: coordinate 'nan' is NaN"):
        convert("300w", src, out, card=card, size=SIZE)

    pts.write_text(original)
    (src / "afw/134212_1.jpg").unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(pts))}: image not found"):
        convert("300w", src, out, card=card, size=SIZE)
    assert_nothing_written(out)


def test_300w_requires_every_protocol_folder(tmp_path, w300_src):
    src, _ = w300_src
    for p in (src / "ibug").iterdir():
        p.unlink()
    (src / "ibug").rmdir()
    with pytest.raises(DataError, match=r"ibug: folder not found"):
        convert("300w", src, tmp_path / "out", card=write_card(tmp_path, "300w", 68), size=SIZE)
    assert_nothing_written(tmp_path / "out")


# ---- the shipped cards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, k", [("wflw", 98), ("300w", 68)])
def test_real_card_matches_the_format(name, k):
    assert load_card(name).num_keypoints == k
