"""Convert a dataset from its native layout into the prepared Parquet format.

Formats (the source each expects):
{formats}

Examples:
  fskp prepare dlc --src ../shared/data/dlc-reaching --out data/dlc-reaching
  fskp prepare wflw --src ~/datasets/WFLW --out data/wflw --size 128
  fskp prepare coco --src cvat/annotations/person_keypoints_default.json --images cvat/images/default --out data/x
  fskp prepare pts --src ~/my_faces --out data/my_faces          # *.pts + images, any point count
  fskp prepare slp --src project.slp --out data/project          # a SLEAP project (pip install 'fskp[sleap]')
"""
from __future__ import annotations

HELP = ("convert a native dataset (WFLW, 300W, CUB, ATRW, CarFusion, LSP, SynthesEyes, H36M, COCO, DeepLabCut, "
        "iBUG .pts, SLEAP)")


def _format_lines() -> str:
    from pipeline.converters import FORMATS, converter

    return "\n".join(f"  {name:12s} {converter(name).HELP}" for name in FORMATS)


def register(p):
    from pipeline.converters import FORMATS

    p.description = __doc__.format(formats=_format_lines())
    p.add_argument("format", choices=list(FORMATS), help="the native layout of --src")
    p.add_argument("--src", required=True, help="folder holding the dataset as distributed, or the annotation "
                                                "file itself (coco: FILE.json, slp: FILE.slp, lsp: joints.mat)")
    p.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--card", help="card name or YAML path (default: the format's own card)")
    p.add_argument("--size", type=int, default=128, help="working resolution in pixels (default 128)")
    p.add_argument("--margin", type=float, default=0.25, help="crop margin around the box, per side, as a fraction of its larger side")
    p.add_argument("--labels", metavar="FILE",
                   help="a label file to read instead of the project's CollectedData files (e.g. machine labels "
                        "written by fskp label; dlc only)")
    p.add_argument("--images", metavar="DIR",
                   help="the folder holding the images of a COCO JSON given as --src (coco only; by default they "
                        "are looked for next to the JSON and in its images/ folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from pipeline.converters import convert
    from pipeline.prepared import PreparedDataset

    out = convert(args.format, args.src, args.out, card=args.card, size=args.size, margin=args.margin,
                  overwrite=args.overwrite, labels=args.labels, images=args.images)
    ds = PreparedDataset(out)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(ds.meta["counts"].items()))
    print(f"wrote {out}: {counts} ({ds.card.num_keypoints} keypoints, {ds.size}px, card {ds.card.name})")
    for reason, n in sorted(ds.meta.get("skipped", {}).items()):
        print(f"  skipped {n} input(s): {reason}")
    return 0
