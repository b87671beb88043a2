"""Choose which training images to annotate for few-shot learning (paper §3.6).

kmeans (the paper): cluster the train split's images on pooled features of the backbone's third-from-last
feature level (vgg16: relu4_3) into N clusters and take the image nearest each centre.  random: N images
drawn with the seed (the paper's Table 3 ablation).  The features are cached in DIR/shots/features/.

Writes a JSON file (default DIR/shots/<method>-<N>-seed<S>.json) with the ids, method, seed, backbone,
where the weights came from and the dataset fingerprint, and prints the ids, one per line.

Without internet timm's pretrained weights cannot be downloaded; the backbone is then randomly
initialised (said once, and recorded).  For the paper's setting pass ImageNet weights with --weights
(timm's model.safetensors, or torchvision's vgg16-397923af.pth).

Examples:
  fskp select --data data/cub --shots 10
  fskp select --data data/cub --shots 5% --weights ~/weights/vgg16-397923af.pth
  fskp select --data data/atrw --shots 20 --method random --seed 2
"""
from __future__ import annotations

HELP = "choose the few-shot training examples (k-means on backbone features, or random)"


def register(p):
    p.add_argument("--data", required=True, help="a prepared dataset folder (fskp prepare / fskp synth)")
    p.add_argument("--shots", required=True,
                   help="how many examples: a count (10) or a percentage of the labelled train images (5%%)")
    p.add_argument("--method", choices=("kmeans", "random"), default="kmeans",
                   help="kmeans: nearest image to each k-means centre (paper); random: a seeded draw (default kmeans)")
    p.add_argument("--seed", type=int, default=0, help="KMeans random_state / random draw seed (default 0)")
    p.add_argument("--backbone", default="vgg16",
                   help="timm model whose third-from-last feature level is clustered (default vgg16, as the paper)")
    p.add_argument("--weights", default="auto", metavar="auto|hub|package|none|FILE",
                   help="the backbone's weights: a local state dict (.pth/.safetensors), hub, package (offline, "
                        "efficientnet_lite0 with fskp[offline-weights]), none; default auto: timm's pretrained "
                        "weights if they load, else an installed package's, else random initialisation (said)")
    p.add_argument("--out", help="JSON file to write (default DIR/shots/<method>-<N>-seed<S>.json)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def run(args) -> int:
    from pipeline.prepared import PreparedDataset
    from pipeline.select import default_output, select_shots

    dataset = PreparedDataset(args.data)
    selection = select_shots(dataset, args.shots, method=args.method, seed=args.seed, backbone=args.backbone,
                             weights=args.weights, cache=not args.no_cache)
    out = selection.save(args.out or default_output(dataset, selection))
    how = (f"{selection.method}, seed {selection.seed}" if selection.backbone is None else
           f"kmeans on {selection.backbone} {selection.feature_layer}, {selection.weights}, seed {selection.seed}")
    print(f"wrote {out}: {selection.n} of {selection.train_size} training images ({how})")
    for i in selection.ids:
        print(i)
    return 0
