"""`fskp label`: label a dataset from a few examples (paper §1, §6).

    labeled frames + unlabeled frames/videos  ->  shots (k-means, or all)  ->  crop  ->  prepared dataset
    ->  Ray Train (the full method, `fskp train`'s machinery)  ->  Ray Data batch prediction of every frame
    ->  held-out error (with --shots)  ->  DeepLabCut CSV, COCO JSON, overlays, suggestions

Inputs (``read_*``): a DeepLabCut project, or a folder of images / a video with a COCO keypoints JSON
or a DeepLabCut CSV.  Every labeled frame becomes an ``Instance`` in *source* pixels.

Crop (documented choice): one fixed square crop for every frame, the box around the training shots'
labeled keypoints made square and enlarged by ``margin`` of its larger side on each side (DeepLabCut
users know this as the project's crop).  Only the shots' labels place it, never held-out ones.  A user
who knows the region passes ``--crop x0,y0,x1,y1``.  The detector then works at ``size`` pixels on that
region instead of squeezing a whole arena into it.

Held-out scoring (``--shots N``): in source pixels; a keypoint is correct within 10 % of the largest side
of that frame's labeled-keypoint box, never under 20 px -- the scoring of ../shared/data/README.md that
DeepLabCut's and SLEAP's reference numbers use.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.atomic import write_text_atomic
from pipeline.card import Card, MetricSpec
from pipeline.converters.dlc import DEFAULT_PCUTOFF   # DeepLabCut's default pcutoff (0.6)
from pipeline.prepared import DataError, Instance, square_crop_box

#: README scoring of the DeepLabCut/SLEAP comparison: PCK@0.1 of the labeled-keypoint box, 20 px floor
HELD_OUT_METRIC = MetricSpec(kind="pck", normalize="bbox_max_side", alpha=0.1, min_threshold_px=20.0)


@dataclass
class LabelingInput:
    """What `fskp label` works from; keypoints in source pixels, pixel centres at +0.5."""

    card: Card
    labeled: list[Instance]                 # split "train"; source = image file
    unlabeled: list[Path] = field(default_factory=list)    # image files without labels
    videos: list[Path] = field(default_factory=list)       # videos: the larger unlabeled pool
    root: Path | None = None                # paths in the DeepLabCut CSV are written relative to this
    scorer: str = "fskp"
    pcutoff: float = DEFAULT_PCUTOFF
    iteration: int = 0                      # a DeepLabCut project's refinement iteration (machinelabels-iter<N>)

    def relative(self, path: str | Path) -> str:
        p = Path(path)
        if self.root is not None:
            try:
                return p.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return p.as_posix()


# ---- reading the inputs ------------------------------------------------------------------------------
def read_dlc_project(project: str | Path, links: str | None = None) -> LabelingInput:
    """A DeepLabCut project: its labeled frames, its other extracted frames, and its videos
    (config.yaml's video_sets, else videos/ -- see pipeline.converters.dlc.pool_videos).

    links: ``--links a-b,b-c`` (names or 0-based indices), used instead of config.yaml's skeleton.  With
    neither, ``label`` derives links from the training frames' labels (``derive_links``)."""
    from pipeline.converters import dlc

    project = Path(project)
    cfg = dlc.read_config(project)
    card = dlc.card_for(project, links=parse_links(cfg["bodyparts"], links) if links else None)
    frames = [f for path in dlc.label_files(project, cfg.get("scorer"))
              for f in dlc.read_label_file(path, project, card.keypoints)]
    if not frames:
        raise DataError(project / "labeled-data", None, "no labeled frame in the project's CollectedData files")
    labeled = [Instance(id=f.id, split="train", source=str(f.image), keypoints=f.keypoints, visible=f.visible,
                        origin=(str(f.csv), f.line)) for f in frames]
    return LabelingInput(card=card, labeled=labeled, unlabeled=dlc.unlabeled_frames(project, frames),
                         videos=dlc.pool_videos(project), root=project, scorer=str(cfg.get("scorer") or "fskp"),
                         pcutoff=dlc.pcutoff_of(project, cfg), iteration=dlc.iteration_of(project, cfg))


def parse_links(names: Sequence[str], links: str | None) -> list[tuple[int, int]]:
    """``--links a-b,b-c`` (keypoint names or 0-based indices) -> distinct sorted index pairs."""
    names = list(names)
    pairs = []
    for item in filter(None, (links or "").split(",")):
        ends = item.strip().split("-")
        if len(ends) != 2:
            raise ValueError(f"--links: expected pairs like a-b, got {item!r}")
        idx = [names.index(e) if e in names else int(e) if e.isdigit() and int(e) < len(names) else None
               for e in ends]
        if None in idx:
            raise ValueError(f"--links: {item!r} names a keypoint not in {names}")
        if idx[0] != idx[1]:
            pairs.append(tuple(sorted(idx)))
    return list(dict.fromkeys(pairs))


def card_from_options(names: Sequence[str], links: str | None, origin: str) -> Card:
    """A card from keypoint names and ``--links a-b,b-c`` (names or 0-based indices)."""
    from pipeline.converters.coco import card_from_keypoints

    return card_from_keypoints(re.sub(r"[^a-z0-9]+", "-", Path(origin).stem.lower()).strip("-") or "labels",
                               f"keypoints of {Path(origin).name}", list(names), parse_links(names, links),
                               origin=origin)


# ---- links when the labels come without a skeleton ---------------------------------------------------
def derive_links(keypoints: np.ndarray, visible: np.ndarray) -> list[tuple[int, int]]:
    """Links for keypoints that come without a skeleton: the minimum spanning tree of the keypoints
    under their mean pairwise distance in the labeled frames.

    keypoints [N, K, 2] (any pixels), visible [N, K].  The distance of a pair is its mean over the frames
    that label both; a pair never labeled in the same frame gets the distance of the two keypoints' mean
    positions, so every keypoint labeled at least once is linked into one tree.  Keypoints never labeled
    get no link.  Returns sorted index pairs, in order; [] when fewer than two keypoints are labeled.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree

    kp, vis = np.asarray(keypoints, np.float64), np.asarray(visible, bool)
    labeled = np.flatnonzero(vis.any(0))
    if len(labeled) < 2:
        return []
    both = vis[:, :, None] & vis[:, None, :]                                        # [N, K, K]
    dist = np.linalg.norm(kp[:, :, None] - kp[:, None, :], axis=-1)                 # [N, K, K]
    together = both.sum(0)
    mean = np.where(together > 0, np.where(both, dist, 0.0).sum(0) / np.maximum(together, 1), np.nan)
    centre = np.array([kp[vis[:, k], k].mean(0) if vis[:, k].any() else (np.nan, np.nan)
                       for k in range(kp.shape[1])])
    apart = np.linalg.norm(centre[:, None] - centre[None, :], axis=-1)
    weights = np.where(np.isnan(mean), apart, mean)[np.ix_(labeled, labeled)]
    # csgraph reads 0 (and tiny weights) as "no edge"; every spanning tree has the same number of edges, so
    # adding 1 px to every weight keeps the minimum tree and links keypoints labeled on the same spot
    weights = weights + 1.0
    np.fill_diagonal(weights, 0.0)
    tree = minimum_spanning_tree(weights).tocoo()
    return sorted(tuple(sorted((int(labeled[a]), int(labeled[b])))) for a, b in zip(tree.row, tree.col))


def with_links(card: Card, links: list[tuple[int, int]], note: str) -> Card:
    """``card`` with ``links`` (index pairs) as its links and ``note`` added to its notes."""
    from pipeline.card import parse_card

    raw = {**card.raw, "links": [[card.keypoints[a], card.keypoints[b]] for a, b in links],
           "notes": " ".join(filter(None, [card.raw.get("notes", ""), note]))}
    return parse_card(raw, origin=f"card {card.name}")


def check_trainable(inp: LabelingInput) -> None:
    """Refuse inputs `fskp label` cannot train on, before anything starts (ValueError / DataError)."""
    card, where = inp.card, (inp.labeled[0].origin[0] if inp.labeled else inp.root or inp.card.name)
    if card.num_keypoints < 2:
        raise DataError(where, None, f"only {card.num_keypoints} keypoint ({', '.join(card.keypoints)}): fskp "
                                     f"label needs at least two, since its edge maps draw links between keypoints")
    if not inp.labeled:
        raise DataError(where, None, "no labeled frame to train on")
    if not any(i.visible.any() for i in inp.labeled):
        raise DataError(where, None, f"none of the {len(inp.labeled)} labeled frames labels a keypoint "
                                     f"(every x / y is empty): nothing to train on")


def links_for_training(inp: LabelingInput, train: list[Instance]) -> LabelingInput:
    """``inp`` as is when its card has links; else with links derived from the training frames' labels
    (``derive_links``), printed; refused when the training frames label fewer than two keypoints."""
    if inp.card.links:
        return inp
    links = derive_links(np.stack([i.keypoints for i in train]), np.stack([i.visible for i in train]))
    if not links:
        named = sorted({inp.card.keypoints[k] for i in train for k in np.flatnonzero(i.visible)})
        raise DataError(train[0].origin[0], None,
                        f"no skeleton and the {len(train)} training frames label only {named or 'no keypoint'}: "
                        f"links cannot be derived from fewer than two labeled keypoints; pass --links a-b,...")
    names = ", ".join(f"{inp.card.keypoints[a]}-{inp.card.keypoints[b]}" for a, b in links)
    print(f"no skeleton given: links derived from the {len(train)} training frames' labels (minimum spanning "
          f"tree of mean keypoint distances): {names}; pass --links to choose them", flush=True)
    unlinked = [inp.card.keypoints[k] for k in range(inp.card.num_keypoints) if not any(k in l for l in links)]
    if unlinked:
        print(f"  not labeled in any training frame, so without a link: {', '.join(unlinked)}", flush=True)
    return replace(inp, card=with_links(inp.card, links, f"Links derived by fskp label from {len(train)} "
                                                         f"training frames (minimum spanning tree): {names}."))


def _dlc_csv_bodyparts(path: Path) -> list[str]:
    import csv

    with open(path, newline="") as f:
        rows = [next(csv.reader(f), None) for _ in range(3)]
    if any(r is None for r in rows) or rows[1][0] != "bodyparts":
        raise DataError(path, 2, "expected DeepLabCut's header rows (scorer, bodyparts, coords)")
    return list(dict.fromkeys(p for p, c in zip(rows[1], rows[2]) if c in ("x", "y")))


def read_labels(labels: str | Path, image_dirs: list[Path], card: Card | None, links: str | None) -> tuple[Card, list[Instance]]:
    """A COCO keypoints JSON or a DeepLabCut CSV whose images are found in ``image_dirs``."""
    from pipeline.converters import coco, dlc

    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: label file not found")
    if labels.suffix.lower() == ".json":
        if card is None:
            cats = coco.keypoint_categories(coco.load_json(labels), labels)
            if not cats:
                raise DataError(labels, "categories", "no category with keypoints; pass --card")
            skeleton = cats[0].get("skeleton") or []
            card = card_from_options(list(cats[0]["keypoints"]),
                                     ",".join(f"{a - 1}-{b - 1}" for a, b in skeleton), str(labels))
        skipped: Counter = Counter()
        found = list(coco.read_annotation_file(labels, "train", image_dirs, card, skipped, id_prefix=""))
        return card, [replace(i, id=Path(i.source).stem) for i in found]
    if labels.suffix.lower() == ".csv":
        if card is None:
            card = card_from_options(_dlc_csv_bodyparts(labels), links, str(labels))
        frames = dlc.read_label_file(labels, image_dirs[0], card.keypoints)
        return card, [Instance(id=f.id, split="train", source=str(f.image), keypoints=f.keypoints,
                               visible=f.visible, origin=(str(f.csv), f.line)) for f in frames]
    raise ValueError(f"{labels}: labels must be a COCO keypoints .json or a DeepLabCut .csv")


def read_images(images: str | Path, labels: str | Path, card: Card | None = None,
                links: str | None = None) -> LabelingInput:
    """A folder of images and the labels of some of them; the others are the unlabeled pool."""
    from pipeline.pool import IMAGE_SUFFIXES

    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image folder not found")
    card, labeled = read_labels(labels, [images], card, links)
    taken = {Path(i.source).resolve() for i in labeled}
    rest = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in taken)
    return LabelingInput(card=card, labeled=labeled, unlabeled=rest, root=images)


def frame_number(name: str, where: Path, row) -> int:
    """The frame index in a labeled frame's name: its last group of digits (DeepLabCut extracts frame i
    of a video as img<i>.png)."""
    digits = re.findall(r"\d+", Path(name).stem)
    if not digits:
        raise DataError(where, row, f"cannot tell which video frame {name!r} is (no frame number in its name)")
    return int(digits[-1])


def extract_frames(video: Path, numbers: set[int], out: Path) -> dict[int, Path]:
    """Decode ``video`` once and save the frames whose index is in ``numbers`` as out/img<i>.png."""
    import av
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    saved = {}
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in numbers:
                path = out / f"img{i:06d}.png"
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(path)
                saved[i] = path
            if len(saved) == len(numbers):
                break
    missing = sorted(numbers - set(saved))
    if missing:
        raise DataError(video, None, f"the labels name frames {missing[:5]} but the video has fewer frames")
    return saved


def read_video(video: str | Path, labels: str | Path, work: Path, card: Card | None = None,
               links: str | None = None) -> LabelingInput:
    """A video and labels of some of its frames, named by frame number (img0123.png = frame 123, as
    DeepLabCut extracts them; a COCO ``file_name`` likewise).  The labeled frames are saved as PNGs under
    ``work``; the whole video is the unlabeled pool."""
    video, labels = Path(video), Path(labels)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: video not found")
    names = _label_image_names(labels)
    numbers = {frame_number(n, labels, row) for row, n in names}
    folder = work / "frames" / video.stem
    extract_frames(video, numbers, folder)
    card, labeled = read_labels(_renamed_labels(labels, names, folder), [folder], card, links)
    return LabelingInput(card=card, labeled=[replace(i, origin=(str(labels), i.origin[1])) for i in labeled],
                         videos=[video], root=folder)


def read_slp_project(slp: str | Path, work: Path, links: str | None = None) -> LabelingInput:
    """A SLEAP project (``.slp``, read with sleap-io: pipeline/converters/slp.py): its user-labeled frames, its
    skeleton (edges as links, or ``--links`` instead) and its media videos as the unlabeled pool.  Labeled
    frames of a media video are saved as PNGs under ``work`` (so they are scored like any labeled image);
    the videos are predicted whole.  One animal per frame: a frame with several user instances is refused."""
    from collections import Counter

    from PIL import Image

    from pipeline.converters import slp as slp_format

    slp = Path(slp)
    card = slp_format.card_for(slp)
    if links:
        card = with_links(card, parse_links(card.keypoints, links), f"Links given with --links: {links}")
    skipped: Counter = Counter()
    labeled = []
    for inst in slp_format.instances(slp, card, skipped):
        if inst.id.count("/") > 1:
            raise DataError(slp, inst.origin[1], "several user instances in one frame: fskp label labels one animal "
                                                 "per frame (multi-animal projects are planned, not supported yet)")
        if inst.image is not None:                          # a decoded video frame: saved as a PNG
            video, number = inst.source.rsplit("#", 1)
            path = work / "frames" / Path(video).stem / f"img{int(number):06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(inst.image).save(path)
            inst = replace(inst, source=str(path), image=None)
        labeled.append(replace(inst, crop_box=None))
    for what, n in skipped.items():
        print(f"{slp.name}: skipped {n} {what}", flush=True)
    if not labeled:
        raise DataError(slp, None, "no user-labeled frame in the project")
    return LabelingInput(card=card, labeled=labeled, videos=slp_format.pool_videos(slp), root=slp.parent,
                         scorer="sleap")


def _label_image_names(labels: Path) -> list[tuple[object, str]]:
    """(row, image name) of every labeled frame of a COCO JSON or DeepLabCut CSV."""
    import csv

    if labels.suffix.lower() == ".json":
        from pipeline.converters import coco

        return [(f"images[{i}]", im.get("file_name", "")) for i, im in enumerate(coco.load_json(labels).get("images") or [])]
    with open(labels, newline="") as f:
        reader = csv.reader(f)
        rows = list(reader)
    return [(n + 1, "/".join(r[:next((j for j in range(1, len(r)) if rows[2][j] in ("x", "y")), 1)]))
            for n, r in enumerate(rows) if n >= 3 and r and any(c.strip() for c in r)]


def _renamed_labels(labels: Path, names: list[tuple[object, str]], folder: Path) -> Path:
    """A copy of the label file whose image names point at the extracted frames (folder/img<i>.png)."""
    import csv

    target = folder / ("labels" + labels.suffix.lower())
    if labels.suffix.lower() == ".json":
        from pipeline.converters import coco

        data = coco.load_json(labels)
        for row, im in zip(names, data.get("images") or []):
            im["file_name"] = f"img{frame_number(im.get('file_name', ''), labels, row[0]):06d}.png"
        target.write_text(json.dumps(data))
        return target
    with open(labels, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 3:
        raise DataError(labels, None, "expected DeepLabCut's three header rows")
    n_index = next((j for j in range(1, len(rows[2])) if rows[2][j] in ("x", "y")), 1)
    out = [r[:1] + r[n_index:] for r in rows[:3]]
    for n, r in enumerate(rows[3:], start=4):
        if r and any(c.strip() for c in r):
            number = frame_number("/".join(r[:n_index]), labels, n)
            out.append([f"img{number:06d}.png"] + r[n_index:])
    with open(target, "w", newline="") as f:
        csv.writer(f).writerows(out)
    return target


# ---- shots and crop --------------------------------------------------------------------------------------
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


# ---- scoring -----------------------------------------------------------------------------------------
def held_out_report(card: Card, pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                    frame_ids: Sequence[str] = ()) -> dict:
    """Held-out error in source pixels with the README's scoring.  pred, gt [N, K, 2]; visible [N, K];
    frame_ids [N] names the frames of ``per_frame_px`` (mean error over each frame's labeled keypoints)."""
    from models.metrics import _mean_per_keypoint, keypoint_errors, score

    s = score(HELD_OUT_METRIC, pred, gt, visible, image_size=1.0)
    err = keypoint_errors(pred, gt)
    _, per_part_px = _mean_per_keypoint(err, visible)
    return {"frames": int(len(gt)), "keypoints": int(visible.sum()),
            "mean_error_px": s["mean_error_px"], "median_error_px": s["median_error_px"], "pck": s["value"],
            "per_bodypart_px": {n: float(v) for n, v in zip(card.keypoints, per_part_px)},
            "per_bodypart_pck": {n: float(v) for n, v in zip(card.keypoints, s["per_keypoint"])},
            "per_frame_px": {f: float(e[v].mean()) for f, e, v in zip(frame_ids, err, visible) if v.any()},
            "scoring": "PCK: error <= max(0.1 x largest side of the frame's labeled-keypoint box, 20 px)"}


def print_held_out(report: dict, out=sys.stdout) -> None:
    print(f"held-out: {report['frames']} frames, {report['keypoints']} labeled keypoints: mean error "
          f"{report['mean_error_px']:.1f} px, median {report['median_error_px']:.1f} px, PCK {report['pck']:.1f} %",
          file=out)
    for name, px in report["per_bodypart_px"].items():
        if np.isfinite(px):
            print(f"  {name:20s} {px:7.1f} px   PCK {report['per_bodypart_pck'][name]:5.1f} %", file=out)


# ---- the job -----------------------------------------------------------------------------------------
@dataclass
class LabelResult:
    run_id: str
    checkpoint: str
    shots: list[str]
    held_out: dict | None
    outputs: dict[str, str]


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


def label(inp: LabelingInput, out: str | Path, *, shots: int | None = None, frames: Sequence[str] | None = None,
          crop: Sequence[float] | None = None, margin: float = 0.1, job_options: dict | None = None,
          overlay: bool = True, suggestions: int = 20, predict_batch: int = 32) -> LabelResult:
    """Train on the shots, predict every frame, score the held-out frames, write every output to ``out``."""
    from jobs.inference import predict_frames
    from jobs.training import TrainJob, run_training

    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    opts = dict(job_options or {})
    check_trainable(inp)
    shot_ids = choose_shots(inp, work, shots, frames, seed=opts.get("seed", 0),
                            backbone=opts.get("selection_backbone") or "vgg16",
                            weights=opts.get("selection_weights") or "auto")
    chosen = set(shot_ids)
    train = [i for i in inp.labeled if i.id in chosen]
    held = [i for i in inp.labeled if i.id not in chosen]
    if not any(i.visible.any() for i in train):
        raise DataError(train[0].origin[0], None, f"the {len(train)} training frames label no keypoint: "
                                                  f"nothing to train on (choose other --frames or more --shots)")
    inp = links_for_training(inp, train)
    crop = tuple(float(c) for c in crop) if crop else shots_crop(train, margin)
    (out / "shots.txt").write_text("".join(f"{inp.relative(i.source)}\n" for i in train))
    print(f"{len(train)} labeled frames for training, {len(held)} held out; crop {tuple(round(c, 1) for c in crop)} "
          f"(side {crop[2] - crop[0]:.0f} px) -> {opts.get('size', 128)} px", flush=True)

    size = int(opts.get("size", 128))
    data = prepare_dataset(inp, shot_ids, crop, size, work / "dataset")
    splits = ("train", "test", "unlabeled")
    settings = dict(storage_path=str((out / "runs").resolve()), run_name=f"label-{inp.card.name}")
    settings.update({k: v for k, v in opts.items() if v is not None})
    job = TrainJob(data=str(data), shots=str(len(shot_ids)), selection="given" if frames else "kmeans",
                   pool=tuple(str(v) for v in inp.videos) or None, pool_splits=splits, pool_crop=crop,
                   evaluate_split="test" if held else None, **settings)
    result = run_training(job, shot_ids=shot_ids)
    if result.error:
        raise RuntimeError(f"training failed: {result.error} (MLflow run {result.run_id})")

    print("predicting every frame ...", flush=True)
    sources = [i.source for i in inp.labeled] + [str(p) for p in inp.unlabeled] + [str(v) for v in inp.videos]
    preds = predict_frames(result.checkpoint_path, sources, crop, batch_size=predict_batch, gpu=job.gpu)

    report = None
    if held:
        at = preds.index()
        rows = [at[str(Path(i.source))] for i in held]
        report = held_out_report(inp.card, preds.keypoints[rows], np.stack([i.keypoints for i in held]),
                                 np.stack([i.visible for i in held]), [inp.relative(i.source) for i in held])
        write_text_atomic(out / "held_out.json", json.dumps(report, indent=2))
        print_held_out(report)
    outputs = write_outputs(inp, preds, out, overlay=overlay, exclude={str(Path(i.source)) for i in train},
                            labeled_ids=[str(Path(i.source)) for i in train], n_suggestions=suggestions)
    summary = {"run_id": result.run_id, "checkpoint": result.checkpoint_path, "card": inp.card.name,
               "keypoints": list(inp.card.keypoints),
               "links": [[inp.card.keypoints[a], inp.card.keypoints[b]] for a, b in inp.card.links],
               "crop_box": list(crop), "size": size,
               "shots": [inp.relative(i.source) for i in train], "held_out": report, "outputs": outputs}
    _log_to_run(job, result.run_id, report, out, crop)
    write_text_atomic(out / "label.json", json.dumps(summary, indent=2))     # written last: the job finished
    return LabelResult(result.run_id, result.checkpoint_path, shot_ids, report, outputs)


def _log_to_run(job, run_id: str, report: dict | None, out: Path, crop) -> None:
    from mlflow.tracking import MlflowClient

    from jobs.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(job.tracking_uri))
    client.set_tag(run_id, "crop_box", json.dumps([round(c, 3) for c in crop]))
    client.set_tag(run_id, "fskp.job", "label")
    if report:
        metrics = {"held_out/mean_error_px": report["mean_error_px"], "held_out/median_error_px":
                   report["median_error_px"], "held_out/pck": report["pck"]}
        metrics.update({f"held_out/px/{k}": v for k, v in report["per_bodypart_px"].items() if np.isfinite(v)})
        for k, v in metrics.items():
            client.log_metric(run_id, k, float(v))
        client.log_artifact(run_id, str(out / "held_out.json"))
    for name in ("shots.txt", "suggestions.csv", "suggestions.png"):
        if (out / name).exists():
            client.log_artifact(run_id, str(out / name))


def write_outputs(inp_or_card, preds, out: Path, *, overlay: bool = True, exclude: set[str] = frozenset(),
                  labeled_ids: Sequence[str] = (), n_suggestions: int = 20, pcutoff: float | None = None,
                  relative=None) -> dict[str, str]:
    """DeepLabCut CSVs (one per frame folder and per video), a COCO JSON, overlays and suggestions; with the
    ``lab`` extra installed also DeepLabCut HDF5 files and an NWB file per frame folder and video
    (``_lab_outputs``); with the ``sleap`` extra a SLEAP predictions file (``<stem>.predictions.slp``) each."""
    import importlib.util

    from pipeline import exports
    from jobs.inference import frame_order

    card = inp_or_card.card if isinstance(inp_or_card, LabelingInput) else inp_or_card
    if isinstance(inp_or_card, LabelingInput):
        relative, pcutoff = inp_or_card.relative, inp_or_card.pcutoff if pcutoff is None else pcutoff
        scorer = inp_or_card.scorer
    else:
        relative, scorer = relative or (lambda p: Path(p).as_posix()), "fskp"
    pcutoff = DEFAULT_PCUTOFF if pcutoff is None else pcutoff
    iteration = inp_or_card.iteration if isinstance(inp_or_card, LabelingInput) else 0
    lab = _lab_packages()
    sleap = importlib.util.find_spec("sleap_io") is not None      # the ``sleap`` extra: SLEAP predictions files
    machine_folders: set[str] = set()       # labeled-data/<folder> names given to frame folders so far
    likelihood = exports.likelihood_from_uncertainty(preds.uncertainty)
    outputs: dict[str, str] = {}
    groups: dict[str, list[int]] = {}
    for n, frame_id in enumerate(preds.ids):
        video, number = frame_order(frame_id)
        key = video if number >= 0 else str(Path(frame_id).parent)
        groups.setdefault(key, []).append(n)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    images_meta = []
    for key, rows in groups.items():
        is_video = frame_order(preds.ids[rows[0]])[1] >= 0
        stem = Path(key).stem if is_video else (relative(key).strip("./").replace("/", "_") or "images")
        index = [frame_order(preds.ids[n])[1] for n in rows] if is_video else [relative(preds.ids[n]) for n in rows]
        path = pred_dir / f"{stem}.csv"
        exports.write_dlc_csv(path, f"fskp_{scorer}", list(card.keypoints), index, preds.keypoints[rows],
                              likelihood[rows])
        outputs[f"dlc_csv:{stem}"] = str(path)
        if lab:
            outputs.update(_lab_outputs(card, key, stem, is_video, index, [preds.ids[n] for n in rows],
                                        preds.keypoints[rows], likelihood[rows], pred_dir, f"fskp_{scorer}",
                                        iteration, machine_folders))
        if sleap:
            from pipeline.converters.slp import write_slp_predictions

            target = pred_dir / f"{stem}.predictions.slp"          # SLEAP's name for a predictions file
            write_slp_predictions(target, card.keypoints, card.links,
                                  key if is_video else [preds.ids[n] for n in rows],
                                  index if is_video else range(len(rows)), preds.keypoints[rows], likelihood[rows])
            outputs[f"slp:{stem}"] = str(target)
        if overlay:
            if is_video:
                frames = {frame_order(preds.ids[n])[1]: (preds.keypoints[n], likelihood[n]) for n in rows}
                target = out / "overlay" / f"{stem}.mp4"
                exports.write_overlay_video(Path(key), target, frames, card.links, pcutoff,
                                            progress=_every_few_seconds(f"overlay {target.name}"))
                outputs[f"overlay:{stem}"] = str(target)
            else:
                exports.write_overlay_images([Path(preds.ids[n]) for n in rows], out / "overlay" / stem,
                                             preds.keypoints[rows], likelihood[rows], card.links, pcutoff)
                outputs[f"overlay:{stem}"] = str(out / "overlay" / stem)
    for n, frame_id in enumerate(preds.ids):
        video, number = frame_order(frame_id)
        images_meta.append({"file_name": relative(frame_id) if number < 0 else f"{Path(video).name}#{number}",
                            **({"frame_index": number} if number >= 0 else {}), **_frame_size(frame_id)})
    coco_path = out / "predictions" / "keypoints_coco.json"
    exports.write_coco_json(coco_path, card, images_meta, preds.keypoints, likelihood, pcutoff)
    outputs["coco_json"] = str(coco_path)
    outputs.update(write_suggestions(preds, out, exclude, labeled_ids, n_suggestions, relative))
    return outputs


def _lab_packages() -> bool:
    """Whether the ``lab`` extra (PyTables, pynwb, ndx-pose) is installed; says what is skipped when not."""
    import importlib.util

    missing = [m for m in ("tables", "pynwb", "ndx_pose") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"DeepLabCut .h5 and NWB outputs skipped: {', '.join(missing)} not installed "
              f"(pip install 'fskp[lab]')", flush=True)
    return not missing


def _lab_outputs(card: Card, key: str, stem: str, is_video: bool, index: list, frame_ids: list[str],
                 keypoints: np.ndarray, likelihood: np.ndarray, pred_dir: Path, scorer: str,
                 iteration: int, machine_folders: set[str]) -> dict[str, str]:
    """The files labs load into DeepLabCut and NWB tools, beside a group's CSV (pipeline/exports.py).

    A video: ``<stem>DLC_<scorer>.h5`` (analysed-video layout, rows = frame numbers) and ``<stem>.nwb``
    (time = frame number / the video's frame rate).  A frame folder: ``labeled-data/<folder>/
    machinelabels-iter<iteration>.h5`` for DeepLabCut's refine GUI (<folder>: the frames' folder name, as
    in a DeepLabCut project; ``-2``, ``-3`` ... appended when two frame folders share a name, recorded in
    ``machine_folders``) and ``<stem>.nwb`` (frame i of the folder at i seconds: images carry no time; each
    frame's file is in the NWB file's source_video).
    """
    from pipeline import exports

    out: dict[str, str] = {}
    if is_video:
        rate, frames = _video_timing(key)
        out[f"dlc_h5:{stem}"] = str(exports.write_dlc_video_h5(pred_dir, key, scorer, list(card.keypoints), index,
                                                               keypoints, likelihood))
        timing = {"rate": rate} if index == list(range(len(index))) else \
            {"timestamps": [float(i / rate) for i in index]}
        out[f"nwb:{stem}"] = str(exports.write_nwb(
            pred_dir / f"{stem}.nwb", card, keypoints, likelihood, **timing, source=[key], source_rate=rate,
            source_frames=frames, scorer=exports.dlc_scorer(scorer),
            description=f"keypoints of {Path(key).name} predicted by fskp ({card.name})"))
    else:
        folder, n = Path(key).name, 1
        while folder in machine_folders:
            n += 1
            folder = f"{Path(key).name}-{n}"
        machine_folders.add(folder)
        images = [f"labeled-data/{folder}/{Path(f).name}" for f in frame_ids]
        out[f"dlc_machinelabels:{stem}"] = str(exports.write_dlc_machinelabels(
            pred_dir, iteration, scorer, list(card.keypoints), images, keypoints, likelihood))
        out[f"nwb:{stem}"] = str(exports.write_nwb(
            pred_dir / f"{stem}.nwb", card, keypoints, likelihood, rate=1.0, source=frame_ids,
            scorer=exports.dlc_scorer(scorer),
            description=f"keypoints of the images in {Path(key).name} predicted by fskp ({card.name}); frame i "
                        f"(source_video's file i) at i seconds, since images carry no time"))
    return out


def _video_timing(video: str) -> tuple[float, int]:
    """(frames per second, number of frames) of a video (30 fps when the container does not say)."""
    import av

    from pipeline.pool import video_length

    with av.open(video) as c:
        s = c.streams.video[0]
        rate = float(s.average_rate or s.guessed_rate or 30)
    return rate, video_length(video)


def _every_few_seconds(what: str, seconds: float = 10.0):
    """A progress(done, total) callback that prints at most every ``seconds`` (and at the end)."""
    import time

    last = [time.time()]

    def report(done: int, total: int | None) -> None:
        if time.time() - last[0] >= seconds or done == total:
            last[0] = time.time()
            print(f"{what}: {done}/{total or '?'} frames", flush=True)
    return report


_SIZES: dict[str, dict] = {}


def _frame_size(frame_id: str) -> dict:
    """{"width", "height"} of an image file or of a video's frames (cached per video)."""
    from jobs.inference import frame_order

    video, number = frame_order(frame_id)
    key = video if number >= 0 else frame_id
    if key not in _SIZES:
        if number >= 0:
            import av

            with av.open(video) as c:
                s = c.streams.video[0]
                _SIZES[key] = {"width": int(s.width), "height": int(s.height)}
        else:
            from PIL import Image

            try:
                with Image.open(frame_id) as im:
                    _SIZES[key] = {"width": im.width, "height": im.height}
            except OSError:
                _SIZES[key] = {"width": 0, "height": 0}
    return _SIZES[key]


def write_suggestions(preds, out: Path, exclude: set[str], labeled_ids: Sequence[str], n: int,
                      relative) -> dict[str, str]:
    """suggestions.csv (ranked frames to label next) and suggestions.png (a contact sheet of them)."""
    from pipeline.suggest import suggest_frames, suggestion_sheet
    from pipeline.suggest import write_suggestions as write_csv

    if n <= 0:
        return {}
    at = preds.index()
    ok = [i for i, good in zip(preds.ids, preds.ok) if good]
    rows = [at[i] for i in ok]
    lab = [at[i] for i in labeled_ids if i in at]
    emb = preds.embedding.astype(np.float32)
    picks = suggest_frames(ok, preds.uncertainty[rows], emb[rows], emb[lab], n=n, exclude=set(exclude))
    if not picks:
        return {}
    write_csv(out / "suggestions.csv", picks, {p.id: relative(p.id) for p in picks})
    sheet = suggestion_sheet(_thumbnails([p.id for p in picks]), picks)
    from PIL import Image

    Image.fromarray(sheet).save(out / "suggestions.png")
    return {"suggestions_csv": str(out / "suggestions.csv"), "suggestions_png": str(out / "suggestions.png")}


def _thumbnails(frame_ids: Sequence[str], size: int = 160) -> list[np.ndarray]:
    """Each frame (an image file or ``<video>#<i>``) fitted into a size x size tile; one decode pass per video."""
    from PIL import Image

    from jobs.inference import frame_order
    from pipeline.converters._common import enclosing_square
    from pipeline.prepared import crop_resize

    def tile(image: np.ndarray) -> np.ndarray:
        return crop_resize(image, enclosing_square(image.shape[1], image.shape[0]), size)

    tiles: dict[str, np.ndarray] = {}
    wanted: dict[str, set[int]] = {}
    for f in frame_ids:
        video, number = frame_order(f)
        if number >= 0:
            wanted.setdefault(video, set()).add(number)
        else:
            with Image.open(f) as im:
                tiles[f] = tile(np.asarray(im.convert("RGB")))
    for video, numbers in wanted.items():
        import av

        with av.open(video) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in numbers:
                    tiles[f"{video}#{i}"] = tile(frame.to_ndarray(format="rgb24"))
                if i >= max(numbers):
                    break
    return [tiles[f] for f in frame_ids]
