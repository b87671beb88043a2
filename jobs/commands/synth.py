"""Render a synthetic benchmark: 3D objects with exact 2D/3D keypoints, visibility and occlusion.

Categories (each with its card, synth_<category>):
  face     23 keypoints: a soft, deformable head (identity and expression vary)
  car      14 keypoints: a rigid car (shape varies within the class)
  animal   15 keypoints: an articulated four-legged animal (joint angles vary)

Writes a prepared dataset (train: 80%, test: 20%, by instance index) with 2D keypoints in image pixels,
3D keypoints in the camera frame and per-keypoint visibility (hidden behind the object itself or an
occluder).  The same seed gives byte-identical data; a larger pool from one seed contains a smaller one.
--preview writes a small PNG grid of the first instances with keypoints (visible filled, hidden hollow)
and links.

Examples:
  fskp synth face --n 10000 --out data/synth_face
  fskp synth car --n 2000 --out data/synth_car --seed 1 --size 96
  fskp synth animal --preview docs/synth_animal.png --n 4
"""
from __future__ import annotations

HELP = "render a synthetic benchmark (face, car, animal) with exact 2D/3D keypoints and visibility"


def register(p):
    from pipeline.synth import CATEGORIES

    p.add_argument("category", choices=CATEGORIES, help="which object to render")
    p.add_argument("--n", type=int, help="number of instances (required with --out; default 4 for --preview)")
    p.add_argument("--out", help="dataset folder to write (must not exist unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--workers", type=int, help="CPU rendering processes (default: one per available core)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, or auto (cuda when present); renders are byte-identical for a "
                        "seed on one kind of device, and may differ in the last bit between CPU and GPU")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--preview", metavar="FILE.png", help="also write a grid of the first instances with keypoints")


def write_preview(category: str, path: str, n: int, seed: int, size: int, device: str) -> None:
    """A grid (up to 4 per row) of instances 0..n-1 with their keypoints and links drawn, as a PNG
    with a 128-colour palette (a few tens of kilobytes, small enough to keep in a repository)."""
    from pathlib import Path

    from PIL import Image

    from pipeline.card import load_card
    from pipeline.draw import draw_keypoints, image_grid
    from pipeline.synth import load_category
    from pipeline.synth.dataset import render_batch, resolve_device

    card = load_card(load_category(category).name)
    r = render_batch(category, seed, list(range(n)), size, resolve_device(device))
    tiles = [draw_keypoints(r["images"][i], r["keypoints"][i], r["visible"][i], card.links) for i in range(n)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid = Image.fromarray(image_grid(tiles, columns=min(n, 4)))
    grid.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def run(args) -> int:
    import time

    if not args.out and not args.preview:
        raise ValueError("nothing to do: give --out DIR for a dataset and/or --preview FILE.png")
    if args.out and args.n is None:
        raise ValueError("--n is required with --out")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    if args.size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {args.size}")
    if args.preview:
        n = min(args.n or 4, 16)
        write_preview(args.category, args.preview, n, args.seed, args.size, args.device)
        print(f"wrote {args.preview}: {n} {args.category} instances (seed {args.seed}, {args.size}px)")
    if args.out:
        from pipeline.prepared import PreparedDataset
        from pipeline.synth.dataset import generate

        t0 = time.time()
        out = generate(args.category, args.out, args.n, seed=args.seed, size=args.size, overwrite=args.overwrite,
                       workers=args.workers, device=args.device)
        took = time.time() - t0
        ds = PreparedDataset(out)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(ds.meta["counts"].items()))
        print(f"wrote {out}: {counts} ({ds.card.num_keypoints} keypoints, {ds.size}px, card {ds.card.name}) "
              f"in {took:.0f}s ({args.n / max(took, 1e-9):.1f} images/s)")
    return 0
