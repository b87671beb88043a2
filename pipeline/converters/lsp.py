"""Leeds Sports Pose (Johnson & Everingham, BMVC 2010) with LSP extended: 14 body joints (paper Supplement C).

Layout (``lsp_dataset.zip`` and ``lspet_dataset.zip`` unpacked side by side)::

    SRC/lsp_dataset/joints.mat        variable ``joints``, 3 x 14 x 2000
    SRC/lsp_dataset/images/im0001.jpg ... im2000.jpg
    SRC/lspet_dataset/joints.mat      variable ``joints``, 14 x 3 x 10000
    SRC/lspet_dataset/images/im00001.jpg ... im10000.jpg

Both files hold, per image and joint, x, y (1-based MATLAB pixel coordinates) and a flag, in different
axis orders.  The flags differ too: the LSP README calls its flag "visibility", but in the original LSP it
is set for *occluded* joints (1 = occluded, 0 = visible; most joints are 0) and converters of the
original set read it as ``visible = 1 - flag``; in LSP extended the flag is 1 for visible joints.
Occluded joints keep their annotated positions in ``keypoints`` but are marked not visible, the prepared
format's meaning of ``visible`` ("false for missing or occluded keypoints"); a non-finite coordinate is
accepted only on a joint that is not visible.

Joint order (the card's): right ankle, right knee, right hip, left hip, left knee, left ankle, right
wrist, right elbow, right shoulder, left shoulder, left elbow, left wrist, neck, head top.

Split (the card's reading of Moskvyak et al.'s protocol, paper Supplement C): ``train`` = the 10,000 LSP
extended images + LSP images 1-1000 (11,000); ``test`` = LSP images 1001-2000.  Coordinates are converted
from 1-based pixel indices (x - 0.5); the crop is the square around the visible joints (LSP has no boxes).
Ids are ``lsp/im0001`` and ``lspet/im00001``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import expect_keypoints, from_pixel_index, load_mat, require_file
from pipeline.prepared import DataError, Instance

CARD = "lsp"
HELP = ("lsp_dataset/ (joints.mat 3x14x2000 + images/im0001.jpg..) and lspet_dataset/ "
        "(joints.mat 14x3x10000 + images/im00001.jpg..), the two archives unpacked side by side")

NUM_JOINTS = 14
LSP_IMAGES, LSP_TRAIN = 2000, 1000          # LSP images 1..1000 train, 1001..2000 test
LSPET_IMAGES = 10000


def read_joints(mat: Path, shape: tuple[int, int, int], joint_axis: int) -> np.ndarray:
    """joints.mat as [images, 14, 3] (x, y, flag), after checking its documented shape."""
    joints = load_mat(mat, "joints")
    if joints.shape != shape:
        raise DataError(mat, None, f"joints has shape {joints.shape}, expected {shape}")
    joints = joints.astype(np.float64)
    return np.moveaxis(joints, (2, joint_axis), (0, 1))


def _instances_of(mat: Path, joints: np.ndarray, visible_flag: int, prefix: str, digits: int,
                  split_of) -> Iterator[Instance]:
    for i, entry in enumerate(joints):
        origin = (str(mat), i + 1)            # row = the image number (the MATLAB index of the last axis)
        xy, flag = entry[:, :2], entry[:, 2]
        if not np.isin(flag, (0, 1)).all():
            raise DataError(mat, i + 1, f"image {i + 1} has joint flags {sorted(set(flag.tolist()))}, expected 0 or 1")
        visible = flag == visible_flag
        if not np.isfinite(xy[visible]).all():
            raise DataError(mat, i + 1, f"image {i + 1} has a NaN or infinite coordinate on a visible joint")
        name = f"im{i + 1:0{digits}d}"
        yield Instance(id=f"{prefix}/{name}", split=split_of(i), source=str(mat.parent / "images" / f"{name}.jpg"),
                       keypoints=np.where(np.isfinite(xy), from_pixel_index(xy, base=1), 0.0), visible=visible,
                       origin=origin)


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_JOINTS, "LSP")
    lsp_mat = require_file(src / "lsp_dataset" / "joints.mat", f"LSP layout: {HELP}")
    lspet_mat = require_file(src / "lspet_dataset" / "joints.mat", f"LSP layout: {HELP}")
    lsp = read_joints(lsp_mat, (3, NUM_JOINTS, LSP_IMAGES), joint_axis=1)
    lspet = read_joints(lspet_mat, (NUM_JOINTS, 3, LSPET_IMAGES), joint_axis=0)
    yield from _instances_of(lsp_mat, lsp, 0, "lsp", 4, lambda i: "train" if i < LSP_TRAIN else "test")
    yield from _instances_of(lspet_mat, lspet, 1, "lspet", 5, lambda i: "train")
