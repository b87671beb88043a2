"""The unlabeled pool as a Ray Data stream: prepared Parquet rows, a folder of images, or video frames.

Every source becomes the same stream of rows ``{"id": str, "image": uint8 [S, S, 3], "ok": bool,
"crop": float [4]}`` (crop: the box x0, y0, x1, y1 of the source image the row shows, in its pixels):
decoded and resized on Ray Data's CPU workers, read block by block (memory stays bounded whatever the
pool's size), and split across training workers by Ray Train (``DataConfig(datasets_to_split=["unlabeled"])``).

What runs here and what runs in the step:
- here (CPU workers, no gradient): decoding, the crop to the object region, the resize to the working
  resolution.  These are per-image, parameter-free, and the expensive part of loading.
- in the train step (on the device): the 2D-equivariance transform of Eq. 3 and the supervised
  baseline's augmentation.  The loss needs the transform's parameters, its range grows with the iteration
  (Supplement A), and on a GPU the warp is far cheaper there than on the data workers.

With ``crop_boxes`` (test-time crops, jobs/inference.py) a row shows one frame cut several ways from a single
decode: ``image`` uint8 [V, S, S, 3] and ``crop`` float [V, 4], one view per box.

Unreadable inputs are not fatal: the row comes through with ``ok = False`` and a black image, the training
loop drops it and counts it, and the count is recorded with the run.
"""
from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

#: logical CPUs each Ray Data read/decode task asks for: short work, so a training worker holding most of a
#: node's CPUs never starves its own data stream (jobs/resources.py sizes the rest around it)
DATA_TASK_CPUS = 0.25
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def crop_for(image_shape: tuple[int, ...], crop_box: Sequence[float] | None) -> tuple[float, float, float, float]:
    """The crop a pool row shows: ``crop_box``, or by default the centred square of the image."""
    if crop_box is not None:
        return tuple(float(c) for c in crop_box)
    h, w = image_shape[:2]
    side = min(h, w)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def _resize_square(image: np.ndarray, size: int, crop_box: Sequence[float]) -> np.ndarray:
    """Crop ``crop_box`` (x0, y0, x1, y1 in source pixels) and resize to size x size."""
    from pipeline.prepared import crop_resize

    if image.shape[:2] == (size, size) and tuple(crop_box) == (0, 0, size, size):
        return image
    return crop_resize(image, crop_box, size)


def view_shape(size: int, crop_boxes: Sequence[Sequence[float]] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one row's (image, crop): ([S, S, 3], [4]), or ([V, S, S, 3], [V, 4]) with V ``crop_boxes``."""
    return ((size, size, 3), (4,)) if crop_boxes is None else ((len(crop_boxes), size, size, 3), (len(crop_boxes), 4))


def cut_views(rgb: np.ndarray, size: int, crop_box: Sequence[float] | None,
              crop_boxes: Sequence[Sequence[float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One decoded frame -> (image, crop) of its pool row: ``crop_box`` (default the centred square) resized
    to size x size; with ``crop_boxes``, one view per box, stacked ([V, S, S, 3], [V, 4])."""
    if crop_boxes is None:
        crop = np.asarray(crop_for(rgb.shape, crop_box))
        return _resize_square(rgb, size, crop), crop
    crops = np.asarray([crop_for(rgb.shape, box) for box in crop_boxes], np.float64)
    return np.stack([_resize_square(rgb, size, c) for c in crops]), crops


def decode_encoded(batch: dict, size: int, crop_box: Sequence[float] | None = None,
                   crop_boxes: Sequence[Sequence[float]] | None = None) -> dict:
    """Ray Data batch fn: encoded image bytes (column ``bytes`` or ``image``) -> decoded rows."""
    from PIL import Image

    raw = batch["bytes"] if "bytes" in batch else batch["image"]
    ids = batch["id"] if "id" in batch else batch["path"]
    image_shape, crop_shape = view_shape(size, crop_boxes)
    images = np.zeros((len(raw), *image_shape), np.uint8)
    ok = np.zeros(len(raw), bool)
    crops = np.zeros((len(raw), *crop_shape), np.float64)
    for i, data in enumerate(raw):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                rgb = np.asarray(im.convert("RGB"))
            images[i], crops[i] = cut_views(rgb, size, crop_box, crop_boxes)
            ok[i] = True
        except Exception:        # truncated, corrupt or not an image at all: counted, not fatal
            pass
    return {"id": np.asarray([str(x) for x in ids], dtype=object), "image": images, "ok": ok, "crop": crops}


def _decoded(container, stream):
    """Frames of ``stream`` decoded from the container's current position (every pool decode goes through here)."""
    return container.decode(stream)


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ValueError("the video stream has no frame rate, so its frames cannot be numbered by time")
    return Fraction(rate)


def _frame_number(frame, stream, rate: Fraction) -> int:
    """A decoded frame's index from its presentation time: (pts - stream start) * time_base * frame rate."""
    if frame.pts is None:
        raise ValueError("a decoded frame has no presentation time")
    return round((frame.pts - (stream.start_time or 0)) * stream.time_base * rate)


def _numbered_frames(container, stream, start: int) -> Iterator[tuple[int, object]]:
    """(frame index, frame) in presentation order, from the keyframe at or before frame ``start``.

    Seeks by time to that keyframe, so reaching frame ``start`` costs at most one group of pictures.
    Falls back to decoding from the beginning when the seek lands after ``start`` (a container with a
    poor index) or the frames carry no presentation time (then they are numbered by counting).
    """
    rate = _frame_rate(stream)
    origin = stream.start_time or 0
    if start > 0:
        container.seek(origin + round(Fraction(start) / rate / stream.time_base), stream=stream, backward=True,
                       any_frame=False)
        frames = iter(_decoded(container, stream))
        first = next(frames, None)
        if first is None:
            return                                  # nothing at or after the seek point: past the end
        if first.pts is not None and _frame_number(first, stream, rate) <= start:
            for frame in itertools.chain([first], frames):
                yield _frame_number(frame, stream, rate), frame
            return
        container.seek(origin, stream=stream, backward=True, any_frame=False)
    for n, frame in enumerate(_decoded(container, stream)):
        yield (n if frame.pts is None else _frame_number(frame, stream, rate)), frame


def video_frames(row: dict, size: int, crop_box: Sequence[float] | None = None,
                 crop_boxes: Sequence[Sequence[float]] | None = None) -> list[dict]:
    """Ray Data flat_map fn: decode frames [start, start + count) of one video with PyAV.

    Each chunk seeks to the keyframe at or before its first frame and decodes forward
    (``_numbered_frames``): a long video's chunks cost about one decode of every frame plus one group of
    pictures each, not a decode from frame 0 per chunk.  Frames are named by their presentation time
    (a constant frame rate, as DeepLabCut and the exports number frames), not by counting from the seek
    point.  With ``step``, only frames whose index is a multiple of ``step`` are kept (frames 0, step,
    2 step, ... of the video, whatever the chunking).
    """
    import av

    path, start, count, step = row["video"], int(row["start"]), int(row["count"]), int(row.get("step", 1))
    out = []
    try:
        with av.open(path) as container:
            for i, frame in _numbered_frames(container, container.streams.video[0], start):
                if i >= start + count:
                    break
                if i >= start and i % step == 0:
                    image, crop = cut_views(frame.to_ndarray(format="rgb24"), size, crop_box, crop_boxes)
                    out.append({"id": f"{path}#{i}", "image": image, "ok": True, "crop": crop})
    except Exception:
        image_shape, crop_shape = view_shape(size, crop_boxes)
        out.append({"id": f"{path}#{start}", "image": np.zeros(image_shape, np.uint8), "ok": False,
                    "crop": np.zeros(crop_shape)})
    return out


#: a wanted frame further than this past the frame just decoded is reached by seeking, not by decoding on
#: (about a group of pictures of a camera's video; ``read_frames``)
SEEK_BEYOND = 256


def read_frames(path: str | Path, numbers) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, RGB [H, W, 3]) of the frames ``numbers`` of a video, in ascending order, numbered as the
    pool stream numbers them (``_numbered_frames``).  Each is reached by seeking to the keyframe at or before it
    unless it lies within ``SEEK_BEYOND`` frames of the one decoded last: a few frames of an hour-long video
    cost a few groups of pictures, not the hour.  Numbers the video does not have are not yielded."""
    import av

    wanted = sorted({int(n) for n in numbers})
    k = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        while k < len(wanted):
            for i, frame in _numbered_frames(container, stream, wanted[k]):      # from at or before wanted[k]
                while k < len(wanted) and wanted[k] < i:         # numbers the video skips
                    k += 1
                if k == len(wanted):
                    break
                if wanted[k] == i:
                    yield i, frame.to_ndarray(format="rgb24")
                    k += 1
                    if k == len(wanted) or wanted[k] - i > SEEK_BEYOND:
                        break                                     # done, or seek to the next one
            else:
                return                                            # the video ended: the rest are past its end


def video_length(path: str | Path) -> int:
    """Number of frames of a video: the container's frame count, else a count of its video packets (read
    without decoding; one frame per packet)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in c.demux(stream) if packet.size > 0)


def remote_pool_problem(sources: Sequence[str | Path]) -> str | None:
    """Why raw pool images or videos cannot be read (one of them is in an object store), else None."""
    from pipeline import storage

    remote = [str(p) for p in sources if storage.is_uri(p)]
    if remote:
        return (f"{remote[0]}: a pool of raw images or videos must be on a local or shared (NFS) path; for a pool "
                f"in an object store, prepare it (`fskp prepare` / `fskp synth --out s3://...`) and give the "
                f"prepared dataset")
    return None


def pool_files(sources: Sequence[str | Path]) -> list[Path]:
    """The image and video files of raw pool ``sources`` (files, or folders searched recursively, each folder's
    files sorted), in the order given; a file named twice counts once."""
    files: dict[str, Path] = {}
    for p in map(Path, sources):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif p.exists():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: unlabeled pool not found")
        files.update((str(f), f) for f in found if str(f) not in files)
    return list(files.values())


def pool_dataset(source: str | Path | Sequence[str | Path], size: int, *, split: str | Sequence[str] = "train",
                 crop_box: Sequence[float] | None = None, crop_boxes: Sequence[Sequence[float]] | None = None,
                 frame_step: int = 1, frames_per_task: int = 256, video_lengths: dict[str, int] | None = None):
    """The unlabeled pool as a ``ray.data.Dataset`` of {id, image uint8 [size, size, 3], ok}.

    source: a prepared dataset folder (the rows of ``split``, one name or several; default the training
    split, as in the paper),
    a folder of images, a video file, or a list of image/video files.  ``crop_box`` applies to raw images
    and video frames (e.g. a DeepLabCut project's fixed crop); prepared rows are already cropped.
    ``crop_boxes`` (instead of ``crop_box``): every raw image and video frame, decoded once, is cut by each box
    into one row of V views (test-time crops).  video_lengths: each video's frame count by path (``str`` of
    the ``pool_files`` path), when the caller has read it already (jobs/inference.py ``FramePlan``).
    """
    import ray.data

    from pipeline.prepared import PreparedDataset, is_prepared

    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if crop_boxes is not None and crop_box is not None:
        raise ValueError("pool_dataset: give crop_box or crop_boxes, not both")
    if len(sources) == 1 and is_prepared(sources[0]):
        if crop_boxes is not None:
            raise ValueError(f"{sources[0]}: a prepared dataset's rows are already cropped; test-time crops need "
                             f"the raw images or videos")
        ds = PreparedDataset(sources[0])      # local or in an object store: Ray Data reads its Parquet in place
        splits = [split] if isinstance(split, str) else list(split)
        files = [f for s in splits for f in ds.files(s)]
        if not files:
            raise ValueError(f"{ds.root}: no rows in split(s) {', '.join(splits)} to use as the unlabeled pool")
        # Ray 2.60's default Parquet path (datasource V2) lists files in a "ListFiles" task that always asks for
        # a whole CPU (ray/data/_internal/planner/plan_list_files_op.py, no option): with the Train worker
        # holding the rest of a 2-CPU node it never starts and training waits forever.  The V1 reader's tasks
        # take our DATA_TASK_CPUS.  (Set on the current context: read_parquet snapshots it.)
        ray.data.DataContext.get_current().use_datasource_v2 = False
        # select_columns after the read is projected into the Parquet reader by Ray Data's optimizer
        return ray.data.read_parquet(files, num_cpus=DATA_TASK_CPUS).select_columns(
            ["id", "image"]).map_batches(decode_encoded, fn_kwargs={"size": size}, batch_size=64,
                                         num_cpus=DATA_TASK_CPUS)

    problem = remote_pool_problem(sources)
    if problem:
        raise ValueError(problem)
    paths = [Path(p) for p in sources]
    files = pool_files(paths)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f.suffix.lower() not in VIDEO_SUFFIXES]
    parts, cut = [], {"size": size, "crop_box": crop_box, "crop_boxes": crop_boxes}
    if images:
        parts.append(ray.data.read_binary_files([str(f) for f in images], include_paths=True,
                                                num_cpus=DATA_TASK_CPUS).map_batches(
            decode_encoded, fn_kwargs=cut, batch_size=64, num_cpus=DATA_TASK_CPUS))
    if videos:
        chunks = []
        for v in videos:
            n = video_lengths[str(v)] if video_lengths and str(v) in video_lengths else video_length(v)
            chunks += [{"video": str(v), "start": s, "count": min(frames_per_task, n - s), "step": frame_step}
                       for s in range(0, n, frames_per_task)]
        parts.append(ray.data.from_items(chunks).flat_map(video_frames, fn_kwargs=cut, num_cpus=DATA_TASK_CPUS))
    if not parts:
        raise ValueError(f"{', '.join(map(str, paths))}: no images or videos found for the unlabeled pool")
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
