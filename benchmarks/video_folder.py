"""A lab's folder of videos predicted week after week: `fskp predict --video FOLDER` three times, as a user runs
it -- on the folder, again after one new video was added, again with nothing new, and with --overwrite (every
video again: what each run cost before a run kept what it predicted) -- with the wall time of each run and what
it predicted (jobs/labeling/analysed.py keeps each predicted video beside its files).

Videos: ``--videos`` generated 640x480, 30 frames/s H.264 clips of ``--seconds`` each (benchmarks/video_speed.py's
``write_video``); the model: `fskp label`'s architecture with untrained weights, or ``--checkpoint``.  Prints
figures, asserts nothing.

    .venv/bin/python benchmarks/video_folder.py --videos 6 --seconds 10
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_speed import FPS, REPO, untrained_checkpoint, write_video  # noqa: E402


def predict(checkpoint: Path, folder: Path, out: Path, *extra: str) -> tuple[float, str]:
    """(wall seconds, output) of one `fskp predict --video FOLDER` in its own process."""
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "predict", "--checkpoint", str(checkpoint), "--video",
                          str(folder), "--out", str(out), "--no-overlay", *extra], cwd=REPO, capture_output=True,
                         text=True)
    if run.returncode:
        sys.exit(f"fskp predict failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return time.time() - t0, run.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=6, help="videos in the folder at first")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    p.add_argument("--checkpoint", help="model.pt to run (default: fskp label's architecture, untrained)")
    p.add_argument("--work", help="folder for the videos and outputs (default: a temporary folder)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fskp-video-folder-"))
    folder, out = work / "videos", work / "out"
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(args.seconds * FPS)
    for n in range(args.videos + 1):
        write_video(folder / f"trial{n:02d}.mp4", frames, seed=n)
    newest = folder / f"trial{args.videos:02d}.mp4"
    newest = newest.rename(work / newest.name)                      # added to the folder "next week"
    checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(work / "untrained.pt")
    print(f"{args.videos} videos of {frames} frames (640x480), then one more; {work}", flush=True)
    for what in ("the folder", "after one new video", "with nothing new", "all again (--overwrite)"):
        if what == "after one new video":
            newest.rename(folder / newest.name)
        took, said = predict(checkpoint, folder, out, *(["--overwrite"] if "overwrite" in what else []))
        kept = re.search(r"(\d+) of (\d+) video\(s\) already predicted", said)
        total = int(kept.group(2)) if kept else len(list(folder.glob("*.mp4")))
        predicted = total - (int(kept.group(1)) if kept else 0)
        print(f"{what:22s} {took:6.1f} s   {predicted} of {total} videos predicted "
              f"({predicted * frames / took:.1f} frames predicted a second, Ray start included)", flush=True)


if __name__ == "__main__":
    main()
