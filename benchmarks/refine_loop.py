"""Does labeling the suggested frames help more than labeling random ones?  The refine loop on dlc-reaching.

Round 1 is `fskp label` on the reference's 10 frames (benchmarks/dlc_reaching.py).  Its user would now label the
frames it suggests; here their labels exist already, so round 2 trains on the 10 frames plus the first ``--add``
suggested frames, and a control round on the 10 frames plus ``--add`` frames drawn at random (seed 0) from the same
45 held-out frames.  All three are scored on the held-out frames that none of them trained on, with the README's
rule (benchmarks/dlc_reaching.py).  A round whose `label.json` exists in ``--out`` is read, not trained again.

  python benchmarks/refine_loop.py                       # the README's numbers (three `fskp label` runs)
  python benchmarks/refine_loop.py --draw 2 --round1 benchmarks/out/dlc_reaching_draw2/full \
      --out benchmarks/out/refine_loop_draw2             # round 1 on a drawn frame set, an earlier run reused

``--warm`` starts each round 2 from round 1's weights (`fskp label --init-from ROUND1`) for
``--round2-iterations`` iterations, instead of from the pretrained backbone for ``--iterations``:

  python benchmarks/refine_loop.py --draw 1 --round1 benchmarks/out/refine_loop_draw1/round1 --warm \
      --round2-iterations 300 --threads 1 --out benchmarks/out/refine_loop_draw1_warm

``--suggest-by`` picks the rule (pipeline/suggest.py; default coverage); ``--reuse DIR`` takes round 1 and the
random round from an earlier ``--out`` of the same frame set, so two rules are compared on the same models:

  python benchmarks/refine_loop.py --variant supervised --suggest-by outliers --out benchmarks/out/rl_sup_outliers_ref
  python benchmarks/refine_loop.py --variant supervised --reuse benchmarks/out/rl_sup_outliers_ref \
      --out benchmarks/out/rl_sup_coverage_ref

``--draw SEED`` starts from the 10 frames benchmarks/dlc_reaching.py --draw SEED trains on; ``--round1 DIR``
reads round 1 from a finished `fskp label` output folder with those frames instead of training it again (a
folder made before the likelihood was calibrated is predicted again with its checkpoint, not retrained).
``--random-draws N`` trains N control rounds on frames drawn with seeds 0 .. N-1 (one draw is the largest noise
in this comparison); each is compared with the suggested round on the frames neither trained on, and
``--summarize`` averages a set's draws before taking mean ± std over the sets:

  python benchmarks/refine_loop.py --variant supervised --draw 1 --random-draws 3 --out benchmarks/out/rl_draw1_x3

Also printed: how each round 2 changed the error on round 1's own training frames (a refine round should
not make a frame labeled earlier worse).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dlc_reaching import FRAMES, drawn_frames, frame_error, suggested_frames, truth_and_predictions
from models.precision import machine_summary
from pipeline.suggest import RULES


def main() -> None:
    from jobs.commands.label import LABEL_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dlc-reaching"))
    p.add_argument("--add", type=int, default=5, help="frames labeled in round 2")
    p.add_argument("--variant", default="full")
    p.add_argument("--iterations", type=int, default=LABEL_DEFAULTS["iterations"])
    p.add_argument("--threads", type=int, help="torch threads (default: fskp label's, the CPUs Ray gives the worker)")
    p.add_argument("--heatmap-target", type=float, default=LABEL_DEFAULTS["heatmap_target"],
                   help="fskp label --heatmap-target (0: off, as before 2026-12-06)")
    p.add_argument("--out", default="benchmarks/out/refine_loop")
    p.add_argument("--draw", type=int, help="round 1 on the 10 frames of benchmarks/dlc_reaching.py --draw SEED")
    p.add_argument("--round1", help="a finished fskp label output folder to read round 1 from")
    p.add_argument("--warm", action="store_true", help="round 2 continues from round 1's weights (--init-from)")
    p.add_argument("--round2-iterations", type=int, help="round 2's iterations (default: --iterations)")
    p.add_argument("--suggest-by", choices=RULES, default=RULES[0], help="the suggestion rule (pipeline/suggest.py)")
    p.add_argument("--reuse", help="an earlier --out of the same frame set: its round 1 (re-predicted when its "
                                   "suggestions came from another rule) and its random round are reused")
    p.add_argument("--random-draws", type=int, default=1,
                   help="control rounds, each on --add frames drawn with numpy seed 0, 1, ...: each is compared with "
                        "the suggested round on the frames neither trained on, and the comparisons averaged")
    p.add_argument("--summarize", nargs="+", metavar="OUT", help="only print the table over finished --out "
                                                                 "folders (one per frame set), mean ± std")
    args = p.parse_args()
    if args.summarize:
        summarize([Path(d) for d in args.summarize])
        return

    from jobs.commands.train import resolve_init
    from jobs.labeling.inputs import read_dlc_project
    from jobs.labeling.job import label

    project, out = Path(args.project), Path(args.out).resolve()
    inp = read_dlc_project(project)
    options = dict(LABEL_DEFAULTS, iterations=args.iterations, threads=args.threads, variant=args.variant,
                   heatmap_target=args.heatmap_target, unlabeled_batch=4, experiment="refine-loop",
                   tracking_uri=f"sqlite:///{out}/mlflow.db")
    first = FRAMES.split(",") if args.draw is None else [Path(f).name for f in drawn_frames(inp, args.draw)]
    round1 = args.round1 or (args.reuse and str(Path(args.reuse) / "round1"))
    if round1 and not (out / "round1").exists():
        trained = {Path(line).stem for line in (Path(round1) / "shots.txt").read_text().split()}
        if trained != set(first):
            raise SystemExit(f"round 1 {round1} trained on {sorted(trained)}, not on {sorted(first)}")
        out.mkdir(parents=True, exist_ok=True)
        ranked_by = json.loads((Path(round1) / "label.json").read_text()).get("suggest_by", "outliers")
        if (Path(round1) / "confidence.npz").exists() and ranked_by == args.suggest_by:
            (out / "round1").symlink_to(Path(round1).resolve(), target_is_directory=True)
        else:
            refinish(inp, Path(round1), out / "round1", args.suggest_by)

    def run(name: str, frames: list[str]) -> dict:
        where = out / name
        if not (where / "label.json").exists():
            t0 = time.time()
            job_options = options if name == "round1" else dict(
                options, iterations=args.round2_iterations or args.iterations,
                init_from=resolve_init(str(out / "round1")) if args.warm else None)
            label(inp, where, frames=frames, margin=0.1, job_options=job_options, overlay=False, suggestions=20,
                  suggest_by=args.suggest_by)
            (where / "minutes.txt").write_text(f"{(time.time() - t0) / 60:.1f}\n")
        return {"name": name, "frames": frames, "out": where,
                "minutes": float((where / "minutes.txt").read_text()) if (where / "minutes.txt").exists() else None}

    rounds = [run("round1", first)]
    suggested = [Path(i).name for i in suggested_frames(out / "round1", args.add)]   # stems, as FRAMES
    held = sorted({Path(i.id).name for i in inp.labeled} - set(first))
    draws = [random_frames(held, args.add, seed) for seed in range(args.random_draws)]
    for seed, drawn in enumerate(draws):
        name = random_round(seed)
        earlier = Path(args.reuse or "", name)
        if args.reuse and (earlier / "label.json").exists() and not (out / name).exists():
            trained = {Path(line).stem for line in (earlier / "shots.txt").read_text().split()}
            if trained != set(first + drawn):
                raise SystemExit(f"{earlier} trained on {sorted(trained)}, not on {sorted(first + drawn)}")
            (out / name).symlink_to(earlier.resolve(), target_is_directory=True)
    rounds += [run("round2-suggested", first + suggested)]
    rounds += [run(random_round(seed), first + drawn) for seed, drawn in enumerate(draws)]

    round2 = (f"; round 2 {'from round 1' + chr(39) + 's weights' if args.warm else 'from scratch'}, "
              f"{args.round2_iterations or args.iterations} iterations")
    print(f"\nrefine loop on dlc-reaching ({args.variant}, {args.iterations} iterations{round2}, threads {args.threads or 'auto'}, "
          f"suggested by {args.suggest_by}, {machine_summary()}); each random round against the suggested one on "
          f"the held-out frames neither trained on")
    print(f"suggested by round 1: {', '.join(suggested)}")
    by_name = {r["name"]: r for r in rounds}
    compared = []
    for seed, drawn in enumerate(draws):
        scored = sorted(set(held) - set(suggested) - set(drawn))
        print(f"\nrandom draw {seed}: {', '.join(drawn)}; {len(scored)} frames scored")
        print("| round | training frames | mean error | median | PCK | time |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        results = {}
        for key, r in (("round1", by_name["round1"]), ("round2-suggested", by_name["round2-suggested"]),
                       ("round2-random", by_name[random_round(seed)])):
            rep = score_round(project, inp.card, r["out"], scored)
            results[key] = rep
            took = f"{r['minutes']:.0f} min" if r["minutes"] is not None else "?"
            print(f"| {r['name']} | {len(r['frames'])} | {rep['mean_error_px']:.1f} px | {rep['median_error_px']:.1f} "
                  f"px | {rep['pck']:.1f} % | {took} |")
        compared.append({"random": drawn, "scored": scored, "results": results})
    earlier = earlier_frames_check(project, rounds)
    for name, (worse, worst, n) in earlier.items():
        print(f"{name}: on round 1's {n} training frames, {worse} got worse than in round 1 by more than 5 px "
              f"(largest change {worst:+.1f} px)")
    (out / "refine_loop.json").write_text(json.dumps({"suggest_by": args.suggest_by, "variant": args.variant,
                                                      "suggested": suggested, **compared[0], "draws": compared,
                                                      "round1_frames": earlier}, indent=2))


def random_round(seed: int) -> str:
    """The output folder of the control round drawn with ``seed`` (seed 0 keeps the name of the one-draw runs)."""
    return "round2-random" if seed == 0 else f"round2-random-seed{seed}"


def random_frames(held: list[str], n: int, seed: int) -> list[str]:
    """``n`` of the ``held`` frame names, drawn without replacement with numpy seed ``seed``."""
    return [str(f) for f in np.random.default_rng(seed).choice(held, size=n, replace=False)]


def score_round(project: Path, card, out: Path, scored: list[str]) -> dict:
    """A round's frames, mean / median error and PCK on the ``scored`` frame names (the README's rule)."""
    from jobs.labeling.scoring import held_out_report

    truth, pred = truth_and_predictions(project, out)
    ids = [i for i in truth if Path(i).name in scored and truth[i].visible.any()]
    rep = held_out_report(card, np.stack([pred[i].keypoints for i in ids]), np.stack([truth[i].keypoints for i in ids]),
                          np.stack([truth[i].visible for i in ids]))
    return {k: rep[k] for k in ("frames", "keypoints", "mean_error_px", "median_error_px", "pck")}


def summarize(folders: list[Path]) -> None:
    """The refine loop over frame sets: each folder's refine_loop.json, then mean ± std over the sets of each
    round and of the paired difference suggested - random (negative error, positive PCK: suggestions better).
    A set with several random draws contributes, per column, the mean over its draws (each draw scored with the
    suggested round on the frames neither trained on)."""
    metrics = (("mean_error_px", "px"), ("median_error_px", "px"), ("pck", "%"))
    runs = [(f.name, json.loads((f / "refine_loop.json").read_text())) for f in folders]
    print("| frame set | random draws | scored frames | round 1: mean / median / PCK | + 5 suggested | + 5 random | "
          "suggested − random |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {"round1": [], "round2-suggested": [], "round2-random": [], "difference": []}
    for name, run in runs:
        draws = run.get("draws", [run])                     # runs from before --random-draws: one draw
        per_draw = {key: np.array([[d["results"][key][m] for m, _ in metrics] for d in draws])
                    for key in ("round1", "round2-suggested", "round2-random")}
        for key, values in per_draw.items():
            rows[key].append(values.mean(axis=0))
        rows["difference"].append((per_draw["round2-suggested"] - per_draw["round2-random"]).mean(axis=0))
        cells = [" / ".join(f"{v:.1f}" for v in rows[key][-1]) for key in rows]
        scored = "–".join(sorted({str(len(d["scored"])) for d in draws}))
        print(f"| {name} | {len(draws)} | {scored} | " + " | ".join(cells) + " |")
    stats = {k: (np.mean(v, axis=0), np.std(v, axis=0, ddof=1) if len(v) > 1 else np.zeros(3)) for k, v in rows.items()}
    print(f"| mean ± std over {len(runs)} | | | " + " | ".join(
        " / ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(*stats[k])) for k in rows) + " |")
    better = sum(d[0] < 0 for d in rows["difference"])
    print(f"suggested frames lowered the mean error more than random ones in {better} of {len(runs)} frame sets; "
          f"paired difference {stats['difference'][0][0]:+.1f} ± {stats['difference'][1][0]:.1f} px")
    for name, run in runs:
        for r, (worse, worst, n) in run["round1_frames"].items():
            print(f"{name} {r}: {worse} of round 1's {n} frames worse by > 5 px (largest change {worst:+.1f} px)")


def refinish(inp, finished: Path, where: Path, suggest_by: str) -> None:
    """Round 1 from a `fskp label` run whose outputs predate the calibrated likelihood (no confidence.npz) or
    whose suggestions came from another rule: its checkpoint predicts every frame again and today's scoring,
    calibration and ``suggest_by``'s suggestions are written to ``where`` (jobs/labeling/job.py
    predict_and_write).  The model is not trained again."""
    import shutil

    from jobs.labeling.inputs import links_for_training
    from jobs.labeling.job import predict_and_write
    from pipeline.atomic import write_text_atomic

    summary = json.loads((finished / "label.json").read_text())
    trained = {Path(line).stem for line in (finished / "shots.txt").read_text().split()}
    train = [i for i in inp.labeled if Path(i.id).name in trained]
    held = [i for i in inp.labeled if Path(i.id).name not in trained]
    tmp = where.with_name(where.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(finished / "shots.txt", tmp / "shots.txt")
    print(f"round 1: predicting again with the checkpoint of {finished} (suggestions by {suggest_by})")
    report, outputs = predict_and_write(links_for_training(inp, train), tmp, summary["checkpoint"], train, held,
                                        summary["crop_box"], overlay=False, suggestions=20, suggest_by=suggest_by)
    if (finished / "minutes.txt").exists():
        shutil.copy(finished / "minutes.txt", tmp / "minutes.txt")
    elif (finished / "benchmark.json").exists():
        minutes = json.loads((finished / "benchmark.json").read_text())["minutes"]
        (tmp / "minutes.txt").write_text(f"{minutes:.1f}\n")
    summary.update(held_out=report, outputs={k: v.replace(str(tmp), str(where)) for k, v in outputs.items()},
                   refinished_from=str(finished.resolve()), suggest_by=suggest_by)
    write_text_atomic(tmp / "label.json", json.dumps(summary, indent=2))
    tmp.rename(where)


def earlier_frames_check(project: Path, rounds: list[dict], tolerance: float = 5.0) -> dict:
    """For each later round: (frames of round 1's training set whose mean error grew by more than ``tolerance``
    px over round 1's, the largest change in px, the frames compared)."""
    truth, first = truth_and_predictions(project, rounds[0]["out"])
    ids = [i for i in truth if Path(i).name in set(rounds[0]["frames"]) and truth[i].visible.any()]
    checks = {}
    for r in rounds[1:]:
        _, pred = truth_and_predictions(project, r["out"])
        change = [frame_error(truth[i], pred[i]) - frame_error(truth[i], first[i]) for i in ids]
        checks[r["name"]] = (int(sum(c > tolerance for c in change)), float(max(change)), len(ids))
    return checks


if __name__ == "__main__":
    main()
