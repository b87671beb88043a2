"""Does labeling the suggested frames help more than labeling random ones?  The refine loop on dlc-reaching.

Round 1 is `fskp label` on the reference's 10 frames (benchmarks/dlc_reaching.py).  Its user would now label the
frames it suggests; here their labels exist already, so round 2 trains on the 10 frames plus the first ``--add``
suggested frames, and a control round on the 10 frames plus ``--add`` frames drawn at random (seed 0) from the same
45 held-out frames.  All three are scored on the held-out frames that none of them trained on, with the README's
rule (benchmarks/dlc_reaching.py).  A round whose `label.json` exists in ``--out`` is read, not trained again.

  python benchmarks/refine_loop.py                       # the README's numbers (three `fskp label` runs)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dlc_reaching import FRAMES, suggested_frames, truth_and_predictions
from models.precision import machine_summary


def main() -> None:
    from jobs.commands.label import LABEL_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dlc-reaching"))
    p.add_argument("--add", type=int, default=5, help="frames labeled in round 2")
    p.add_argument("--variant", default="full")
    p.add_argument("--iterations", type=int, default=LABEL_DEFAULTS["iterations"])
    p.add_argument("--threads", type=int, help="torch threads (default: fskp label's, the CPUs Ray gives the worker)")
    p.add_argument("--out", default="benchmarks/out/refine_loop")
    args = p.parse_args()

    from jobs.labeling.inputs import read_dlc_project
    from jobs.labeling.job import label
    from jobs.labeling.scoring import held_out_report

    project, out = Path(args.project), Path(args.out).resolve()
    inp = read_dlc_project(project)
    options = dict(LABEL_DEFAULTS, iterations=args.iterations, threads=args.threads, variant=args.variant,
                   unlabeled_batch=4, experiment="refine-loop", tracking_uri=f"sqlite:///{out}/mlflow.db")
    first = FRAMES.split(",")

    def run(name: str, frames: list[str]) -> dict:
        where = out / name
        if not (where / "label.json").exists():
            t0 = time.time()
            label(inp, where, frames=frames, margin=0.1, job_options=options, overlay=False, suggestions=20)
            (where / "minutes.txt").write_text(f"{(time.time() - t0) / 60:.1f}\n")
        return {"name": name, "frames": frames, "out": where,
                "minutes": float((where / "minutes.txt").read_text()) if (where / "minutes.txt").exists() else None}

    rounds = [run("round1", first)]
    suggested = [Path(i).name for i in suggested_frames(out / "round1", args.add)]   # stems, as FRAMES
    held = sorted({Path(i.id).name for i in inp.labeled} - set(first))
    drawn = [str(f) for f in np.random.default_rng(0).choice(held, size=args.add, replace=False)]
    rounds += [run("round2-suggested", first + suggested), run("round2-random", first + drawn)]

    scored = sorted(set(held) - set(suggested) - set(drawn))
    print(f"\nrefine loop on dlc-reaching ({args.variant}, {args.iterations} iterations, threads {args.threads or 'auto'}, "
          f"{machine_summary()}); scored on the {len(scored)} held-out frames no round "
          f"trained on")
    print(f"suggested by round 1: {', '.join(suggested)}; drawn at random: {', '.join(drawn)}")
    print("| round | training frames | mean error | median | PCK | time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    results = {}
    for r in rounds:
        truth, pred = truth_and_predictions(project, r["out"])
        ids = [i for i in truth if Path(i).name in scored and truth[i].visible.any()]
        rep = held_out_report(inp.card, np.stack([pred[i].keypoints for i in ids]),
                              np.stack([truth[i].keypoints for i in ids]), np.stack([truth[i].visible for i in ids]))
        results[r["name"]] = {k: rep[k] for k in ("frames", "keypoints", "mean_error_px", "median_error_px", "pck")}
        took = f"{r['minutes']:.0f} min" if r["minutes"] is not None else "?"
        print(f"| {r['name']} | {len(r['frames'])} | {rep['mean_error_px']:.1f} px | {rep['median_error_px']:.1f} px "
              f"| {rep['pck']:.1f} % | {took} |")
    (out / "refine_loop.json").write_text(json.dumps({"suggested": suggested, "random": drawn, "scored": scored,
                                                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
