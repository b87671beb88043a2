"""Helpers shared by the converter tests (tests/test_convert_*.py): stand-in cards, images with known
bright spots, and the check that a failed conversion leaves nothing behind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def write_card(tmp_path: Path, name: str, keypoints: int | list[str]) -> Path:
    """A minimal valid card standing in for pipeline/cards/<name>.yaml: ``keypoints`` names, or a count
    (named p00, p01, ...)."""
    names = [f"p{i:02d}" for i in range(keypoints)] if isinstance(keypoints, int) else list(keypoints)
    path = tmp_path / f"{name}-card.yaml"
    path.write_text(yaml.safe_dump({"name": name, "keypoints": names,
                                    "metric": {"kind": "pck", "normalize": "bbox_max_side"}}))
    return path


def write_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    """A noise image of w x h pixels (the format follows the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def spot_image(path: Path, width: int, height: int, spots: list[tuple[int, int]]) -> None:
    """A dark image with a white 3x3 square centred on each (column, row) pixel index in ``spots``."""
    img = np.full((height, width, 3), 20, np.uint8)
    for col, row in spots:
        img[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)


def assert_bright_at(image: np.ndarray, xy) -> None:
    """The prepared image is bright at the pixel containing continuous position ``xy``."""
    col, row = int(np.floor(xy[0])), int(np.floor(xy[1]))
    assert image[row, col].mean() > 150, f"expected the white spot at pixel ({col}, {row})"


def assert_nothing_written(out: Path) -> None:
    """A failed conversion leaves neither the output folder nor a partial one (pipeline/atomic.py)."""
    assert not out.exists(), f"{out} was written"
    assert not list(out.parent.glob(f".{out.name}.partial-*")), "a partial folder was left behind"


def write_mp4(path: Path, frames, rate: int = 10) -> Path:
    """An MPEG-4 video of ``frames`` (RGB uint8 [H, W, 3] arrays) at ``rate`` frames per second, as a lab's
    camera leaves it beside its DeepLabCut project."""
    import av

    frames = list(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    return path
