"""Reaching a few frames of a long video: ``pipeline.pool.read_frames`` (seeks to each) against decoding from
frame 0, as the suggestions' contact sheet and `fskp label --video`'s labeled-frame extraction did before.

    .venv/bin/python benchmarks/frame_seek.py VIDEO [--frames 20] [--decode 9000]

Picks ``--frames`` frame numbers spread at random (seed 0) over the video, times ``read_frames`` on them, then
times decoding the first ``--decode`` frames from frame 0 and gives how long that rate takes to reach the last
picked frame.  Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import av

    from models.precision import machine_summary
    from pipeline.pool import read_frames, video_length

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--decode", type=int, default=9000, help="frames decoded from frame 0 to measure its rate")
    args = p.parse_args()
    n = video_length(args.video)
    numbers = sorted(np.random.default_rng(0).choice(n, min(args.frames, n), replace=False).tolist())
    t0 = time.time()
    got = [i for i, _ in read_frames(args.video, numbers)]
    seek = time.time() - t0
    if got != numbers:
        raise SystemExit(f"{args.video}: read_frames gave {len(got)} of the {len(numbers)} frames asked for")
    t0, decoded = time.time(), 0
    with av.open(args.video) as c:
        for _ in c.decode(video=0):
            decoded += 1
            if decoded == args.decode:
                break
    rate = decoded / (time.time() - t0)
    print(f"{machine_summary()}\n{args.video}: {n} frames; read_frames on {len(numbers)} of them: {seek:.1f} s; "
          f"decoding from frame 0: {rate:.0f} frames/s, {numbers[-1] / rate:.0f} s to reach frame {numbers[-1]}")


if __name__ == "__main__":
    main()
