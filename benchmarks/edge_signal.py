"""Can Eq. 9 hold keypoints in place at all, at a given budget?  The reconstruction alone -- the edge map (Eq. 8,
every keypoint certain) and the UNet, Eq. 9's loss with its masking and perceptual term -- trained on a prepared
dataset's train images from the edge maps of their *true* keypoints, as if the detector were perfect.  Then, on
test images with fixed masks: Eq. 9 given the true keypoints' edges, the edges of keypoints each moved by d pixels
(in a random direction of its own), of the train split's mean shape (every image the same keypoints: a
collapsed detector), and no edges.

If Eq. 9 does not rise with d, the reconstruction gives a detector no reason to put a keypoint in one place rather
than another, however good the detector; the rise per pixel at small d is the pull it can exert.  The full method
trains the detector, the UNet and the edge weight at once; this isolates the last two.

  python benchmarks/edge_signal.py --data benchmarks/out/accuracy_curve/data/synth_face-1000-64px
  python benchmarks/edge_signal.py --data DATA --lr 1e-3 --iterations 2400
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def moved(keypoints, pixels: float, size: int, generator):
    """[N, K, 2] in [-1, 1]: each keypoint moved ``pixels`` pixels (of a ``size`` image) in its own direction."""
    import torch

    angle = torch.rand(keypoints.shape[:-1], generator=generator) * 2 * np.pi
    step = torch.stack([angle.cos(), angle.sin()], dim=-1) * (pixels * 2.0 / size)
    return keypoints + step


def evaluate(edges, unet, perceptual, images, keypoints, mean_shape, mask, shifts, ratio, patch, size) -> dict:
    """Eq. 9 (and its pixel L1) on ``images`` with the fixed ``mask``, per edge map: {name: (eq9, l1)}."""
    import torch

    from memorisation import eq9_and_l1

    generator = torch.Generator().manual_seed(0)
    maps = {"true keypoints": keypoints}
    maps |= {f"moved {d:g} px": moved(keypoints, d, size, generator) for d in shifts}
    maps["mean shape"] = mean_shape.expand_as(keypoints)
    unet.eval()
    with torch.no_grad():
        out = {name: eq9_and_l1(unet, perceptual, images, edges(kp, None), mask, ratio, patch)
               for name, kp in maps.items()}
    out["no edges"] = eq9_and_l1(unet, perceptual, images, torch.zeros(len(images), 1, size, size), mask, ratio, patch)
    unet.train()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared dataset with keypoints on its train and test splits")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam's rate (Supplement A: 1e-4)")
    p.add_argument("--edge-weight-lr-scale", type=float, default=1.0, help="Eq. 12's gamma at this multiple of --lr")
    p.add_argument("--batch", type=int, default=16, help="images per step (Supplement A's unlabeled batch)")
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--mask-patch", type=int, default=16)
    p.add_argument("--perceptual-network", default="efficientnet_lite0")
    p.add_argument("--perceptual-weights", default="package")
    p.add_argument("--shifts", default="1,2,4,8", help="pixels each keypoint is moved by")
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--report-every", type=int, help="evaluate every N iterations (default: 4 times in the run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from memorisation import image_tensor
    from models.config import ModelConfig, OptimConfig
    from models.model import KeypointModel
    from models.precision import machine_summary
    from models.train_step import autocast_dtype, make_optimizer
    from models.reconstruction import random_patch_mask, reconstruction_loss
    from pipeline.prepared import PreparedDataset

    torch.manual_seed(args.seed)
    ds = PreparedDataset(args.data)
    size = ds.size

    def tensors(split: str, n: int | None = None):
        a = ds.arrays(split)
        return image_tensor(a)[:n], torch.from_numpy(a["keypoints"][:n] / size * 2 - 1).float()

    train_images, train_kp = tensors("train")
    test_images, test_kp = tensors("test", args.n_test)
    mean_shape = train_kp.mean(0, keepdim=True)
    model = KeypointModel(ModelConfig.from_card(ds.card, image_size=size, backbone="resnet18", backbone_weights="none",
                                                perceptual_vit=args.perceptual_network,
                                                perceptual_weights=args.perceptual_weights))
    trained = torch.nn.ModuleDict({"edges": model.edges, "unet": model.unet})
    optimizer = make_optimizer(trained, OptimConfig(lr=args.lr, edge_weight_lr_scale=args.edge_weight_lr_scale))
    dtype = autocast_dtype(torch.device("cpu"), "auto")
    mask = random_patch_mask(len(test_images), size, args.mask_patch, args.mask_ratio)
    shifts = [float(s) for s in args.shifts.split(",")]
    every = args.report_every or max(args.iterations // 4, 1)

    print(f"edge signal: {ds.card.name}, {len(train_images)} train images with their true keypoints, "
          f"{args.iterations} iterations, lr {args.lr:g} (edge weight x{args.edge_weight_lr_scale:g}), batch "
          f"{args.batch}, mask {args.mask_ratio:g} of {args.mask_patch}-px patches at {size} px, perceptual "
          f"{args.perceptual_network} ({model.perceptual.weights_source.loaded}); {machine_summary()}", flush=True)
    rows = []
    t0 = time.time()
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.iterations + 1):
        idx = torch.randint(0, len(train_images), (args.batch,), generator=generator)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = reconstruction_loss(model.unet, model.perceptual, train_images[idx],
                                          model.edges(train_kp[idx], None), args.mask_ratio, args.mask_patch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == args.iterations:
            result = evaluate(model.edges, model.unet, model.perceptual, test_images, test_kp, mean_shape, mask,
                              shifts, args.mask_ratio, args.mask_patch, size)
            rows.append((step, model.edges.alpha.item(), result))
            print(f"step {step}: train Eq. 9 {loss.item():.4f}, alpha {model.edges.alpha.item():.4f}, "
                  f"{time.time() - t0:.0f} s", flush=True)
    names = list(rows[0][2])
    for k, what in ((0, "Eq. 9 (pixel L1 + perceptual)"), (1, "pixel L1")):
        print(f"\n{what} on {len(test_images)} test images (fixed masks), by the keypoints the edge map is drawn from:")
        print("| iterations | alpha | " + " | ".join(names) + " |")
        print("| ---: | ---: |" + " ---: |" * len(names))
        for step, alpha, result in rows:
            print(f"| {step} | {alpha:.4f} | " + " | ".join(f"{result[n][k]:.5f}" for n in names) + " |")
    last = rows[-1][2]
    gain = last["no edges"][0] - last["true keypoints"][0]
    pull = (last[f"moved {shifts[0]:g} px"][0] - last["true keypoints"][0]) / shifts[0]
    print(f"\nat the end: the true keypoints' edges lower Eq. 9 by {gain:+.4f} against no edges; moving every keypoint "
          f"by {shifts[0]:g} px raises it by {pull:+.5f} per px ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
