"""Predict keypoints on images or videos with a trained model, with Ray Data (streamed; any length).

The crop is the one the model was trained with (the MLflow run's crop_box tag, written by fskp label),
or --crop, or each frame's centred square.  Writes predictions/<folder or video>.csv (DeepLabCut x, y,
likelihood), predictions/keypoints_coco.json, overlay/ and suggestions, as fskp label does; with the lab
extra also DeepLabCut's HDF5 files (predictions/<video>DLC_fskp_fskp.h5, predictions/labeled-data/<folder>/
machinelabels-iter0.h5) and an NWB file (ndx-pose) per folder or video (predictions/<name>.nwb).  Last,
predict.json: what was predicted and kept, the frames, the time taken and every file written; a run that did not
finish leaves none (a scheduled job checks for it).

Videos (files or folders of them) are predicted a group at a time, each video's files written as its group
finishes; a video the output folder already holds with the same checkpoint and settings is kept, not predicted
again (jobs/labeling/analysed.py): a folder that gains videos every week is predicted anew only for the new
ones, and a run stopped part way keeps the videos it finished.  The COCO JSON and the suggestions cover all the videos.

  fskp predict --run RUN_ID --video session2.mp4 --out out/session2
  fskp predict --run RUN_ID --video videos/ --out out/videos          # again next week: only the new videos
  fskp predict --checkpoint out/reaching/runs/.../checkpoint_000001 --images frames/ --out out/frames
"""
from __future__ import annotations

#: what a finished run leaves in --out, written last (a run that did not finish has none)
SUMMARY_FILE = "predict.json"
HELP = "predict keypoints on image folders or videos with a trained model (Ray Data batch inference)"


def register(p):
    from jobs.commands.label import add_suggestion_options

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id (its checkpoint and crop)")
    src.add_argument("--checkpoint", help="checkpoint folder or model.pt")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="folder of images")
    what.add_argument("--video", nargs="+", help="video file(s) or folder(s) of videos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--crop", help="crop x0,y0,x1,y1 in frame pixels (default: the run's crop)")
    p.add_argument("--pcutoff", type=float, default=0.6, help="likelihood under which a keypoint counts as not "
                                                              "visible in COCO and overlays (default 0.6)")
    p.add_argument("--frame-step", type=int, default=1, help="predict every n-th video frame")
    p.add_argument("--batch-size", type=int, help="frames per model call (default 128 on a GPU, 32 on a CPU)")
    p.add_argument("--actors", type=int, help="model replicas (Ray Data actors; default: one per GPU, or one per 4 cores "
                                              "of each node after Ray Data's share)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--tta", action="store_true",
                   help="test-time crops: predict every frame in 7 crops (the crop moved by 4 %% and scaled by 0.9 "
                        "and 1.1), each keypoint their median -- what fskp label does for images; 7x the time")
    add_suggestion_options(p)
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every video again, also those --out holds with this checkpoint and settings")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from jobs.commands.label import parse_crop
    from jobs.inference import predict_frames, predict_frames_tta
    from jobs.labeling.confidence import FILE_NAME as CALIBRATION_FILE
    from jobs.labeling.confidence import find_calibration
    from jobs.labeling.job import INDIVIDUALS_FILE
    from jobs.labeling.outputs import write_outputs
    from pipeline.atomic import folder_lock, write_text_atomic
    from pipeline.converters.coco import card_from_keypoints

    ckpt, crop = args.checkpoint, parse_crop(args.crop)
    if args.run:
        import mlflow

        from jobs.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
        tags = mlflow.get_run(args.run).data.tags
        ckpt = tags.get("checkpoint_path")
        if not ckpt:
            raise ValueError(f"MLflow run {args.run} has no checkpoint_path tag (did it finish?)")
        if crop is None and tags.get("crop_box"):
            crop = tuple(json.loads(tags["crop_box"]))
    if args.tta and crop is None:
        raise ValueError("--tta needs a crop: --crop x0,y0,x1,y1, or --run of a fskp label run (its crop)")
    path = Path(ckpt) / "model.pt" if Path(ckpt).is_dir() else Path(ckpt)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    names = state.get("keypoint_names") or [f"kp{i}" for i in range(state["num_keypoints"])]
    card = card_from_keypoints(state["card_name"], "keypoints of the trained model", names,
                               [tuple(link) for link in state["config"]["links"]], origin=str(path))
    calibration = find_calibration(path)
    print(f"{calibration.describe()} (fskp label, {path.parent / CALIBRATION_FILE})" if calibration else
          "likelihood: the model's own certainty, not calibrated (the checkpoint has no confidence.npz: fskp label "
          "writes one when some labeled frames are held out)", flush=True)
    if calibration and calibration.uses_spread and not args.tta:
        print("  (without --tta the likelihood has no test-time-crop spread to go on: its fit on certainty and "
              "novelty alone is used)", flush=True)
    from jobs.labeling.analysed import prediction_settings, video_files

    videos = video_files(args.video) if args.video else []        # a bad path is refused before Ray starts
    options = dict(batch_size=args.batch_size, actors=args.actors, gpu=args.gpu, frame_step=args.frame_step)

    def predict(sources):
        return predict_frames_tta(ckpt, sources, crop, **options)[0] if args.tta else \
            predict_frames(ckpt, sources, crop, **options)
    out = Path(args.out)
    root = Path(args.images) if args.images else None

    def relative(p):
        try:
            return Path(p).resolve().relative_to(root.resolve()).as_posix() if root else Path(p).as_posix()
        except ValueError:
            return Path(p).as_posix()
    beside = path.parent / INDIVIDUALS_FILE              # a multi-animal DeepLabCut project's label run
    individuals = [tuple(pair) for pair in json.loads(beside.read_text())] if beside.exists() else None

    def write(preds, **parts):
        return write_outputs(card, preds, out, overlay=not args.no_overlay, n_suggestions=args.suggestions,
                             suggest_by=args.suggest_by, pcutoff=args.pcutoff, relative=relative,
                             calibration=calibration, individuals=individuals, **parts)
    started = time.time()
    with folder_lock(out, "fskp predict"):        # one run at a time into --out: another is refused
        (out / SUMMARY_FILE).unlink(missing_ok=True)                      # until this run has finished
        if videos:
            calibration_file = path.parent / CALIBRATION_FILE if calibration else None
            settings = prediction_settings(path, calibration_file, crop, args.frame_step, args.tta, args.pcutoff,
                                           not args.no_overlay)
            preds, outputs, kept = predict_videos(videos, out, settings, predict, write, args.frame_step,
                                                  args.overwrite)
            inputs = {"videos_predicted": [str(v) for v in videos if v not in kept],
                      "videos_kept": [str(v) for v in kept]}
        else:
            preds = predict([args.images])
            outputs = write(preds)
            inputs = {"images": str(args.images)}
        summary = {"checkpoint": str(path), "crop": list(crop) if crop else None, **inputs,
                   "frames": int(preds.ok.sum()), "unreadable": int((~preds.ok).sum()),
                   "likelihood": calibration.describe() if calibration else "uncalibrated certainty",
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                   "wall_s": round(time.time() - started, 1), "outputs": outputs}
        write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2))      # written last: the run finished
    print(f"predicted {summary['frames']} frames ({summary['unreadable']} unreadable)")
    for name, p in sorted(outputs.items()):
        print(f"  {name:28s} {p}")
    return 0


def predict_videos(videos, out, settings: dict, predict, write, frame_step: int = 1, overwrite: bool = False):
    """(the predictions of all ``videos``, every file written for them, the videos kept from an earlier run): the
    videos predicted a group at a time (``video_groups``), each video's files written (``write(preds,
    joint=False)``) and kept as its group finishes, unless ``out`` holds it with these ``settings`` already
    (``kept_files``; ``overwrite``: predict every one); then the files of all frames together."""
    import sys

    from jobs.labeling.analysed import combined_predictions, keep_predictions, kept_files, split_by_video, \
        video_groups

    done: dict = {}                                       # video -> its files
    again: dict[str, list[str]] = {}                      # why a video is predicted again -> its videos
    for video in videos:
        files, why = (None, "") if overwrite else kept_files(out, video, settings)
        if files is not None:
            done[video] = files
        elif why:
            again.setdefault(why, []).append(video.name)
    for why, names in again.items():
        print(f"predicting again {', '.join(names)}: {why}", flush=True)
    kept = list(done)                                     # what an earlier run predicted, in the order given
    todo = [v for v in videos if v not in done]
    if done:
        print(f"{len(done)} of {len(videos)} video(s) already predicted in {out} with this checkpoint and these "
              f"settings, kept: {_some(list(done), 5)} (--overwrite predicts them again)", flush=True)
    groups = video_groups(todo, frame_step)
    for n, group in enumerate(groups, 1):
        names = _some(group, 3)
        if len(videos) > 1:
            print(f"videos {n}/{len(groups)}: {names}", flush=True)
        try:
            predicted = split_by_video(predict(group))
            for video in group:
                if str(video) not in predicted:
                    print(f"{video}: no frame could be decoded; nothing written for it", flush=True)
                    continue
                preds = predicted[str(video)]
                files = write(preds, joint=False)
                keep_predictions(out, video, settings, preds, files)
                done[video] = files
        except BaseException:
            if done:
                print(f"stopped at {names}: {len(done)} of the {len(videos)} videos are predicted in {out} and kept; "
                      f"the same command goes on with the rest", file=sys.stderr, flush=True)
            raise
    if not done:
        raise ValueError(f"{', '.join(map(str, videos))}: no frame could be decoded")
    finished = [v for v in videos if v in done]          # in the order given: sorted paths
    combined = combined_predictions(out, finished)
    outputs = {name: path for video in finished for name, path in done[video].items()}
    outputs.update(write(combined, per_source=False))
    return combined, outputs, kept


def _some(videos, most: int) -> str:
    """The first ``most`` videos' names, and how many more."""
    names = ", ".join(v.name for v in videos[:most])
    return names + (f" and {len(videos) - most} more" if len(videos) > most else "")
