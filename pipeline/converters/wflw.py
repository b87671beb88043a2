"""WFLW (Wu et al., CVPR 2018): 98 facial landmarks on 10,000 faces, 7,500 train / 2,500 test (paper §4.1).

Layout (the official ``WFLW_annotations.tar.gz`` and ``WFLW_images.tar.gz`` unpacked side by side)::

    SRC/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt
    SRC/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt
    SRC/WFLW_images/<event folder>/<image>.jpg

Each line of a list file is one face, 207 whitespace-separated fields: 196 numbers ``x0 y0 ... x97 y97``
(the landmarks, in the card's order), 4 numbers ``x_min y_min x_max y_max`` (the face box), 6 attribute
flags (pose, expression, illumination, make-up, occlusion, blur) and the image name relative to
``WFLW_images/``.  An image with several faces has several lines.  The train file becomes the ``train``
split and the test file the ``test`` split; ids are ``<split>-<line number>``.

Landmark coordinates are 0-based pixel positions (OpenCV convention, pixel centres at integers) and are
shifted to the prepared format's convention (``_common.from_pixel_index``).  WFLW has no per-landmark
visibility, so every landmark is visible.  The crop is the square around the line's face box.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import expect_keypoints, from_pixel_index, numbers, read_rows, require_dir
from pipeline.prepared import Instance

CARD = "wflw"
HELP = ("WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt "
        "+ WFLW_images/ (the two official archives unpacked)")

NUM_LANDMARKS = 98
NUM_ATTRIBUTES = 6
FIELDS = 2 * NUM_LANDMARKS + 4 + NUM_ATTRIBUTES + 1
LIST_DIR = Path("WFLW_annotations") / "list_98pt_rect_attr_train_test"
SPLIT_FILES = {"train": "list_98pt_rect_attr_train.txt", "test": "list_98pt_rect_attr_test.txt"}


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_LANDMARKS, "WFLW")
    images = require_dir(src / "WFLW_images", "WFLW_images/ from WFLW_images.tar.gz")
    for split, name in SPLIT_FILES.items():
        path = src / LIST_DIR / name
        for line_no, cells in read_rows(path, FIELDS):
            origin = (str(path), line_no)
            landmarks = numbers(cells[:2 * NUM_LANDMARKS], origin, "landmark coordinate").reshape(NUM_LANDMARKS, 2)
            box = numbers(cells[2 * NUM_LANDMARKS:2 * NUM_LANDMARKS + 4], origin, "box coordinate")
            image = images / cells[-1]
            yield Instance(id=f"{split}-{line_no:05d}", split=split, source=str(image),
                           keypoints=from_pixel_index(landmarks, base=0), visible=np.ones(NUM_LANDMARKS, bool),
                           origin=origin, box=tuple(float(v) for v in box))
