"""`fskp label` from inputs to outputs: shots, crop, training, prediction, scoring, files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jobs.labeling.inputs import LabelingInput, check_trainable, links_for_training
from jobs.labeling.outputs import write_outputs
from jobs.labeling.confidence import FILE_NAME as CALIBRATION_FILE
from jobs.labeling.confidence import fit_calibration
from jobs.labeling.scoring import (confidence_report, draw_reliability, held_out_report, print_held_out,
                                   right_keypoints)
from jobs.labeling.shots import choose_shots, prepare_dataset, shots_crop
from pipeline.atomic import write_text_atomic
from pipeline.prepared import DataError
from pipeline.suggest import check_rule


#: beside a checkpoint of a multi-animal DeepLabCut project: [[individual, body part], ...] per keypoint
INDIVIDUALS_FILE = "individuals.json"


@dataclass
class LabelResult:
    run_id: str
    checkpoint: str
    shots: list[str]
    held_out: dict | None
    outputs: dict[str, str]


def label(inp: LabelingInput, out: str | Path, *, shots: int | None = None, frames: Sequence[str] | None = None,
          crop: Sequence[float] | None = None, margin: float = 0.1, job_options: dict | None = None,
          overlay: bool = True, suggestions: int = 20, suggest_by: str = "coverage",
          predict_batch: int = 32, tta: bool = True) -> LabelResult:
    """Train on the shots, predict every frame, score the held-out frames, write every output to ``out``.
    tta: predict the images (not the videos) with test-time crops (``predict_and_write``)."""
    from jobs.training import TrainJob, run_training

    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    opts = dict(job_options or {})
    check_trainable(inp)
    check_rule(suggest_by)                     # refused before training, not after it
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

    if inp.individuals and Path(result.checkpoint_path).is_dir():     # fskp predict writes the same layout
        write_text_atomic(Path(result.checkpoint_path) / INDIVIDUALS_FILE, json.dumps(inp.individuals))
    report, outputs = predict_and_write(inp, out, result.checkpoint_path, train, held, crop, gpu=job.gpu,
                                        overlay=overlay, suggestions=suggestions, suggest_by=suggest_by,
                                        predict_batch=predict_batch, tta=tta)
    summary = {"run_id": result.run_id, "checkpoint": result.checkpoint_path, "card": inp.card.name,
               "keypoints": list(inp.card.keypoints),
               "links": [[inp.card.keypoints[a], inp.card.keypoints[b]] for a, b in inp.card.links],
               "crop_box": list(crop), "size": size,
               "shots": [inp.relative(i.source) for i in train], "held_out": report, "outputs": outputs,
               "init_from": job.init_from, "suggest_by": suggest_by,
               "test_time_crops": tta}
    _log_to_run(job, result.run_id, report, out, crop, tta)
    write_text_atomic(out / "label.json", json.dumps(summary, indent=2))     # written last: the job finished
    return LabelResult(result.run_id, result.checkpoint_path, shot_ids, report, outputs)


def predict_and_write(inp: LabelingInput, out: Path, checkpoint: str, train: list, held: list, crop, *,
                      gpu: bool = False, overlay: bool = True, suggestions: int = 20, suggest_by: str = "coverage",
                      predict_batch: int = 32, tta: bool = True) -> tuple[dict | None, dict[str, str]]:
    """Everything after training: predict every frame with ``checkpoint``, score the held-out frames and fit
    the likelihood's calibration on them, write every output to ``out``.  (held-out report or None, outputs).
    tta: the images (labeled and unlabeled) predicted with test-time crops (jobs.inference.predict_frames_tta:
    7 passes, each keypoint the median), the videos' frames once (7 passes over a long video would cost 7x)."""
    from jobs.inference import predict_frames, predict_frames_tta

    images = [i.source for i in inp.labeled] + [str(p) for p in inp.unlabeled]
    videos = [str(v) for v in inp.videos]
    print(f"predicting every frame{' (images with test-time crops: 7 passes)' if tta else ''} ...", flush=True)
    if tta:
        preds, passes = predict_frames_tta(checkpoint, images, crop, batch_size=predict_batch, gpu=gpu)
        one_crop = passes[0]
    else:
        preds = one_crop = predict_frames(checkpoint, images, crop, batch_size=predict_batch, gpu=gpu)
    if videos:
        from_videos = predict_frames(checkpoint, videos, crop, batch_size=predict_batch, gpu=gpu)
        preds, one_crop = preds.concat(from_videos), one_crop.concat(from_videos)

    report, calibration = None, None
    if held:
        report, calibration = score_held_out(inp, preds, held, train, out, one_crop=one_crop if tta else None)
    else:                                      # an earlier run's into the same folder would read as this one's
        for stale in ("held_out.json", "reliability.png"):
            (out / stale).unlink(missing_ok=True)
    if calibration is not None:
        calibration.save(out / CALIBRATION_FILE)
        if Path(checkpoint).is_dir():          # `fskp predict` with this checkpoint finds it there
            calibration.save(Path(checkpoint) / CALIBRATION_FILE)
        print(calibration.describe(), flush=True)
    else:
        (out / CALIBRATION_FILE).unlink(missing_ok=True)        # an earlier run's would read as this one's
        print("likelihood: the model's own certainty, not calibrated -- "
              + ("too few held-out keypoints, or none wrong, to fit on" if held else
                 "no held-out frames to fit on (train on some labeled frames only, e.g. --shots 10, and the "
                 "others calibrate it)"), flush=True)
    outputs = write_outputs(inp, preds, out, overlay=overlay, exclude={str(Path(i.source)) for i in train},
                            labeled_ids=[str(Path(i.source)) for i in train], n_suggestions=suggestions,
                            suggest_by=suggest_by,
                            calibration=calibration)
    return report, outputs


def score_held_out(inp: LabelingInput, preds, held: list, train: list, out: Path, one_crop=None):
    """(report, calibration): the held-out frames' error (``held_out_report``), the likelihood calibration
    fitted on them (jobs/labeling/confidence.py; None when it cannot be fitted) and how far the likelihood
    the outputs carry can be trusted -- judged on out-of-fold likelihoods, never on a frame the calibration
    saw.  one_crop: the same frames predicted from the crop alone when ``preds`` used test-time crops, scored
    as report["one_crop"].  Writes held_out.json and reliability.png to ``out``."""
    at = preds.index()
    rows = [at[str(Path(i.source))] for i in held]
    gt, visible = np.stack([i.keypoints for i in held]), np.stack([i.visible for i in held])
    pred = preds.keypoints[rows]
    report = held_out_report(inp.card, pred, gt, visible, [inp.relative(i.source) for i in held])
    if one_crop is not None:
        alone = held_out_report(inp.card, one_crop.keypoints[[one_crop.index()[str(Path(i.source))] for i in held]],
                                gt, visible)
        report["one_crop"] = {k: alone[k] for k in ("mean_error_px", "median_error_px", "pck")}
    right, scored = right_keypoints(pred, gt, visible)
    reference = preds.embedding[[at[str(Path(i.source))] for i in train]]
    calibration, out_of_fold = fit_calibration(preds.uncertainty[rows], preds.embedding[rows], reference,
                                               right, scored, None if preds.spread is None else preds.spread[rows])
    certainty = 1.0 - preds.uncertainty[rows]
    report["confidence"] = confidence_report(certainty if out_of_fold is None else out_of_fold, pred, gt, visible)
    report["confidence"]["likelihood"] = "uncalibrated certainty sigmoid(v)" if calibration is None else \
        "calibrated on the held-out frames (out-of-fold: each frame scored by a fit that did not see it)"
    report["confidence"]["auroc_uncalibrated"] = confidence_report(certainty, pred, gt, visible)[
        "auroc_likelihood_right"]
    draw_reliability(report["confidence"], out / "reliability.png", f"{len(held)} held-out frames, "
                     + ("likelihood uncalibrated" if calibration is None else "calibrated, out-of-fold"))
    write_text_atomic(out / "held_out.json", json.dumps(report, indent=2))
    print_held_out(report)
    return report, calibration


def _log_to_run(job, run_id: str, report: dict | None, out: Path, crop, tta: bool) -> None:
    from mlflow.tracking import MlflowClient

    from jobs.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(job.tracking_uri))
    client.set_tag(run_id, "crop_box", json.dumps([round(c, 3) for c in crop]))
    client.set_tag(run_id, "fskp.job", "label")
    client.set_tag(run_id, "test_time_crops", str(tta))
    if report:
        metrics = {"held_out/mean_error_px": report["mean_error_px"], "held_out/median_error_px":
                   report["median_error_px"], "held_out/pck": report["pck"]}
        metrics.update({f"held_out/px/{k}": v for k, v in report["per_bodypart_px"].items() if np.isfinite(v)})
        metrics.update({f"held_out/one_crop/{k}": v for k, v in report.get("one_crop", {}).items()})
        for name, key in (("auroc_likelihood", "auroc_likelihood_right"), ("auroc_uncalibrated", "auroc_uncalibrated")):
            if report["confidence"][key] is not None:
                metrics[f"held_out/{name}"] = report["confidence"][key]
        for k, v in metrics.items():
            client.log_metric(run_id, k, float(v))
        client.log_artifact(run_id, str(out / "held_out.json"))
    for name in ("shots.txt", "suggestions.csv", "suggestions.png", "reliability.png", CALIBRATION_FILE):
        if (out / name).exists():
            client.log_artifact(run_id, str(out / name))


