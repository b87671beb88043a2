"""Shared fixtures: a minimal card, tiny prepared datasets, and the paths of the shared data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no internet on CI: fail fast on weight downloads
os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///" + str(Path(os.environ.get("TMPDIR", "/tmp")) / "fskp-tests-mlflow.db"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DLC_REACHING = SHARED / "data" / "dlc-reaching"

TINY_CARD = """\
name: tiny
title: Tiny three-point test object
keypoints: [left, right, top]
links: [[left, right], [right, top], [top, left]]
parts: {base: [left, right], all: [left, right, top]}
flip_pairs: [[left, right]]
metric: {kind: nme, normalize: keypoints, pair: [left, right]}
"""


@pytest.fixture
def tiny_card_path(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_CARD)
    return p


@pytest.fixture
def tiny_card(tiny_card_path):
    from pipeline.card import load_card

    return load_card(tiny_card_path)


def tiny_instances(n: int, size: int = 64, seed: int = 0, split: str = "train"):
    """n in-memory instances: a triangle drawn on noise; keypoints at its corners."""
    from PIL import Image, ImageDraw

    from pipeline.prepared import Instance

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
        c = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.25) * size
        kp = np.array([[c[0] - r, c[1] + r / 2], [c[0] + r, c[1] + r / 2], [c[0], c[1] - r]])
        im = Image.fromarray(img)
        ImageDraw.Draw(im).polygon([tuple(p) for p in kp], fill=tuple(int(v) for v in rng.integers(120, 255, 3)))
        out.append(Instance(id=f"{split}-{i:04d}", split=split, source=f"memory://{i}", keypoints=kp,
                            visible=np.ones(3, bool), origin=("memory", i), image=np.asarray(im),
                            crop_box=(0.0, 0.0, float(size), float(size))))
    return out
