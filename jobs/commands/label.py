"""Label a dataset from a few examples: train the full method on the labeled frames (the unlabeled
frames and videos are its pool), predict every frame, and write DeepLabCut/COCO files, overlays and
suggestions of what to label next.

Inputs: a DeepLabCut project (--project; its videos come from config.yaml's video_sets, else videos/),
a SLEAP project (--slp FILE.slp: user-labeled frames, skeleton, videos; pip install 'fskp[sleap]'),
or --images DIR / --video FILE with --labels (COCO keypoints JSON or DeepLabCut CSV; video frames named
by number, img0123.png = frame 123) and --card or --links.  --links replaces a project's skeleton; a
project without one gets links derived from the training frames' labels (printed).

With --shots N only N labeled frames (k-means choice; or --frames to name them) train the model; the other
labeled frames are held out and scored in source pixels (PCK: within 10 % of the largest side of the frame's
labeled-keypoint box, never under 20 px).

Outputs in --out: predictions/<folder or video>.csv (DeepLabCut x, y, likelihood), predictions/
keypoints_coco.json, overlay/, suggestions.csv + suggestions.png, shots.txt, held_out.json, label.json;
with the lab extra DeepLabCut .h5 files and NWB, with the sleap extra predictions/<video>.predictions.slp.
Refine loop: label the suggested frames in DeepLabCut, run the same command again.

Examples:
  fskp label --project ../shared/data/dlc-reaching --out out/reaching --shots 10
  fskp label --video mouse.mp4 --labels CollectedData.csv --links nose-head,head-tail --out out/mouse
  fskp label --slp mouse.slp --out out/mouse --shots 10
"""
from __future__ import annotations

from models.variants import VARIANTS

HELP = "label a DeepLabCut project, image folder or video from a few labeled frames"

#: CPU-sized defaults of `fskp label` (fskp train keeps the paper's): see README "Labeling"
LABEL_DEFAULTS = dict(iterations=600, backbone="resnet18", size=192, lr=1e-3, checkpoint_every=300, log_every=50,
                      perceptual_vit="vit_tiny_patch16_224", precision="auto", lr_schedule="cosine",
                      rotation_deg=15.0, flip_p=0.0, heatmap_target=0.2)


def register(p):
    from jobs.commands.train import add_init_option, add_train_options

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--project", help="DeepLabCut project folder (config.yaml, labeled-data/, videos/)")
    src.add_argument("--images", help="folder of images, some labeled in --labels")
    src.add_argument("--video", help="a video, some of its frames labeled in --labels")
    src.add_argument("--slp", help="a SLEAP project (.slp: labeled frames, skeleton, videos; needs fskp[sleap])")
    p.add_argument("--labels", help="COCO keypoints JSON or DeepLabCut CSV (with --images / --video)")
    p.add_argument("--card", help="card name or YAML for --labels (default: keypoints from the label file)")
    p.add_argument("--links", help="links between keypoints for the edge maps, e.g. nose-head,head-tail (replaces a "
                                    "project's skeleton; without either, derived from the labels)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shots", type=int, help="train on N labeled frames (k-means choice), hold out the rest")
    p.add_argument("--frames", help="train on these labeled frames (comma list of names, or a file, one per line)")
    p.add_argument("--variant", default="full", choices=list(VARIANTS),
                   help="method (default full); supervised / xiao: baselines on the labeled frames alone")
    p.add_argument("--crop", help="fixed crop x0,y0,x1,y1 in frame pixels (default: around the shots' labels)")
    p.add_argument("--margin", type=float, default=0.1,
                   help="crop margin per side, share of the box's larger side (raise it when the animal moves beyond "
                        "the labeled frames' region)")
    p.add_argument("--unlabeled-batch", type=int, default=4, help="unlabeled images per step (paper: 16)")
    p.add_argument("--rotation", type=float, default=LABEL_DEFAULTS["rotation_deg"],
                   help="rotation range (+- degrees) of augmentation and Eq. 3; small for a fixed camera (paper: 60)")
    p.add_argument("--flip", type=float, default=LABEL_DEFAULTS["flip_p"],
                   help="flip probability of augmentation and Eq. 3; 0 for a fixed side view (paper: 0.5)")
    add_suggestion_options(p)
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay images / videos")
    p.add_argument("--no-tta", action="store_true",
                   help="predict the images from the crop alone (default: 7 test-time crops, each keypoint their "
                        "median: lower error, 7x the prediction time; a project's videos are always predicted once)")
    add_init_option(p)
    add_train_options(p)
    p.set_defaults(**LABEL_DEFAULTS)


def add_suggestion_options(p) -> None:
    """--suggestions and --suggest-by, for fskp label and fskp predict."""
    from pipeline.suggest import RULES

    p.add_argument("--suggestions", type=int, default=20, help="frames to suggest for labeling next (0: none)")
    p.add_argument("--suggest-by", choices=RULES, default=RULES[0],
                   help="coverage: frames whose labels reach the most uncertain frames (to label next); outliers: "
                        "frames unlike every labeled one the model is unsure of (to check for failures)")


def parse_frames(text: str | None) -> list[str] | None:
    from pathlib import Path

    if not text:
        return None
    if Path(text).is_file():
        return [line.strip() for line in Path(text).read_text().splitlines() if line.strip()]
    return [f.strip() for f in text.split(",") if f.strip()]


def parse_crop(text: str | None):
    if not text:
        return None
    values = [float(v) for v in text.split(",")]
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(f"--crop: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {text!r}")
    side = max(values[2] - values[0], values[3] - values[1])
    cx, cy = (values[0] + values[2]) / 2, (values[1] + values[3]) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)     # squared around its centre


def run(args) -> int:
    from pathlib import Path

    from jobs.commands.train import job_kwargs, resolve_init
    from jobs.labeling.inputs import read_dlc_project, read_images, read_slp_project, read_video
    from jobs.labeling.job import label
    from pipeline.atomic import folder_lock
    from pipeline.card import load_card

    card = load_card(args.card) if args.card else None
    if not (args.project or args.slp or args.labels):
        raise ValueError("--images and --video need --labels (COCO keypoints JSON or DeepLabCut CSV)")
    # inputs that are read in place are checked before the output folder is made; a SLEAP project's or a
    # video's frames are extracted into it, under its lock
    inp = read_dlc_project(args.project, links=args.links) if args.project else \
        read_images(args.images, args.labels, card, args.links) if args.images else None
    options = {**job_kwargs(args), "variant": args.variant, "unlabeled_batch": args.unlabeled_batch,
               "rotation_deg": args.rotation, "flip_p": args.flip, "lr_schedule": LABEL_DEFAULTS["lr_schedule"],
               "init_from": resolve_init(args.init_from, args.tracking_uri)}
    with folder_lock(args.out, "fskp label"):                 # two runs into one folder would mix their files
        if inp is None:
            inp = read_slp_project(args.slp, Path(args.out) / "work", links=args.links) if args.slp else \
                read_video(args.video, args.labels, Path(args.out) / "work", card, args.links)
        result = label(inp, args.out, shots=args.shots, frames=parse_frames(args.frames), crop=parse_crop(args.crop),
                       margin=args.margin, job_options=options, overlay=not args.no_overlay,
                       suggestions=args.suggestions, suggest_by=args.suggest_by, tta=not args.no_tta)
    print(f"MLflow run {result.run_id}; checkpoint {result.checkpoint}")
    for name, path in sorted(result.outputs.items()):
        print(f"  {name:28s} {path}")
    return 0
