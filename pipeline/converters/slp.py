"""SLEAP project (Pereira et al., Nature Methods 2022): a user's labeling project in a ``.slp`` file, read and
written with ``sleap-io`` (the optional extra ``fskp[sleap]``).

Layout: ``--src FILE.slp`` -- a SLEAP labels file (HDF5) as the SLEAP GUI saves it, holding the skeleton
(nodes, edges, symmetries), the videos (a media file such as ``.mp4``, a list of image files, or frames
embedded in a ``.pkg.slp``) and the labeled frames, each with its instances.

Rows: one per *user* instance (``Instance``, not ``PredictedInstance``) of every labeled frame, split
``train`` (the few-shot labeling job picks its shots from them, as for DeepLabCut).  Frames that hold only
predictions are skipped (counted in meta.json), as are user instances with no visible point.  The videos
are the unlabeled pool: ``pool_videos`` lists the project's media videos found on this machine (suggested
frames are not rows of their own -- they are frames of those videos).

Card (``card_for``, when ``--card`` is not given): the skeleton's node names as keypoints, its edges as
links, its symmetries as flip pairs (or, when it has none, pairs of left_/right_ names), one part per
connected component of the skeleton (``coco.card_from_keypoints``).  A project with several skeletons is
an error.  A given card is matched by node name (any order), else by position when the counts agree.

Visibility: SLEAP stores a ``visible`` flag per point; a node the labeler did not place or marked "not
visible" is ``visible`` False.  A visible point with a non-finite coordinate is an error naming the file,
the labeled frame and the instance.

Coordinates: SLEAP files since format 1.1 put pixel centres at integer coordinates (the top-left pixel's
centre is (0, 0); sleap-io moves older files to that convention when it reads them), so
``PIXEL_INDEX_OFFSET`` (0.5) is added, as for DeepLabCut and COCO.

Crop: as for DeepLabCut, a project where every labeled frame has at most one user instance (one animal)
gets ONE square crop for all rows -- the box around all visible points, squared and enlarged by the margin
-- so that frames decoded later from its videos can be cut the same way.  A project with several user
instances in a frame (several animals) crops each instance around its own points instead.

Images: a frame of an image-list video is its image file (``source`` is that path); a frame of a media or
embedded video is decoded with sleap-io (``source`` is ``<video>#<frame index>``), grey frames made RGB.
A video that is not on this machine (nor, for media files, next to the ``.slp`` file) is an error naming
the labeled frame.  Ids are ``<video name>/<frame index, 6 digits>`` (``/<instance>`` added when a frame
has several user instances).

``write_slp_predictions`` writes the other direction: predicted keypoints as a SLEAP predictions file,
one ``PredictedInstance`` per frame.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.card import Card
from pipeline.converters._common import PIXEL_INDEX_OFFSET  # 0.5: pixel centres at integers -> at +0.5
from pipeline.converters.coco import card_from_keypoints, keypoint_order, slug
from pipeline.exports import row_chunks
from pipeline.converters.dlc import DEFAULT_MARGIN, VIDEO_SUFFIXES
from pipeline.prepared import DataError, Instance, square_crop_box

CARD = None  # no fixed card: built from the project's skeleton (card_for) unless --card is given
HELP = "FILE.slp: a SLEAP project (skeleton, videos, labeled frames; read with sleap-io, pip install 'fskp[sleap]')"


def _sleap_io():
    try:
        import sleap_io
    except ImportError:
        raise ImportError("reading and writing SLEAP files needs sleap-io: pip install 'fskp[sleap]' "
                          "(or pip install 'sleap-io>=0.9')") from None
    return sleap_io


# ---- reading the project -----------------------------------------------------------------------------
def load_project(path: Path, open_videos: bool = False):
    """The ``sleap_io.Labels`` of a .slp file, or DataError naming the file."""
    sio = _sleap_io()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SLEAP file not found")
    try:
        return sio.load_slp(str(path), open_videos=open_videos)
    except Exception as e:             # h5py / sleap-io raise OSError, KeyError, ValueError... on foreign files
        raise DataError(path, None, f"unreadable SLEAP file: {e}") from None


def the_skeleton(labels, path: Path):
    if len(labels.skeletons) != 1:
        raise DataError(path, "skeletons", f"{len(labels.skeletons)} skeletons; fskp reads projects with one "
                                           f"keypoint set")
    return labels.skeletons[0]


def card_for(src: Path) -> Card:
    """A card from the skeleton: nodes as keypoints, edges as links, symmetries as flip pairs."""
    src = Path(src)
    skeleton = the_skeleton(load_project(src), src)
    names = list(skeleton.node_names)
    links = list(dict.fromkeys(tuple(sorted(e)) for e in skeleton.edge_inds if e[0] != e[1]))
    flips = list(dict.fromkeys(tuple(sorted(s)) for s in skeleton.symmetry_inds if s[0] != s[1])) or None
    return card_from_keypoints(
        "slp-" + (slug(src.stem) or "project"), f"SLEAP project {src.stem} (skeleton {skeleton.name or '?'})",
        names, links, origin=str(src), flip_pairs=flips,
        notes="Built by `fskp prepare slp` from the project's skeleton: nodes, edges as links, symmetries as flip "
              "pairs (else left_/right_ names), parts from the skeleton's connected components.")


def video_names(videos) -> list[str]:
    """A short, unique name per video: the media file's stem, or an image list's folder name."""
    base = [Path(v.filename[0]).parent.name or "images" if isinstance(v.filename, list) else Path(v.filename).stem
            for v in videos]
    counts = Counter(base)
    return [b if counts[b] == 1 else f"{b}-{i}" for i, b in enumerate(base)]


def pool_videos(src: Path) -> list[Path]:
    """The project's media videos (the unlabeled pool) that exist here (or next to the .slp file)."""
    src = Path(src)
    out = []
    for video in load_project(src).videos:
        if isinstance(video.filename, list) or Path(video.filename).suffix.lower() not in VIDEO_SUFFIXES:
            continue                                    # image lists and embedded frames are not videos
        found = _existing(Path(video.filename), src)
        if found is not None:
            out.append(found)
    return out


def _existing(path: Path, slp: Path) -> Path | None:
    """``path`` if it exists, else the file of that name next to the .slp file (as SLEAP looks for it)."""
    for p in (path, slp.parent / path.name):
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class _Labeled:
    id: str
    video: object               # sleap_io.Video
    frame_idx: int
    keypoints: np.ndarray       # [K, 2] card order, prepared convention
    visible: np.ndarray         # [K] bool
    origin: tuple[str, str]


def _user_instances(labels, path: Path, card: Card, skipped: Counter) -> list[_Labeled]:
    skeleton = the_skeleton(labels, path)
    order = keypoint_order(list(skeleton.node_names), card, path, f"skeleton {skeleton.name or ''}".strip())
    names = dict(zip(labels.videos, video_names(labels.videos)))
    out = []
    for i, lf in enumerate(labels.labeled_frames):
        where = f"labeled frame {i} (video {names.get(lf.video, '?')}, frame {lf.frame_idx})"
        users = lf.user_instances
        if not users:
            skipped["frames with predictions only"] += 1
            continue
        for j, inst in enumerate(users):
            row = f"{where}, instance {j}"
            xy = np.asarray(inst.points["xy"], dtype=np.float64)
            vis = np.asarray(inst.points["visible"], dtype=bool)
            bad = vis & ~np.isfinite(xy).all(axis=1)
            if bad.any():
                raise DataError(path, row, f"node {skeleton.node_names[int(np.flatnonzero(bad)[0])]!r} is visible "
                                           f"but its coordinate is NaN or infinite")
            if not vis.any():
                skipped["user instances with no visible point"] += 1
                continue
            kp = np.where(vis[:, None], xy + PIXEL_INDEX_OFFSET, 0.0)
            suffix = f"/{j}" if len(users) > 1 else ""
            out.append(_Labeled(id=f"{names[lf.video]}/{lf.frame_idx:06d}{suffix}", video=lf.video,
                                frame_idx=int(lf.frame_idx), keypoints=kp[order], visible=vis[order],
                                origin=(str(path), row)))
    return out


def _frame(item: _Labeled, slp: Path) -> tuple[str, np.ndarray | None]:
    """(source, image): an image-list frame as its file (image None: read by the writer), any other
    frame decoded to [H, W, 3] uint8."""
    video = item.video
    if isinstance(video.filename, list):
        if not 0 <= item.frame_idx < len(video.filename):
            raise DataError(item.origin[0], item.origin[1], f"frame {item.frame_idx} is past the video's "
                                                            f"{len(video.filename)} images")
        image = _existing(Path(video.filename[item.frame_idx]), slp)
        if image is None:
            raise DataError(item.origin[0], item.origin[1], f"image not found: {video.filename[item.frame_idx]}")
        return str(image), None
    if not video.exists():
        raise DataError(item.origin[0], item.origin[1], f"video not found: {video.filename} (nor next to {slp.name})")
    try:
        frame = np.asarray(video[item.frame_idx])
    except Exception as e:              # decoders raise many kinds of error on bad frames
        raise DataError(item.origin[0], item.origin[1], f"cannot read frame {item.frame_idx} of {video.filename}: "
                                                        f"{e}") from None
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return f"{video.filename}#{item.frame_idx}", np.ascontiguousarray(frame[..., :3]).astype(np.uint8)


def instances(src: Path, card: Card, skipped: Counter, margin: float = DEFAULT_MARGIN) -> Iterator[Instance]:
    src = Path(src)
    labels = load_project(src, open_videos=True)
    items = _user_instances(labels, src, card, skipped)
    per_frame = Counter((id(it.video), it.frame_idx) for it in items)
    crop = None
    if items and max(per_frame.values()) == 1:         # one animal: one project crop, as for DeepLabCut
        pts = np.concatenate([it.keypoints[it.visible] for it in items])
        crop = square_crop_box((*pts.min(0), *pts.max(0)), margin)
    for it in items:
        source, image = _frame(it, src)
        yield Instance(id=it.id, split="train", source=source, keypoints=it.keypoints, visible=it.visible,
                       origin=it.origin, image=image, crop_box=crop)


# ---- writing predictions -----------------------------------------------------------------------------
def _video(video_path_or_image_paths, sio):
    if isinstance(video_path_or_image_paths, (str, Path)):
        path = Path(video_path_or_image_paths)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: video not found")
        import av

        from pipeline.pool import video_length

        video = sio.Video.from_filename(str(path))
        with av.open(str(path)) as c:      # the container's header; sleap-io would count frames by decoding
            s = c.streams.video[0]
            video.backend_metadata.update(shape=(video_length(path), s.height, s.width, 3), grayscale=False,
                                          fps=float(s.average_rate or s.guessed_rate or 30))
        return video
    paths = [Path(p) for p in video_path_or_image_paths]
    if not paths:
        raise ValueError("no image paths given")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: image not found ({len(missing)} of {len(paths)} missing)")
    return sio.Video.from_filename([str(p) for p in paths])


def write_slp_predictions(path: str | Path, skeleton_names: Sequence[str], links: Sequence[tuple],
                          video_path_or_image_paths: str | Path | Sequence[str | Path], frame_indices: Sequence[int],
                          keypoints: np.ndarray, scores: np.ndarray) -> Path:
    """Write predicted keypoints as a SLEAP predictions file (``.slp``) that SLEAP and sleap-io open.

    skeleton_names: the K node names (a card's keypoints).  links: edges as (i, j) 0-based indices or
    (name, name) pairs (a card's links).  video_path_or_image_paths: the video the frames come from, or the
    list of image files that make up the "video" (frame i = image i).  frame_indices: [N] distinct frame
    numbers in that video.  keypoints: [N, K, 2] in source-image pixels, prepared convention (pixel centres
    at integer + 0.5), written as SLEAP coordinates (``- PIXEL_INDEX_OFFSET``); a non-finite keypoint is
    written as a missing (not visible) point.  scores: [N, K] per-keypoint scores (e.g. the likelihood of
    pipeline/exports.py), finite where the keypoint is; the instance score is their mean.

    One ``PredictedInstance`` per frame, no user instances, no tracks.  Written atomically; returns ``path``.
    """
    sio = _sleap_io()
    names = [str(n) for n in skeleton_names]
    if not names or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"skeleton names must be distinct non-empty names, got {names}")
    kp, sc = np.asarray(keypoints), np.asarray(scores)          # not copied: a long video's arrays stay on disk
    frames = np.asarray(frame_indices, np.int64)
    if kp.ndim != 3 or kp.shape[1:] != (len(names), 2):
        raise ValueError(f"keypoints must be [N, {len(names)}, 2], got shape {kp.shape}")
    if sc.shape != kp.shape[:2]:
        raise ValueError(f"scores must be [N, K] = {list(kp.shape[:2])}, got shape {sc.shape}")
    if len(frames) != len(kp):
        raise ValueError(f"{len(frames)} frame indices for {len(kp)} frames of keypoints")
    if len(np.unique(frames)) != len(frames) or min(frames, default=0) < 0:
        raise ValueError("frame indices must be distinct and >= 0 (one predicted instance per frame)")
    for rows in row_chunks(len(kp)):
        given = np.isfinite(kp[rows]).all(axis=2)
        if not np.isfinite(sc[rows][given]).all():
            n, k = np.argwhere(given & ~np.isfinite(sc[rows]))[0]
            raise ValueError(f"frame {frames[rows.start + n]}, {names[k]}: a keypoint is given but its score is not "
                             f"finite")
    edges = []
    for a, b in links:
        a, b = (names[a], names[b]) if isinstance(a, (int, np.integer)) else (str(a), str(b))
        if a not in names or b not in names:
            raise ValueError(f"link ({a!r}, {b!r}) names a keypoint that is not in {names}")
        edges.append((a, b))

    skeleton = sio.Skeleton(nodes=list(names), edges=edges)     # sleap-io turns the list it gets into Nodes
    video = _video(video_path_or_image_paths, sio)
    if isinstance(video.filename, list) and max(frames, default=0) >= len(video.filename):
        raise ValueError(f"frame index {max(frames)} is past the {len(video.filename)} images")
    path = Path(path)
    with atomic_path(path) as tmp:
        # sleap-io writes the file's metadata, skeleton and video for the first frame; the per-frame tables
        # (frames, instances, pred_points) are then written from arrays, a chunk of frames at a time: one
        # Python object per frame would take ~5 KB each, 0.5 GB for an hour of video
        first = []
        if len(frames):
            xy, point_scores, instance_scores = _sleap_points(kp[:1], sc[:1])
            instance = sio.PredictedInstance.from_numpy(xy[0], skeleton=skeleton, point_scores=point_scores[0],
                                                        score=float(instance_scores[0]))
            first = [sio.LabeledFrame(video=video, frame_idx=int(frames[0]), instances=[instance])]
        sio.save_slp(sio.Labels(labeled_frames=first, videos=[video], skeletons=[skeleton]), str(tmp), verbose=False)
        if len(frames) > 1:
            _write_prediction_tables(tmp, frames, kp, sc)
    return path


def _sleap_points(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy [n, K, 2] SLEAP coordinates, NaN where missing; point scores [n, K], 0 where missing; instance scores
    [n], the mean of the given points' scores) from keypoints [n, K, 2] (prepared convention) and scores [n, K]."""
    kp, sc = np.asarray(keypoints, np.float64), np.asarray(scores, np.float64)
    given = np.isfinite(kp).all(axis=2)
    xy = np.where(given[..., None], kp - PIXEL_INDEX_OFFSET, np.nan)
    point_scores = np.where(given, sc, 0.0)
    shown = given.sum(1)
    return xy, point_scores, np.where(shown > 0, point_scores.sum(1) / np.maximum(shown, 1), 0.0)


def _write_prediction_tables(path: Path, frames: np.ndarray, keypoints: np.ndarray, scores: np.ndarray) -> None:
    """Rewrite the ``frames``, ``instances`` and ``pred_points`` tables of a one-frame .slp file written by
    sleap-io for all N frames (one predicted instance of K points each, video 0, skeleton 0, no track), in
    the dtypes sleap-io gave them and with its row of frame 0 as the check that the layout is the one
    assumed here.  frames [N]; keypoints [N, K, 2] prepared convention; scores [N, K].  Written a chunk of
    frames at a time (pipeline.exports.row_chunks)."""
    import h5py

    n, k = keypoints.shape[:2]
    with h5py.File(path, "r+") as f:
        first = {name: f[name][:] for name in ("frames", "instances", "pred_points")}
        tables = {}
        for name, head in first.items():
            del f[name]
            tables[name] = f.create_dataset(name, shape=(n * (k if name == "pred_points" else 1),), dtype=head.dtype)
        for chunk in row_chunks(n):
            xy, point_scores, instance_scores = _sleap_points(keypoints[chunk], scores[chunk])
            rows = {name: np.zeros(len(xy) * (k if name == "pred_points" else 1), dtype=t.dtype)
                    for name, t in first.items()}
            fr, inst, pts = rows["frames"], rows["instances"], rows["pred_points"]
            ids = np.arange(chunk.start, chunk.stop)
            fr["frame_id"], fr["video"], fr["frame_idx"] = ids, 0, frames[chunk]
            fr["instance_id_start"], fr["instance_id_end"] = ids, ids + 1
            inst["instance_id"], inst["instance_type"], inst["frame_id"], inst["skeleton"] = ids, 1, ids, 0
            inst["track"], inst["from_predicted"], inst["score"] = -1, -1, instance_scores
            inst["point_id_start"], inst["point_id_end"], inst["tracking_score"] = ids * k, ids * k + k, np.nan
            visible = np.isfinite(xy).all(2).reshape(-1)
            pts["x"], pts["y"] = xy[..., 0].reshape(-1), xy[..., 1].reshape(-1)
            pts["visible"], pts["complete"], pts["score"] = visible, False, point_scores.reshape(-1)
            for name, table in rows.items():
                if chunk.start == 0:
                    head = table[:len(first[name])]
                    if head.tobytes() != first[name].tobytes():
                        raise RuntimeError(f"sleap-io wrote a {name} table this writer does not know: "
                                           f"{first[name]!r} (expected {head!r}); pin sleap-io to a version it "
                                           f"was tested with")
                per_frame = k if name == "pred_points" else 1
                tables[name][chunk.start * per_frame:chunk.stop * per_frame] = table
