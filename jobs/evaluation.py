"""Scoring a trained model on a prepared split with the card's metric, and loading checkpoints safely.

Used at the end of every training run (rank 0) and by ``fskp evaluate``.  No model selection happens here:
the last model of a run is its result (paper §3.6).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EVAL_JSON = "evaluation.json"
PREDICTIONS_PNG = "predictions.png"
#: instances of the evaluation split scored at every checkpoint for the learning curve (the first ones)
CURVE_INSTANCES = 256


class CheckpointMismatch(ValueError):
    """A checkpoint trained on another dataset or keypoint set."""


def load_checkpoint(path: str | Path, card=None, device="cpu"):
    """Load a ``model.pt`` (or a checkpoint folder holding one; a path or an object-store URI) with
    ``weights_only=True`` and rebuild the model.

    With ``card``, refuse a checkpoint whose keypoint count or card differs, naming both.
    Returns (model, state) where state holds the job config, step, card name and fingerprint.
    """
    from models.model import KeypointModel

    state, p = read_checkpoint(path, device)
    if card is not None:
        if state["num_keypoints"] != card.num_keypoints:
            raise CheckpointMismatch(f"{p}: checkpoint has {state['num_keypoints']} keypoints "
                                     f"(card {state['card_name']}), the data has {card.num_keypoints} (card {card.name})")
        if state["card_fingerprint"] != card.fingerprint:
            raise CheckpointMismatch(f"{p}: checkpoint was trained on card {state['card_name']} "
                                     f"(fingerprint {state['card_fingerprint']}), the data uses card {card.name} "
                                     f"(fingerprint {card.fingerprint})")
    model = KeypointModel.from_checkpoint(state, map_location=device)
    return model.eval(), state


def read_checkpoint(path: str | Path, device="cpu") -> tuple[dict, str]:
    """(state, the model.pt it came from) of a ``model.pt`` or a checkpoint folder holding one, a path or an
    object-store URI, read with ``weights_only=True``."""
    import torch

    from pipeline.storage import is_uri

    if is_uri(path):
        return _load_remote(str(path), device), str(path)
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.exists():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    return torch.load(p, map_location=device, weights_only=True), str(p)


def _load_remote(uri: str, device):
    """``model.pt`` of a checkpoint at an object-store URI (the file itself or its folder)."""
    import io

    import pyarrow.fs
    import torch

    from pipeline.storage import filesystem

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        path = path + "/model.pt"
    try:
        with fs.open_input_file(path) as f:      # random-access file: one ranged GET of the whole object;
            data = f.read()                      # open_input_stream took 12 s instead of 0.2 s for 60 MB
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: checkpoint not found") from e
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def predict_arrays(model, images: np.ndarray, device="cpu", batch_size: int = 64) -> dict[str, np.ndarray]:
    """images uint8 [N, S, S, 3] → keypoints [N, K, 2] in those images' pixels, uncertainty [N, K], depth [N, K].

    A model trained at another resolution sees the images resized to its own (keypoints come back in S px)."""
    import torch

    from jobs.training import _to_batch
    from models.train_step import predict

    size = images.shape[1]
    out = {"keypoints": [], "uncertainty": [], "depth": []}
    for i in range(0, len(images), batch_size):
        x = _to_batch(torch.from_numpy(images[i:i + batch_size]), device, model.config.image_size)
        p = predict(model, x)
        out["keypoints"].append(((p["keypoints"].float().cpu().numpy() + 1) / 2 * size))
        out["uncertainty"].append(p["uncertainty"].float().cpu().numpy())
        out["depth"].append(p["depth"].float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def aligned_3d_error(pred_3d: np.ndarray, gt_3d: np.ndarray, norm: np.ndarray) -> float:
    """Mean 3D keypoint error after the best similarity alignment of each prediction to its ground truth, in %
    of the per-instance normaliser.  pred_3d, gt_3d: [N, K, 3]; norm: [N]."""
    import torch

    from models.geometry import apply_similarity, umeyama

    src, dst = torch.from_numpy(pred_3d).double(), torch.from_numpy(gt_3d).double()
    aligned = apply_similarity(src, *umeyama(src, dst)).numpy()
    return float((np.linalg.norm(aligned - gt_3d, axis=-1).mean(1) / norm * 100).mean())


def metric_name(spec, split: str = "test") -> str:
    """The MLflow name of a card metric on a split: "test/nme" or "test/pck_0.1"."""
    return f"{split}/{spec.kind}" + (f"_{spec.alpha:g}" if spec.kind == "pck" else "")


def other_metric(spec):
    """The card's metric of the other kind with the same normaliser: NME for a PCK card, PCK@0.1 for an NME card."""
    from dataclasses import replace

    return replace(spec, kind="pck", alpha=0.1) if spec.kind == "nme" else replace(spec, kind="nme")


def learning_curve_point(model, ds, split: str = "test", limit: int = CURVE_INSTANCES, device="cpu") -> dict:
    """The card's metric and the spread ratio on the first ``limit`` instances of ``split``, for the learning
    curve logged at every checkpoint: {"curve/<metric>": value, "curve/spread_ratio": value}."""
    from pipeline.prepared import rows_to_arrays

    arr = rows_to_arrays(ds.table(split).slice(0, limit).to_pylist(), ds.card.num_keypoints)
    pred = predict_arrays(model, arr["images"], device=device)["keypoints"]    # eval mode, then back
    return _curve_point(ds, split, pred, arr)


def _curve_point(ds, split: str, pred: np.ndarray, arr: dict) -> dict:
    """{"curve/<metric>", "curve/spread_ratio"} of predictions [N, K, 2] against ``arr``'s labels."""
    from models.metrics import score, spread_ratio

    spec = ds.card.metric
    value = score(spec, pred, arr["keypoints"], arr["visible"], image_size=ds.size)["value"]
    return {f"curve/{metric_name(spec, split).split('/', 1)[1]}": value,
            "curve/spread_ratio": spread_ratio(pred, arr["keypoints"], arr["visible"])}


def evaluate_model(model, ds, split: str = "test", device="cpu", max_figure: int = 8) -> dict:
    """Score ``model`` on ``split`` of a PreparedDataset with the card's metric.

    Returns {"metrics": flat dict for MLflow, "per_keypoint": {name: value}, "figure": uint8 image}.
    """
    from models.metrics import normaliser, score, spread_ratio

    arr = ds.arrays(split)
    if len(arr["id"]) == 0:
        raise ValueError(f"{ds.root}: split {split!r} is empty; nothing to evaluate")
    model.eval()
    pred = predict_arrays(model, arr["images"], device=device)
    spec = ds.card.metric
    s = score(spec, pred["keypoints"], arr["keypoints"], arr["visible"], image_size=ds.size)
    key = metric_name(spec, split)
    metrics = {key: s["value"], f"{split}/mean_error_px": s["mean_error_px"],
               f"{split}/median_error_px": s["median_error_px"]}
    other = other_metric(spec)                      # the paper's Table 7 reports the other metric of the same runs
    try:
        metrics[metric_name(other, split)] = score(
            other, pred["keypoints"], arr["keypoints"], arr["visible"], image_size=ds.size)["value"]
    except ValueError:                              # e.g. no instance with a non-zero normaliser
        pass
    metrics[f"{split}/spread_ratio"] = spread_ratio(pred["keypoints"], arr["keypoints"], arr["visible"])
    per_kp = {name: float(v) for name, v in zip(ds.card.keypoints, s["per_keypoint"])}
    for name, v in per_kp.items():
        if np.isfinite(v):
            metrics[f"{key}/{name}"] = v
    if np.isfinite(arr["keypoints_3d"]).all():
        norm = normaliser(spec, arr["keypoints"], arr["visible"], ds.size)
        norm = np.where(norm > 0, norm, ds.size)
        # predicted 3D keypoints (x, y in pixels, depth in the same normalised unit scaled to pixels)
        pred_3d = np.concatenate([pred["keypoints"], pred["depth"][..., None] * ds.size / 2], axis=-1)
        gt = arr["keypoints_3d"]
        metrics[f"{split}/aligned_3d_error"] = aligned_3d_error(pred_3d, gt, norm * _scale_3d(gt, arr["keypoints"]))
    n = min(max_figure, len(arr["id"]))
    figure = prediction_grid(arr["images"][:n], pred["keypoints"][:n], pred["uncertainty"][:n], ds.card.links,
                             gt=arr["keypoints"][:n], gt_visible=arr["visible"][:n])
    first = {k: arr[k][:CURVE_INSTANCES] for k in ("keypoints", "visible")}   # the learning curve's last point
    return {"metrics": metrics, "per_keypoint": per_kp, "figure": figure, "split": split,
            "instances": s["instances"], "curve": _curve_point(ds, split, pred["keypoints"][:CURVE_INSTANCES], first)}


def prediction_grid(images: np.ndarray, keypoints: np.ndarray, uncertainty: np.ndarray, links, gt: np.ndarray,
                    gt_visible: np.ndarray, scale: int = 2) -> np.ndarray:
    """A picture of predictions: ground truth in the top row, predictions below with links, and a ring per
    keypoint whose radius grows with its predicted uncertainty (1 px when certain, 7 px at uncertainty 1).
    images [N, S, S, 3]; keypoints, gt [N, K, 2] pixels; uncertainty [N, K] in (0, 1); gt_visible [N, K]."""
    from pipeline.draw import draw_keypoints, image_grid

    top = [draw_keypoints(im, g, v, links, scale=scale) for im, g, v in zip(images, gt, gt_visible)]
    bottom = [draw_keypoints(im, k, np.ones(len(k), bool), links, uncertainty=1 + 6 * u, scale=scale)
              for im, k, u in zip(images, keypoints, uncertainty)]
    return image_grid(top + bottom, columns=len(images))


def _scale_3d(gt_3d: np.ndarray, gt_2d: np.ndarray) -> np.ndarray:
    """Per-instance ratio of 3D to 2D extent, so the 2D normaliser applies to 3D errors. [N]."""
    e3 = np.linalg.norm(gt_3d[..., :2] - gt_3d[..., :2].mean(1, keepdims=True), axis=-1).mean(1)
    e2 = np.linalg.norm(gt_2d - gt_2d.mean(1, keepdims=True), axis=-1).mean(1)
    return np.where(e2 > 0, e3 / np.maximum(e2, 1e-9), 1.0)


def write_eval_artifacts(folder: str | Path, result: dict) -> None:
    """Write evaluation.json and predictions.png into ``folder`` (a checkpoint directory)."""
    from PIL import Image

    folder = Path(folder)
    (folder / EVAL_JSON).write_text(json.dumps(
        {"split": result["split"], "instances": result["instances"], "metrics": result["metrics"],
         "per_keypoint": result["per_keypoint"]}, indent=2, default=float))
    Image.fromarray(result["figure"]).save(folder / PREDICTIONS_PNG)
