"""CarFusion (Reddy et al., CVPR 2018): cars at Pittsburgh intersections, 14 keypoints per car.

Layout as distributed (one folder per sequence, e.g. car_craig1, car_fifth1, car_fifth2, ...; the
sequence folders may sit in SRC or one level down, e.g. SRC/train/car_fifth2)::

    <sequence>/gt/<camera>_<frame>.txt           one file per annotated image
    <sequence>/images_jpg/<camera>_<frame>.jpg   (or images/)

Each line of a gt file is one keypoint of one car: ``x, y, keypoint_id, car_id[, visibility]`` with
keypoint_id 1..14 (the card's order) and car_id numbering the cars of that image.  Visibility is 1
(visible), 2 (occluded) or 3 (visible, as CarFusion's own COCO exporter treats it); 0 means not
labeled.  Our ``visible`` means "position known, counts for loss and metric", so every labeled
keypoint is visible -- as for COCO's v = 1 and 2.  Points at x <= 0 or y <= 0 or past the image's
right/bottom edge are the annotation tool's "not placed" values and count as not labeled (CarFusion's
exporter does the same).  Coordinates are integer pixel indices; ``PIXEL_INDEX_OFFSET`` puts pixel
centres at integer + 0.5 as the prepared format does.

One ``Instance`` per car with at least one labeled keypoint.  Its box is that of its labeled keypoints:
the sequences' bb/ files list boxes without the car id that would tie them to a car, so they are not read.
The paper's split (§4.1): Fifth Street part 2 (``car_fifth2``) for training, part 1 (``car_fifth1``) for
testing; other sequences are not used.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import PIXEL_INDEX_OFFSET, image_size
from pipeline.prepared import DataError, Instance

CARD = "carfusion"
HELP = "sequence folders car_fifth2 (train) and car_fifth1 (test), each with gt/*.txt and images_jpg/*.jpg"

#: sequence number of Fifth Street -> split (paper §4.1)
SPLIT_OF_FIFTH = {2: "train", 1: "test"}
NUM_KEYPOINTS = 14
VISIBILITY_CODES = (0, 1, 2, 3)
IMAGE_FOLDERS = ("images_jpg", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def sequence_folders(src: Path) -> dict[str, Path]:
    """split -> the Fifth Street sequence folder (one with a gt/ folder) in SRC or one level below."""
    out: dict[str, Path] = {}
    for folder in sorted([src, *[p for p in src.iterdir() if p.is_dir()]]):
        for seq in sorted(p for p in folder.iterdir() if p.is_dir()):
            m = re.fullmatch(r"(?:car_)?fifth_?(\d+)", seq.name.lower())
            if m and int(m.group(1)) in SPLIT_OF_FIFTH and (seq / "gt").is_dir():
                split = SPLIT_OF_FIFTH[int(m.group(1))]
                if split in out and out[split] != seq:
                    raise DataError(seq, None, f"a second Fifth Street part {m.group(1)} folder (first: {out[split]})")
                out[split] = seq
    if not out:
        raise FileNotFoundError(f"{src}: no CarFusion Fifth Street folders (car_fifth2 for train, car_fifth1 "
                                f"for test, each with a gt/ folder) in it or one level below")
    return out


def _image_for(seq: Path, stem: str) -> Path | None:
    for folder in IMAGE_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            p = seq / folder / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def read_gt_file(path: Path, k: int) -> dict[int, list[tuple[int, float, float, int, int]]]:
    """car_id -> [(line number, x, y, keypoint index 0..k-1, visibility code)]; validates every line."""
    cars: dict[int, list] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.strip().rstrip(",").split(",")]
        if len(cells) not in (4, 5):
            raise DataError(path, line_no, f"expected 4 or 5 comma-separated values (x, y, keypoint_id, car_id"
                                           f"[, visibility]), got {len(cells)}")
        try:
            x, y = float(cells[0]), float(cells[1])
            kid, car = (int(float(c)) for c in cells[2:4])
            vis = int(float(cells[4])) if len(cells) == 5 else 1
        except ValueError:
            raise DataError(path, line_no, f"non-numeric value in {line.strip()!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(path, line_no, "keypoint coordinate is NaN or infinite")
        if not 1 <= kid <= k:
            raise DataError(path, line_no, f"keypoint_id {kid} is not in 1..{k}")
        if vis not in VISIBILITY_CODES:
            raise DataError(path, line_no, f"visibility {vis} is not one of {VISIBILITY_CODES}")
        if any(entry[3] == kid - 1 for entry in cars.get(car, ())):
            raise DataError(path, line_no, f"keypoint {kid} of car {car} is given twice")
        cars.setdefault(car, []).append((line_no, x, y, kid - 1, vis))
    return cars


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    src = Path(src)
    if card.num_keypoints != NUM_KEYPOINTS:
        raise DataError(src, None, f"CarFusion has {NUM_KEYPOINTS} keypoints; card {card.name!r} has "
                                   f"{card.num_keypoints}")
    for split, seq in sorted(sequence_folders(src).items()):
        for gt in sorted((seq / "gt").glob("*.txt")):
            image = _image_for(seq, gt.stem)
            if image is None:
                raise DataError(gt, None, f"no image {gt.stem}.jpg in {', '.join(str(seq / f) for f in IMAGE_FOLDERS)}")
            cars = read_gt_file(gt, NUM_KEYPOINTS)
            if not cars:
                skipped["gt files with no keypoint"] += 1
                continue
            w, h = image_size(image, (str(gt), None))
            for car, entries in sorted(cars.items()):
                kp = np.zeros((NUM_KEYPOINTS, 2))
                vis = np.zeros(NUM_KEYPOINTS, bool)
                for _, x, y, i, code in entries:
                    if code == 0 or x <= 0 or y <= 0 or x > w or y > h:
                        continue                        # not placed / outside the frame: not labeled
                    kp[i] = (x + PIXEL_INDEX_OFFSET, y + PIXEL_INDEX_OFFSET)
                    vis[i] = True
                if not vis.any():
                    skipped["cars with no labeled keypoint"] += 1
                    continue
                first_line = entries[0][0]
                yield Instance(id=f"{seq.name}/{gt.stem}/car{car}", split=split, source=str(image),
                               keypoints=kp, visible=vis, origin=(str(gt), f"line {first_line} (car {car})"))
