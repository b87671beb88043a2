"""300-W (Sagonas et al., 2013): 68 facial landmarks, with the split of the unsupervised-landmark protocol.

Layout (the 300-W annotated training sets as distributed by i-BUG, unpacked into SRC)::

    SRC/lfpw/trainset/*.pts + images     SRC/lfpw/testset/*.pts + images
    SRC/helen/trainset/*.pts + images    SRC/helen/testset/*.pts + images
    SRC/afw/*.pts + images               SRC/ibug/*.pts + images

Each ``<name>.pts`` lies next to its image ``<name>.jpg`` (or ``.png``/``.jpeg``) and reads::

    version: 1
    n_points:  68
    {
    x y            (68 lines, 1-based pixel coordinates: the top-left pixel's centre is (1, 1))
    }

Split (paper Supplement D, following Jakab et al.'s protocol, which uses the common 300-W split):
``train`` = LFPW trainset + HELEN trainset + AFW (3,148 faces); ``test`` = LFPW testset + HELEN testset
(the "common" subset, 554) + IBUG (the "challenging" subset, 135), 689 faces in all.  Ids keep the folder
(``ibug/image_003_1``), so the common and challenging subsets can be scored apart.

Coordinates are converted from 1-based pixel indices to the prepared format's continuous convention
(``_common.from_pixel_index(xy, base=1)``, i.e. x - 0.5).  All landmarks are visible; the crop is the
square around the landmarks' box (300-W's face boxes are separate files, not part of this layout).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import expect_keypoints, from_pixel_index, numbers, read_rows, require_dir
from pipeline.prepared import DataError, Instance

CARD = "300w"
HELP = ("lfpw/{trainset,testset}/, helen/{trainset,testset}/, afw/, ibug/ "
        "(i-BUG 300-W downloads), each with <name>.pts next to <name>.jpg/.png")

NUM_LANDMARKS = 68
#: folder -> split, after Jakab et al.: train = LFPW/HELEN train + AFW; test = common (LFPW/HELEN test) + IBUG
SPLIT_OF_FOLDER = {
    "lfpw/trainset": "train", "helen/trainset": "train", "afw": "train",
    "lfpw/testset": "test", "helen/testset": "test", "ibug": "test",
}
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def read_pts(path: Path, k: int) -> np.ndarray:
    """The [k, 2] points of a .pts file, as written (1-based); DataError on any malformed line."""
    rows = list(read_rows(path))
    if len(rows) < 4:
        raise DataError(path, None, "not a .pts file: expected 'version:', 'n_points:', '{', points, '}'")
    (_, version), (n_line, n_points), (brace_line, brace) = rows[0], rows[1], rows[2]
    if version[0] != "version:":
        raise DataError(path, rows[0][0], f"expected 'version: 1', got {' '.join(version)!r}")
    if n_points[0] != "n_points:" or len(n_points) != 2 or not n_points[1].isdigit():
        raise DataError(path, n_line, f"expected 'n_points: <count>', got {' '.join(n_points)!r}")
    if int(n_points[1]) != k:
        raise DataError(path, n_line, f"n_points is {n_points[1]}, expected {k}")
    if brace != ["{"]:
        raise DataError(path, brace_line, f"expected '{{', got {' '.join(brace)!r}")
    end_line, end = rows[-1]
    if end != ["}"]:
        raise DataError(path, end_line, f"expected '}}' closing the points, got {' '.join(end)!r}")
    body = rows[3:-1]
    if len(body) != k:
        raise DataError(path, body[-1][0] if body else end_line, f"{len(body)} point lines, expected {k}")
    points = np.empty((k, 2))
    for i, (line_no, cells) in enumerate(body):
        if len(cells) != 2:
            raise DataError(path, line_no, f"expected 2 coordinates (x y), got {len(cells)}")
        points[i] = numbers(cells, (path, line_no), "coordinate")
    return points


def _image_next_to(pts: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        p = pts.with_suffix(suffix)
        if p.is_file():
            return p
    raise DataError(pts, None, f"image not found: no {pts.stem}{{{','.join(IMAGE_SUFFIXES)}}} next to it")


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_LANDMARKS, "300-W")
    folders = {name: require_dir(src / name, f"300-W layout: {HELP}") for name in SPLIT_OF_FOLDER}
    for name, folder in folders.items():
        for pts in sorted(folder.glob("*.pts")):
            points = read_pts(pts, NUM_LANDMARKS)
            image = _image_next_to(pts)
            yield Instance(id=f"{name}/{pts.stem}", split=SPLIT_OF_FOLDER[name], source=str(image),
                           keypoints=from_pixel_index(points, base=1), visible=np.ones(NUM_LANDMARKS, bool),
                           origin=(str(pts), None))
