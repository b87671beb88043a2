"""Human3.6M as simplified for unsupervised landmarks (Zhang et al., CVPR 2018), the protocol of Jakab et al.
(CVPR 2020) that the paper follows for its H36M comparison (Supplement D, Table 6).

Layout (Zhang et al.'s ``human_images.tar.gz`` from the lmdis-rep release unpacked; SRC is ``human_images``
or the folder holding it)::

    SRC/S1/WithBackground/<sequence>/<frame>.jpg    a person-centred frame (128 x 128)
    SRC/S1/BackgroudMask/<sequence>/<frame>.png     its foreground mask (the folder name is spelled so)
    SRC/S1/Landmarks/<sequence>/<frame>.mat         variable ``keypoints_2d``: 32 x 2
    ... S5, S6, S7, S8, S9, S11

A sequence folder is named after its activity and take (``Directions 1``, ``Walking.54138969``).  The
protocol uses six activities -- Directions, Discussion, Greeting, Posing, Waiting, Walking -- matched on the
name's first word (so ``WalkDog`` and ``WalkTogether`` are not Walking); other sequences are skipped and
counted.  Split: subjects S1, S5, S6, S7, S8, S9 ``train``; S11 ``test``; every frame is used.

``keypoints_2d`` holds the 32 joints of the Human3.6M skeleton in its native order (the card's: pelvis,
right hip, knee, ankle, toe base, toe tip, the same on the left, spine, thorax, neck, head, head top, then
per arm clavicle, shoulder, elbow, wrist, thumb, thumb tip, hand, hand tip, left arm first), one row per
joint as (y, x) normalised to [0, 1] by the image size (Jakab et al.'s loader multiplies by 128 and swaps
to (x, y)).  All joints are visible (projected motion capture).  The normalised positions times the image
size are continuous coordinates and kept as they are.

The background is removed, as Jakab et al.'s reference loader does by default: each frame is multiplied
by its mask.  The frame is used whole (the crop is the square enclosing it), so the prepared keypoints stay
in the protocol's frame, whose size normalises the error.  Ids are ``<subject>/<sequence>/<frame>``.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import enclosing_square, expect_keypoints, load_mat, require_dir
from pipeline.prepared import DataError, Instance, load_image

CARD = "h36m"
HELP = ("S1 S5 S6 S7 S8 S9 S11, each with WithBackground/, BackgroudMask/, Landmarks/ "
        "(<sequence>/<frame>.jpg/.png/.mat; Zhang et al.'s human_images.tar.gz)")

NUM_JOINTS = 32
SUBJECT_SPLITS = {"S1": "train", "S5": "train", "S6": "train", "S7": "train", "S8": "train", "S9": "train",
                  "S11": "test"}
ACTIVITIES = ("directions", "discussion", "greeting", "posing", "waiting", "walking")
IMAGES, MASKS, LANDMARKS = "WithBackground", "BackgroudMask", "Landmarks"


def activity_of(sequence: str) -> str:
    """'Walking.54138969' -> 'walking'; 'Directions 1' -> 'directions'."""
    return re.split(r"[\s.]", sequence, maxsplit=1)[0].lower()


def _frame_order(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def read_keypoints(mat: Path, hw: tuple[int, int]) -> np.ndarray:
    """[32, 2] (x, y) image coordinates from a Landmarks .mat file (rows (y, x) in [0, 1])."""
    yx = load_mat(mat, "keypoints_2d")
    if yx.shape != (NUM_JOINTS, 2):
        raise DataError(mat, None, f"keypoints_2d has shape {yx.shape}, expected ({NUM_JOINTS}, 2)")
    yx = yx.astype(np.float64)
    if not np.isfinite(yx).all():
        raise DataError(mat, None, "keypoints_2d has a NaN or infinite value")
    h, w = hw
    return np.stack([yx[:, 1] * w, yx[:, 0] * h], axis=1)


def read_mask(path: Path, origin) -> np.ndarray:
    """[H, W] foreground weight in [0, 1] from a 1-bit or 8-bit mask PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            m = np.asarray(im if im.mode == "1" else im.convert("L"))
    except FileNotFoundError:
        raise DataError(origin[0], origin[1], f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(origin[0], origin[1], f"unreadable mask {path}: {e}") from None
    m = m.astype(np.float64)
    return m / 255.0 if m.max() > 1 else m


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_JOINTS, "Human3.6M (simplified)")
    root = src / "human_images" if (src / "human_images").is_dir() else src
    subjects = {s: require_dir(root / s / IMAGES, f"H36M layout: {HELP}") for s in SUBJECT_SPLITS}
    for subject, images in subjects.items():
        for sequence in sorted(p for p in images.iterdir() if p.is_dir()):
            if activity_of(sequence.name) not in ACTIVITIES:
                skipped["h36m: sequence of an activity outside the protocol"] += 1
                continue
            for frame in sorted(sequence.glob("*.jpg"), key=_frame_order):
                mat = root / subject / LANDMARKS / sequence.name / f"{frame.stem}.mat"
                origin = (str(mat), None)
                image = load_image(frame, origin)
                mask = read_mask(root / subject / MASKS / sequence.name / f"{frame.stem}.png", origin)
                if mask.shape != image.shape[:2]:
                    raise DataError(mat, None, f"mask is {mask.shape[1]}x{mask.shape[0]} but the frame "
                                               f"{frame} is {image.shape[1]}x{image.shape[0]}")
                h, w = image.shape[:2]
                yield Instance(id=f"{subject}/{sequence.name}/{frame.stem}", split=SUBJECT_SPLITS[subject],
                               source=str(frame), keypoints=read_keypoints(mat, (h, w)),
                               visible=np.ones(NUM_JOINTS, bool), origin=origin,
                               image=np.round(image * mask[..., None]).astype(np.uint8),
                               box=(0.0, 0.0, float(w), float(h)), crop_box=enclosing_square(w, h))
