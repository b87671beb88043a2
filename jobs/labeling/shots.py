"""The training shots, the crop placed by them, and the prepared dataset `fskp label` trains on."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from jobs.labeling.inputs import LabelingInput
from pipeline.prepared import DataError, Instance, square_crop_box


def choose_shots(inp: LabelingInput, work: Path, shots: int | None, frames: Sequence[str] | None,
                 seed: int = 0, backbone: str = "vgg16", weights: str = "auto") -> list[str]:
    """Ids of the labeled frames to train on: ``frames`` by id or file stem, else ``shots`` chosen by
    k-means over image features (paper §3.6; pipeline/select.py) among the labeled frames, else all."""
    ids = [i.id for i in inp.labeled]
    if frames:
        by_stem = {Path(i).name: i for i in ids}
        chosen, unknown = [], []
        for f in frames:
            hit = f if f in ids else by_stem.get(Path(f).stem)
            (chosen if hit else unknown).append(hit or f)
        if unknown:
            raise ValueError(f"--frames: {', '.join(unknown)} not among the {len(ids)} labeled frames")
        return list(dict.fromkeys(chosen))
    if not shots or shots >= len(ids):
        return ids
    from pipeline.converters._common import enclosing_square
    from pipeline.prepared import write_prepared
    from pipeline.select import select_shots

    def whole_frames():
        from PIL import Image

        for inst in inp.labeled:
            with Image.open(inst.source) as im:
                w, h = im.size
            yield replace(inst, crop_box=enclosing_square(w, h))
    data = write_prepared(work / "selection", inp.card, whole_frames(), size=128, overwrite=True, progress=False)
    return list(select_shots(data, shots, method="kmeans", seed=seed, backbone=backbone, weights=weights).ids)


def shots_crop(labeled: list[Instance], margin: float) -> tuple[float, float, float, float]:
    """The fixed square crop: the training shots' labeled keypoints' box, squared, ``margin`` per side."""
    pts = np.concatenate([i.keypoints[i.visible] for i in labeled])
    if len(pts) == 0:
        raise DataError(labeled[0].origin[0], None, "the training frames have no labeled keypoint")
    return square_crop_box((*pts.min(0), *pts.max(0)), margin)


def prepare_dataset(inp: LabelingInput, shot_ids: list[str], crop, size: int, out: Path) -> Path:
    """Prepared dataset of the job: train = the shots, test = held-out labeled frames, unlabeled = the
    unlabeled images; every frame cut with the one fixed crop."""
    from pipeline.prepared import write_prepared

    chosen = set(shot_ids)

    def rows():
        for inst in inp.labeled:
            yield replace(inst, split="train" if inst.id in chosen else "test", crop_box=crop)
        for path in inp.unlabeled:
            yield Instance(id=f"unlabeled/{inp.relative(path)}", split="unlabeled", source=str(path),
                           keypoints=None, visible=None, origin=(str(path), None), crop_box=crop)
    return write_prepared(out, inp.card, rows(), size=size, overwrite=True, progress=False,
                          extra_meta={"format": "fskp-label", "crop_box": list(crop)})


