"""Accuracy benchmark: `full` vs `supervised` with 10 k-means shots on each synthetic category.

Same seed, steps, resolution and backbone for both; prints test NME (and the aligned 3D error the
synthetic benchmark can score) per category.  The paper's central claim (Table 1): with 10 shots the full
method roughly halves the supervised baseline's error (WFLW: 9.19 vs 21.9 NME).

  python benchmarks/accuracy.py                       # CPU-feasible defaults (see --help)
  python benchmarks/accuracy.py --iterations 2000 --size 128 --backbone resnet50 --n 5000   # closer to the paper
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from models.precision import machine_summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--categories", default="face,car,animal")
    p.add_argument("--n", type=int, default=1000, help="instances rendered per category (80%% train)")
    p.add_argument("--shots", default="10")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--out", default="benchmarks/out/accuracy")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as fit, jobs/resources.py)")
    args = p.parse_args()

    from jobs.sweep import Cell, run_sweep
    from mlflow.tracking import MlflowClient
    from pipeline.synth.dataset import generate

    out = Path(args.out).resolve()
    cells = []
    for cat in args.categories.split(","):
        data = out / "data" / f"synth_{cat}-{args.n}-{args.size}px"
        if not (data / "meta.json").exists():
            generate(cat, data, args.n, seed=0, size=args.size)
        cells += [Cell(card=f"synth_{cat}", shots=args.shots, variant=v, data=str(data)) for v in ("full", "supervised")]
    options = dict(iterations=args.iterations, backbone=args.backbone, size=args.size, log_every=100,
                   checkpoint_every=args.iterations, perceptual_vit="vit_tiny_patch16_224",
                   experiment="accuracy", tracking_uri=f"sqlite:///{out}/mlflow.db", storage_path=str(out / "runs"))
    t0 = time.time()
    result = run_sweep(cells, options, max_concurrent=args.max_concurrent)
    took = time.time() - t0

    client = MlflowClient(options["tracking_uri"])
    rows = {}
    for o in result.outcomes:
        m = client.get_run(o.run_id).data.metrics if o.run_id else {}
        rows[(o.cell.card, o.cell.variant)] = m
    print(f"\naccuracy benchmark: {args.shots} k-means shots, {args.iterations} iterations, {args.size}px, "
          f"{args.backbone}, seed 0; {machine_summary()}; {took / 60:.1f} min")
    print("| category | metric | supervised | full | full / supervised |")
    print("| --- | --- | ---: | ---: | ---: |")
    for cat in args.categories.split(","):
        card = f"synth_{cat}"
        sup, full = rows.get((card, "supervised"), {}), rows.get((card, "full"), {})
        key = next((k for k in sorted(full) if k.count("/") == 1 and k.startswith("test/")
                    and k.split("/")[1] in ("nme", "pck_0.1")), None)
        for name in ([key] if key else []) + ["test/aligned_3d_error"]:
            if name in sup and name in full:
                print(f"| {card} | {name.split('/')[1]} | {sup[name]:.2f} | {full[name]:.2f} | "
                      f"{full[name] / max(sup[name], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
