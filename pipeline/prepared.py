"""The prepared dataset: the one on-disk format every converter writes and every job reads.

A prepared dataset is a folder::

    DIR/card.yaml                  the dataset's card (pipeline/card.py)
    DIR/meta.json                  format version, size, counts per split, fingerprints, skipped inputs
    DIR/<split>-<shard>.parquet    one row per object instance (schema below)

Each row holds the image cropped around the object's box (with a margin), made square and resized to
the working resolution, PNG-encoded.  Keypoints are in that image's pixels (x right, y down, pixel
centres at integer + 0.5).  ``crop_box`` maps them back to the source image:
``source_xy = crop_box[:2] + xy * (crop_box[2] - crop_box[0]) / size``.

The folder is written under a temporary name and renamed when complete, so a failed conversion never
leaves a folder that looks finished.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import storage
from pipeline.card import Card, load_card, parse_card

FORMAT_VERSION = 1
ROWS_PER_SHARD = 2048
SPLITS = ("train", "val", "test", "unlabeled")

SCHEMA = pa.schema([
    ("id", pa.string()),                       # unique within the dataset
    ("split", pa.string()),                    # train | val | test | unlabeled
    ("image", pa.binary()),                    # PNG, size x size x 3, uint8
    ("keypoints", pa.list_(pa.float32())),     # K*2 (x, y) in image pixels; null for unlabeled rows
    ("visible", pa.list_(pa.bool_())),         # K; counts for loss and metric (each converter documents its rule)
    ("keypoints_3d", pa.list_(pa.float32())),  # K*3 camera-frame (x, y, z); null where unknown
    ("box", pa.list_(pa.float32())),           # 4: object box (x0, y0, x1, y1) in source-image pixels
    ("crop_box", pa.list_(pa.float32())),      # 4: the square region of the source image that became the image
    ("source", pa.string()),                   # source image path (or video path#frame)
])


class DataError(ValueError):
    """Bad input data.  The message names the file and the row (or line) it comes from."""

    def __init__(self, path: str | os.PathLike, row: str | int | None, message: str):
        self.path, self.row = str(path), row
        where = f"{path}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")


@dataclass
class Instance:
    """One annotated object instance as a converter reads it from a native format.

    keypoints: [K, 2] in source-image pixels (any value where ``visible`` is false and unknown).
    visible: [K] bool.  box: (x0, y0, x1, y1) source pixels, or None to use the keypoints' box.
    origin: (file, row) of the annotation, for error messages.
    image: the source image as an array [H, W, 3] uint8 when it is not a file (synthetic data).
    """

    id: str
    split: str
    source: str
    keypoints: np.ndarray | None
    visible: np.ndarray | None
    origin: tuple[str, str | int | None]
    box: tuple[float, float, float, float] | None = None
    keypoints_3d: np.ndarray | None = None
    image: np.ndarray | None = None
    crop_box: tuple[float, float, float, float] | None = None   # force this crop (e.g. a project-wide crop)


# ---- images ------------------------------------------------------------------------------------------
def load_image(path: str | os.PathLike, origin: tuple[str, str | int | None]) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8, or raise DataError naming the annotation row."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(origin[0], origin[1], f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(origin[0], origin[1], f"unreadable image {path}: {e}") from None


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def square_crop_box(box, margin: float) -> tuple[float, float, float, float]:
    """A square around ``box`` whose side is the box's larger side times (1 + 2*margin)."""
    x0, y0, x1, y1 = map(float, box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def crop_resize(image: np.ndarray, crop_box, size: int) -> np.ndarray:
    """Cut ``crop_box`` (may extend past the border: zero padding) and resize it to size x size."""
    from PIL import Image

    x0, y0, x1, y1 = crop_box
    scale = (x1 - x0) / size
    # affine map from output pixel to input pixel: in = scale * out + offset
    im = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE,
                                          (scale, 0, x0, 0, scale, y0), resample=Image.Resampling.BILINEAR)
    return np.asarray(im)


def check_keypoints(kp: np.ndarray, vis: np.ndarray, k: int, hw: tuple[int, int], origin, tolerance: float = 0.25):
    """Validate one instance's keypoints: shape, finiteness, and not far outside the image."""
    if kp.shape != (k, 2) or vis.shape != (k,):
        raise DataError(origin[0], origin[1], f"expected {k} keypoints (x, y), got array of shape {kp.shape}")
    if not np.isfinite(kp[vis]).all():
        raise DataError(origin[0], origin[1], "keypoint coordinate is NaN or infinite")
    h, w = hw
    pad = tolerance * max(h, w)
    xs, ys = kp[vis, 0], kp[vis, 1]
    bad = (xs < -pad) | (xs > w + pad) | (ys < -pad) | (ys > h + pad)
    if bad.any():
        i = int(np.flatnonzero(vis)[np.flatnonzero(bad)[0]])
        raise DataError(origin[0], origin[1],
                        f"keypoint {i} at ({kp[i, 0]:.1f}, {kp[i, 1]:.1f}) is far outside the {w}x{h} image")


# ---- writing -----------------------------------------------------------------------------------------
def _row(inst: Instance, card: Card, size: int, margin: float) -> dict:
    image = inst.image if inst.image is not None else load_image(inst.source, inst.origin)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(inst.origin[0], inst.origin[1], f"image must be H x W x 3, got {image.shape}")
    h, w = image.shape[:2]
    kp = vis = None
    if inst.keypoints is not None:
        kp = np.asarray(inst.keypoints, dtype=np.float64)
        vis = np.asarray(inst.visible if inst.visible is not None else np.ones(len(kp), bool), dtype=bool)
        check_keypoints(kp, vis, card.num_keypoints, (h, w), inst.origin)
    box = inst.box
    if box is None:
        if kp is not None and vis.any():
            v = kp[vis]
            box = (v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max())
        else:
            box = (0.0, 0.0, float(w), float(h))
    x0, y0, x1, y1 = map(float, box)
    if not (np.isfinite([x0, y0, x1, y1]).all() and x1 >= x0 and y1 >= y0):
        raise DataError(inst.origin[0], inst.origin[1], f"invalid box {box}")
    crop = inst.crop_box if inst.crop_box is not None else square_crop_box(box, margin)
    crop_w = crop[2] - crop[0]
    if abs((crop[3] - crop[1]) - crop_w) > 1e-3 * crop_w:
        raise DataError(inst.origin[0], inst.origin[1], f"crop box {crop} is not square")
    out = crop_resize(image, crop, size)
    k3 = None
    if inst.keypoints_3d is not None:
        k3 = np.asarray(inst.keypoints_3d, dtype=np.float32)
        if k3.shape != (card.num_keypoints, 3) or not np.isfinite(k3).all():
            raise DataError(inst.origin[0], inst.origin[1], f"keypoints_3d must be {card.num_keypoints} x 3 and finite")
    if kp is not None:
        kp_img = (kp - np.array(crop[:2])) * (size / crop_w)
        kp_img[~vis] = np.where(np.isfinite(kp_img[~vis]), kp_img[~vis], 0.0)
    return {
        "id": inst.id, "split": inst.split, "image": encode_png(out),
        "keypoints": None if kp is None else kp_img.astype(np.float32).ravel().tolist(),
        "visible": None if vis is None else vis.tolist(),
        "keypoints_3d": None if k3 is None else k3.ravel().tolist(),
        "box": [x0, y0, x1, y1], "crop_box": [float(c) for c in crop], "source": inst.source,
    }


def write_prepared(out_dir: str | os.PathLike, card: Card, instances: Iterable[Instance], *, size: int = 128,
                   margin: float = 0.25, overwrite: bool = False, extra_meta: dict | None = None,
                   skipped: dict | None = None, progress: bool = True) -> Path:
    """Convert ``instances`` to a prepared dataset in ``out_dir``, atomically.

    Rows are written to a temporary sibling folder; on any error it is removed and ``out_dir`` is left
    untouched.  ``skipped`` maps a reason to a count of inputs a converter skipped (reported in meta.json).
    ``out_dir`` may be an object-store URI (s3://...): the folder is written locally, then uploaded with
    meta.json last (a reader never takes half an upload for a dataset), and the URI is returned.
    """
    if storage.is_uri(out_dir):
        location = storage.resolve_location(out_dir)
        if storage.exists(storage.join(location, "meta.json")) and not overwrite:
            raise FileExistsError(f"{location} already exists (pass --overwrite to replace it)")
        with tempfile.TemporaryDirectory(prefix="fskp-prepare-") as local:
            written = write_prepared(Path(local) / "dataset", card, instances, size=size, margin=margin,
                                     extra_meta=extra_meta, skipped=skipped, progress=progress)
            if storage.exists(location):
                storage.delete_folder(location)
            storage.upload_folder(written, location, last="meta.json")
        return location   # type: ignore[return-value]
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        buffers: dict[str, list[dict]] = {}
        shards: dict[str, int] = {}
        counts: dict[str, int] = {}
        digest = hashlib.sha256()
        ids: set[str] = set()
        t0, n = time.time(), 0

        def flush(split: str):
            rows = buffers.pop(split, [])
            if rows:
                idx = shards.get(split, 0)
                pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp / f"{split}-{idx:05d}.parquet")
                shards[split] = idx + 1

        for inst in instances:
            if inst.split not in SPLITS:
                raise DataError(inst.origin[0], inst.origin[1], f"unknown split {inst.split!r} (one of {SPLITS})")
            if inst.id in ids:
                raise DataError(inst.origin[0], inst.origin[1], f"duplicate instance id {inst.id!r}")
            ids.add(inst.id)
            row = _row(inst, card, size, margin)
            for key in ("id", "split", "image", "keypoints", "visible", "keypoints_3d", "crop_box"):
                digest.update(repr(row[key]).encode() if key != "image" else row[key])
            buffers.setdefault(inst.split, []).append(row)
            counts[inst.split] = counts.get(inst.split, 0) + 1
            if len(buffers[inst.split]) >= ROWS_PER_SHARD:
                flush(inst.split)
            n += 1
            if progress and n % 500 == 0:
                print(f"  prepared {n} instances ({n / (time.time() - t0):.0f}/s)", flush=True)
        for split in list(buffers):
            flush(split)
        if not counts:
            raise DataError(out, None, "no instances to write")
        (tmp / "card.yaml").write_text(card.to_yaml())
        meta = {"format_version": FORMAT_VERSION, "card": card.name, "card_fingerprint": card.fingerprint,
                "num_keypoints": card.num_keypoints, "size": size, "margin": margin, "counts": counts,
                "data_fingerprint": digest.hexdigest()[:16], "skipped": skipped or {}, **(extra_meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- reading -----------------------------------------------------------------------------------------
def is_prepared(location: str | os.PathLike) -> bool:
    """Whether ``location`` (a folder or an object-store URI) holds a prepared dataset."""
    return storage.exists(storage.join(storage.resolve_location(location), "meta.json"))


class PreparedDataset:
    """Read access to a prepared dataset folder: a local/NFS path or an object-store URI (s3://...), read
    in place through pyarrow's filesystems (nothing is copied to local disk)."""

    def __init__(self, root: str | os.PathLike):
        self.root = storage.resolve_location(root)        # str: a URI or an absolute path
        self.remote = storage.is_uri(self.root)
        meta_path = storage.join(self.root, "meta.json")
        if not storage.exists(meta_path):
            raise FileNotFoundError(f"{self.root} is not a prepared dataset (no meta.json); "
                                    f"create one with `fskp prepare` or `fskp synth`")
        self.meta = json.loads(storage.read_text(meta_path))
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format version {self.meta.get('format_version')} != {FORMAT_VERSION}")
        card_path = storage.join(self.root, "card.yaml")
        self.card = parse_card(yaml.safe_load(storage.read_text(card_path)), origin=card_path) if self.remote \
            else load_card(card_path)

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def fingerprint(self) -> str:
        return self.meta["data_fingerprint"]

    def files(self, split: str) -> list[str]:
        return [f for f in storage.list_files(self.root)
                if f.rsplit("/", 1)[-1].startswith(f"{split}-") and f.endswith(".parquet")]

    def count(self, split: str) -> int:
        return int(self.meta["counts"].get(split, 0))

    def table(self, split: str, columns: list[str] | None = None) -> pa.Table:
        files = self.files(split)
        if not files:
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        tables = []
        for f in files:
            with storage.open_input(f) as handle:
                tables.append(pq.read_table(handle, columns=columns))
        return pa.concat_tables(tables)

    def arrays(self, split: str, ids: list[str] | None = None, with_images: bool = True) -> dict[str, np.ndarray]:
        """Decode a split (or the rows with ``ids``, in that order) into numpy arrays.

        Returns id [N], keypoints [N,K,2] float32, visible [N,K] bool, keypoints_3d [N,K,3] (NaN where
        unknown), crop_box [N,4], images [N,H,W,3] uint8 (when ``with_images``).
        """
        cols = [c for c in SCHEMA.names if with_images or c != "image"]
        t = self.table(split, cols)
        rows = t.to_pylist()
        if ids is not None:
            by_id = {r["id"]: r for r in rows}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise KeyError(f"{self.root}: ids not in split {split!r}: {missing[:5]}")
            rows = [by_id[i] for i in ids]
        return rows_to_arrays(rows, self.card.num_keypoints)


def rows_to_arrays(rows: list[dict], k: int) -> dict[str, np.ndarray]:
    n = len(rows)
    kp = np.zeros((n, k, 2), np.float32)
    vis = np.zeros((n, k), bool)
    k3 = np.full((n, k, 3), np.nan, np.float32)
    for i, r in enumerate(rows):
        if r.get("keypoints") is not None:
            kp[i] = np.asarray(r["keypoints"], np.float32).reshape(k, 2)
            vis[i] = np.asarray(r["visible"], bool)
        if r.get("keypoints_3d") is not None:
            k3[i] = np.asarray(r["keypoints_3d"], np.float32).reshape(k, 3)
    out = {"id": np.array([r["id"] for r in rows], dtype=object), "keypoints": kp, "visible": vis,
           "keypoints_3d": k3, "crop_box": np.array([r["crop_box"] for r in rows], np.float32).reshape(n, 4),
           "source": np.array([r["source"] for r in rows], dtype=object)}
    if rows and "image" in rows[0]:
        out["images"] = np.stack([decode_image(r["image"]) for r in rows])
    return out


def iter_rows(paths: list[str], columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
    """Stream rows from Parquet files without loading them whole."""
    for p in paths:
        with storage.open_input(p) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
                yield from batch.to_pylist()
