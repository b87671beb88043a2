"""The prepared Parquet format: round trip, crop geometry, atomic writes, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.prepared import (DataError, Instance, PreparedDataset, check_keypoints, square_crop_box,
                               write_prepared)
from tests.conftest import tiny_instances


def test_round_trip_keeps_keypoints_and_images(tmp_path, tiny_card):
    insts = tiny_instances(5, size=64) + tiny_instances(3, size=64, seed=1, split="test")
    out = write_prepared(tmp_path / "ds", tiny_card, insts, size=64)
    ds = PreparedDataset(out)
    assert ds.meta["counts"] == {"train": 5, "test": 3}
    assert ds.card.keypoints == ("left", "right", "top")
    a = ds.arrays("train")
    assert a["images"].shape == (5, 64, 64, 3)
    np.testing.assert_allclose(a["keypoints"][2], insts[2].keypoints, atol=1e-4)
    np.testing.assert_array_equal(a["images"][2], insts[2].image)      # full-image crop at same size: lossless
    assert list(ds.arrays("test", ids=["test-0002", "test-0000"])["id"]) == ["test-0002", "test-0000"]


def test_same_input_gives_same_fingerprint(tmp_path, tiny_card):
    a = PreparedDataset(write_prepared(tmp_path / "a", tiny_card, tiny_instances(4), size=64))
    b = PreparedDataset(write_prepared(tmp_path / "b", tiny_card, tiny_instances(4), size=64))
    c = PreparedDataset(write_prepared(tmp_path / "c", tiny_card, tiny_instances(4, seed=9), size=64))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_crop_maps_keypoints_into_the_resized_square(tmp_path, tiny_card):
    img = np.zeros((200, 300, 3), np.uint8)
    kp = np.array([[100.0, 50.0], [180.0, 90.0], [140.0, 20.0]])
    inst = Instance(id="x", split="train", source="mem", keypoints=kp, visible=np.ones(3, bool),
                    origin=("ann.txt", 7), image=img, box=(100, 20, 180, 90))
    ds = PreparedDataset(write_prepared(tmp_path / "ds", tiny_card, [inst], size=32, margin=0.25))
    a = ds.arrays("train")
    crop = square_crop_box((100, 20, 180, 90), 0.25)
    np.testing.assert_allclose(a["crop_box"][0], crop, rtol=1e-6)
    side = crop[2] - crop[0]
    np.testing.assert_allclose(a["keypoints"][0], (kp - np.array(crop[:2])) * 32 / side, atol=1e-4)
    back = a["crop_box"][0][:2] + a["keypoints"][0] * side / 32          # documented inverse map
    np.testing.assert_allclose(back, kp, atol=1e-3)


@pytest.mark.parametrize("kp, message", [
    (np.array([[1.0, 2.0], [3.0, 4.0]]), "expected 3 keypoints"),
    (np.array([[1.0, np.nan], [3.0, 4.0], [5.0, 6.0]]), "NaN"),
    (np.array([[1.0, 2.0], [3.0, 4.0], [500.0, 6.0]]), "far outside"),
])
def test_bad_keypoints_name_file_and_row(kp, message):
    with pytest.raises(DataError, match=rf"ann\.csv, row 12: .*{message}"):
        check_keypoints(kp, np.ones(len(kp), bool), 3, (64, 64), ("ann.csv", 12))


def test_failed_write_leaves_nothing_behind(tmp_path, tiny_card):
    good = tiny_instances(3)
    bad = Instance(id="bad", split="train", source=str(tmp_path / "missing.png"), keypoints=np.zeros((3, 2)),
                   visible=np.ones(3, bool), origin=("labels.csv", 4))
    with pytest.raises(DataError, match=r"labels\.csv, row 4: image not found"):
        write_prepared(tmp_path / "out" / "ds", tiny_card, good + [bad], size=64)
    assert list((tmp_path / "out").iterdir()) == []       # no output folder, no partial temp folder


def test_duplicate_ids_and_unknown_splits_are_refused(tmp_path, tiny_card):
    insts = tiny_instances(2)
    insts[1].id = insts[0].id
    with pytest.raises(DataError, match="duplicate instance id"):
        write_prepared(tmp_path / "a", tiny_card, insts, size=64)
    insts = tiny_instances(1)
    insts[0].split = "training"
    with pytest.raises(DataError, match="unknown split"):
        write_prepared(tmp_path / "b", tiny_card, insts, size=64)


def test_existing_output_needs_overwrite(tmp_path, tiny_card):
    write_prepared(tmp_path / "ds", tiny_card, tiny_instances(1), size=64)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_prepared(tmp_path / "ds", tiny_card, tiny_instances(1), size=64)
    write_prepared(tmp_path / "ds", tiny_card, tiny_instances(2), size=64, overwrite=True)
    assert PreparedDataset(tmp_path / "ds").count("train") == 2
