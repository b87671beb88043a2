"""Leeds Sports Pose (Johnson & Everingham, BMVC 2010) and LSP extended (CVPR 2011): 14 body joints (paper
Supplement C).

Layouts (``--src``)::

    SRC/lsp_dataset/joints.mat        variable ``joints``, 3 x 14 x 2000         the two archives
    SRC/lsp_dataset/images/im0001.jpg ... im2000.jpg                             (lsp_dataset.zip,
    SRC/lspet_dataset/joints.mat      variable ``joints``, 14 x 3 x 10000         lspet_dataset.zip)
    SRC/lspet_dataset/images/im00001.jpg ... im10000.jpg                         unpacked side by side

    SRC/joints.mat + SRC/images/      one release alone (either one; also SRC = the joints.mat file,
                                      or a folder holding one release's folder)

The release is told by the array's shape: 3 x 14 x N is the original LSP, 14 x 3 x N is LSP extended.
In a folder named as an official archive (``lsp_dataset``, ``lspet_dataset``) the array must have that
release's exact shape (N = 2000 or 10000); elsewhere any N is read.

Both files hold, per image and joint, x, y (1-based MATLAB pixel coordinates) and a flag, in different
axis orders.  What the releases say about the flag, and how it is read:

* LSP (README.txt of lsp_dataset.zip): "joints.mat contains 14 joint locations for each image along with a
  binary value specifying joint visibility".  In the file the flag is set for *occluded* joints (1 =
  occluded, 0 = visible; most joints are 0), and loaders of the original set read it that way (e.g.
  Graviti's TensorBay ``LeedsSportsPose`` loader stores ``not flag`` as visibility).  Read as
  ``visible = flag == 0`` -- the choice this converter has always made.
* LSP extended (README.txt of lspet_dataset.zip): "14 joint locations and visibility flags"; here the flag
  is 1 for visible joints and 0 for joints that are not.  Read as ``visible = flag == 1``.

Occluded joints keep their annotated positions in ``keypoints`` but are marked not visible, the prepared
format's meaning of ``visible`` ("false for missing or occluded keypoints"); a non-finite coordinate is
accepted only on a joint that is not visible.  A flag other than 0 or 1 is an error naming the image.

Joint order (the card's): right ankle, right knee, right hip, left hip, left knee, left ankle, right
wrist, right elbow, right shoulder, left shoulder, left elbow, left wrist, neck, head top.

Split (the card's reading of Moskvyak et al.'s protocol, paper Supplement C): ``train`` = the LSP extended
images + LSP images 1-1000 (11,000 with both releases); ``test`` = LSP images 1001-2000.  With one release
alone the same rule applies to it.  Coordinates are converted from 1-based pixel indices (x - 0.5); the
crop is the square around the visible joints (LSP has no boxes).  Ids are ``lsp/im0001`` and
``lspet/im00001``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import expect_keypoints, from_pixel_index, load_mat
from pipeline.prepared import DataError, Instance

CARD = "lsp"
HELP = ("lsp_dataset/ (joints.mat 3x14x2000 + images/im0001.jpg..) and/or lspet_dataset/ (joints.mat 14x3x10000 "
        "+ images/im00001.jpg..); or one release's joints.mat + images/ (release told by the array's shape)")

NUM_JOINTS = 14
LSP_TRAIN = 1000                            # LSP images 1..1000 train, 1001.. test


@dataclass(frozen=True)
class Release:
    key: str                # id prefix
    title: str
    folder: str             # the official archive's folder name
    images: int             # images in the official release
    joint_axis: int         # axis of joints.mat that runs over the 14 joints (the other short one is x, y, flag)
    visible_flag: int       # the flag value that means "visible" (see the module docstring)
    digits: int             # image number digits: im0001.jpg / im00001.jpg

    def shape(self, n: int) -> tuple[int, int, int]:
        return (3, NUM_JOINTS, n) if self.joint_axis == 1 else (NUM_JOINTS, 3, n)

    def split(self, i: int) -> str:
        return "train" if self.key == "lspet" or i < LSP_TRAIN else "test"


LSP = Release("lsp", "LSP", "lsp_dataset", 2000, joint_axis=1, visible_flag=0, digits=4)
LSPET = Release("lspet", "LSP extended", "lspet_dataset", 10000, joint_axis=0, visible_flag=1, digits=5)
RELEASES = (LSP, LSPET)


def joints_files(src: Path) -> list[Path]:
    """The joints.mat files of ``src``: the file itself, SRC/joints.mat, or SRC/<folder>/joints.mat."""
    src = Path(src)
    if src.is_file():
        return [src]
    if (src / "joints.mat").is_file():
        return [src / "joints.mat"]
    found = sorted(p for p in src.glob("*/joints.mat") if p.is_file())
    if not found:
        raise FileNotFoundError(f"{src}: no joints.mat (LSP layout: {HELP})")
    return found


def release_of(mat: Path, shape: tuple[int, ...]) -> Release:
    """The release a joints array belongs to: by its folder's name when that is an official archive's
    (which then fixes the exact shape), else by the array's shape."""
    named = [r for r in RELEASES if mat.parent.name == r.folder]
    if named:
        expected = named[0].shape(named[0].images)
        if tuple(shape) != expected:
            raise DataError(mat, None, f"joints has shape {tuple(shape)}, expected {expected}")
        return named[0]
    for r in RELEASES:
        if len(shape) == 3 and tuple(shape) == r.shape(shape[2]):
            return r
    raise DataError(mat, None, f"joints has shape {tuple(shape)}; expected 3 x 14 x N (LSP) or "
                               f"14 x 3 x N (LSP extended)")


def read_joints(mat: Path) -> tuple[Release, np.ndarray]:
    """joints.mat as its release and [images, 14, 3] (x, y, flag)."""
    joints = load_mat(mat, "joints")
    release = release_of(mat, joints.shape)
    return release, np.moveaxis(joints.astype(np.float64), (2, release.joint_axis), (0, 1))


def _instances_of(mat: Path, release: Release, joints: np.ndarray) -> Iterator[Instance]:
    for i, entry in enumerate(joints):
        origin = (str(mat), i + 1)            # row = the image number (the MATLAB index of the last axis)
        xy, flag = entry[:, :2], entry[:, 2]
        if not np.isin(flag, (0, 1)).all():
            raise DataError(mat, i + 1, f"image {i + 1} has joint flags {sorted(set(flag.tolist()))}, expected 0 or 1")
        visible = flag == release.visible_flag
        if not np.isfinite(xy[visible]).all():
            raise DataError(mat, i + 1, f"image {i + 1} has a NaN or infinite coordinate on a visible joint")
        name = f"im{i + 1:0{release.digits}d}"
        yield Instance(id=f"{release.key}/{name}", split=release.split(i),
                       source=str(mat.parent / "images" / f"{name}.jpg"),
                       keypoints=np.where(np.isfinite(xy), from_pixel_index(xy, base=1), 0.0), visible=visible,
                       origin=origin)


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_JOINTS, "LSP")
    read = [(mat, *read_joints(mat)) for mat in joints_files(src)]
    for mat, release, joints in sorted(read, key=lambda r: RELEASES.index(r[1])):
        yield from _instances_of(mat, release, joints)
