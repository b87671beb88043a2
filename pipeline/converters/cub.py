"""CUB-200-2011 (Wah et al., 2011): 15 bird parts on 11,788 images of 200 species (paper §4.1).

Layout (``CUB_200_2011.tgz`` unpacked; SRC is the ``CUB_200_2011`` folder or the folder holding it)::

    images.txt                 <image_id> <image_name>            (name relative to images/)
    image_class_labels.txt     <image_id> <class_id>              (1..200)
    bounding_boxes.txt         <image_id> <x> <y> <width> <height>
    parts/part_locs.txt        <image_id> <part_id> <x> <y> <visible>   (15 lines per image)
    images/<class folder>/<image>.jpg

Parts (``parts/parts.txt``, in part_id order, the card's order): back, beak, belly, breast, crown,
forehead, left eye, left leg, left wing, nape, right eye, right leg, right wing, tail, throat.

Split by class, as in the paper (§4.1): classes 1-100 ``train`` (5,864 images), 101-150 ``val`` (2,958),
151-200 ``test`` (2,966).  A part with ``visible`` 0 (not visible in the image; its x y are 0 0) stays
invisible.  Coordinates are 0-based pixel positions, shifted to the prepared format's pixel-centre
convention; the crop is the square around the bounding box.  Ids are the image names without extension.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import (expect_keypoints, from_pixel_index, integer, numbers, read_rows,
                                         require_file)
from pipeline.prepared import DataError, Instance, load_image

CARD = "cub"
HELP = ("CUB_200_2011/ as unpacked: images.txt, image_class_labels.txt, bounding_boxes.txt, "
        "parts/part_locs.txt, images/")

NUM_PARTS = 15
NUM_CLASSES = 200


def split_of_class(class_id: int) -> str:
    """Paper §4.1: the first 100 classes train, the next 50 validate, the last 50 test."""
    return "train" if class_id <= 100 else "val" if class_id <= 150 else "test"


def _root(src: Path) -> Path:
    nested = src / "CUB_200_2011"
    return nested if (nested / "images.txt").is_file() else src


def _per_image(path: Path, fields: int) -> dict[int, tuple[int, list[str]]]:
    """image_id -> (line number, the remaining fields) for a one-line-per-image file."""
    out: dict[int, tuple[int, list[str]]] = {}
    for line_no, cells in read_rows(require_file(path, f"CUB-200-2011 layout: {HELP}"), fields):
        image_id = integer(cells[0], (path, line_no), "image_id")
        if image_id in out:
            raise DataError(path, line_no, f"image_id {image_id} repeated (first on line {out[image_id][0]})")
        out[image_id] = (line_no, cells[1:])
    return out


def read_part_locs(path: Path, k: int) -> dict[int, tuple[np.ndarray, np.ndarray, list[int]]]:
    """image_id -> (xy [k, 2] as written, visible [k], line numbers); every image must list parts 1..k once."""
    parts: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] = {}
    for line_no, cells in read_rows(require_file(path, f"CUB-200-2011 layout: {HELP}"), 5):
        origin = (path, line_no)
        image_id, part_id = integer(cells[0], origin, "image_id"), integer(cells[1], origin, "part_id")
        if not 1 <= part_id <= k:
            raise DataError(path, line_no, f"part_id {part_id} is not in 1..{k}")
        flag = integer(cells[4], origin, "visible flag")
        if flag not in (0, 1):
            raise DataError(path, line_no, f"visible flag {flag} is not 0 or 1")
        xy, vis, lines = parts.setdefault(image_id, (np.zeros((k, 2)), np.zeros(k, bool), [0] * k))
        if lines[part_id - 1]:
            raise DataError(path, line_no, f"part {part_id} of image {image_id} repeated "
                                           f"(first on line {lines[part_id - 1]})")
        xy[part_id - 1] = numbers(cells[2:4], origin, "coordinate")
        vis[part_id - 1] = bool(flag)
        lines[part_id - 1] = line_no
    for image_id, (_, _, lines) in parts.items():
        missing = [i + 1 for i, n in enumerate(lines) if not n]
        if missing:
            raise DataError(path, None, f"image {image_id} has no line for part(s) {missing}")
    return parts


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_PARTS, "CUB-200-2011")
    root = _root(src)
    images_txt = root / "images.txt"
    images = _per_image(images_txt, 2)
    classes = _per_image(root / "image_class_labels.txt", 2)
    boxes = _per_image(root / "bounding_boxes.txt", 5)
    part_locs = root / "parts" / "part_locs.txt"
    parts = read_part_locs(part_locs, NUM_PARTS)
    for image_id, (line_no, (name,)) in images.items():
        for path, table in ((root / "image_class_labels.txt", classes), (root / "bounding_boxes.txt", boxes),
                            (part_locs, parts)):
            if image_id not in table:
                raise DataError(path, None, f"no entry for image_id {image_id} ({images_txt}, line {line_no})")
        class_line, (class_cell,) = classes[image_id]
        class_id = integer(class_cell, (root / "image_class_labels.txt", class_line), "class_id")
        if not 1 <= class_id <= NUM_CLASSES:
            raise DataError(root / "image_class_labels.txt", class_line, f"class_id {class_id} not in 1..{NUM_CLASSES}")
        box_line, box_cells = boxes[image_id]
        x, y, w, h = numbers(box_cells, (root / "bounding_boxes.txt", box_line), "box value")
        xy, vis, lines = parts[image_id]
        image_path = root / "images" / name
        # the image is read here so that a missing or broken one is reported against images.txt
        image = load_image(image_path, (str(images_txt), line_no))
        yield Instance(id=str(Path(name).with_suffix("")), split=split_of_class(class_id), source=str(image_path),
                       keypoints=from_pixel_index(xy, base=0), visible=vis.copy(),
                       origin=(str(part_locs), f"{min(lines)}-{max(lines)}"), box=(x, y, x + w, y + h), image=image)
