"""ATRW pose track (Li et al., ACM MM 2020): Amur tigers, 15 keypoints, COCO-style keypoint JSON.

As distributed for the CVWC 2019 pose track (atrw_anno_pose_train.tar.gz, atrw_pose_{train,val,test}.tar.gz)
or as MMPose re-packs it::

    SRC/keypoint_train.json  keypoint_val.json  [keypoint_test.json]     (anywhere under SRC: SRC itself,
                                                                          SRC/annotations/, the folder an
                                                                          archive unpacked into...)
    SRC/train/*.jpg  SRC/val/*.jpg  SRC/test/*.jpg                       (or SRC/images/<split>/, or a
                                                                          <split>/ folder anywhere under SRC)

Each split's ``keypoint_<split>.json`` is searched for in the whole tree; two files of one split are an
error naming both.

The JSON is COCO's keypoint format except that the official files spell the image's ``file_name`` as
``filename``; both are read.  Keypoints are in the card's (COCO-style) order: left_ear, right_ear, nose,
right_shoulder, right_front_paw, left_shoulder, left_front_paw, right_hip, right_knee, right_back_paw,
left_hip, left_knee, left_back_paw, tail, center.  Visibility and pixel conventions are COCO's
(see ``pipeline.converters.coco``): every labeled keypoint (v > 0) is ``visible``.

Crop: the pose track's images are already cut around one tiger (their annotation ``bbox`` is the whole
image), so each image is used whole: the crop is the square centred on the image that contains all of
it (``_common.enclosing_square``), and ``--margin`` does not apply.
The paper's split (§4.1): 3610 train / 516 val / 1033 test images.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

from pipeline.card import Card
from pipeline.converters._common import enclosing_square, image_size
from pipeline.converters.coco import read_annotation_file
from pipeline.prepared import DataError, Instance

CARD = "atrw"
HELP = "keypoint_{train,val,test}.json (anywhere under SRC) + train/ val/ test/ image folders"

SPLITS = ("train", "val", "test")


def annotation_file(src: Path, split: str) -> Path | None:
    """The one ``keypoint_<split>.json`` anywhere under ``src`` (None if there is none)."""
    found = sorted(p for p in src.rglob(f"keypoint_{split}.json") if p.is_file())
    if len(found) > 1:
        raise DataError(found[1], None, f"a second keypoint_{split}.json (the first is {found[0]}); "
                                        f"keep one per split")
    return found[0] if found else None


def image_dirs(src: Path, split: str, json_path: Path) -> list[Path]:
    """Where a split's images may be: the usual folders first, then any ``<split>/`` folder under ``src``."""
    usual = [src / split, src / "images" / split, json_path.parent / split, json_path.parent / "images" / split]
    anywhere = sorted(p for p in src.rglob(split) if p.is_dir())
    return list(dict.fromkeys(usual + anywhere + [src / "images"]))


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    src = Path(src)
    files = {s: annotation_file(src, s) for s in SPLITS}
    if not any(files.values()):
        raise FileNotFoundError(f"{src}: no ATRW keypoint_train.json / keypoint_val.json / keypoint_test.json "
                                f"anywhere under it")
    for split, path in files.items():
        if path is None:
            continue
        for inst in read_annotation_file(path, split, image_dirs(src, split, path), card, skipped, id_prefix=split):
            inst.crop_box = enclosing_square(*image_size(Path(inst.source), inst.origin))
            yield inst
