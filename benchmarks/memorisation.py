"""Has a model learned the keypoints, or memorised its shots?  Its error and spread ratio on its own labeled
images (as stored and augmented as in training), on unlabeled images of the same split, and on the test split.

A model that is right on its shots and collapsed (spread ratio near 0: every keypoint on one point) everywhere
else has told its labeled images apart from the rest: the few-shot loss (Eq. 2) holds only on them, and the
unsupervised losses are free to pull the other predictions together.

Then whether the reconstruction (Eq. 9) can hold them apart: the edge map's weight alpha (Eq. 12) and Eq. 9
(and its pixel L1) on the test images, with the same masks, given the edges of the model's own keypoints, of the true
keypoints, and no edges at all.  A UNet that rebuilds the image as well without edges as with them gives the
keypoints no reason to spread out.  Last, each loss's gradient norm over the detector (Eq. 2, 3, 5 and 9), for one
batch as the full method would train the checkpoint now: how hard each term pulls.

  python benchmarks/memorisation.py --run-dir RUN_STORAGE_FOLDER --data PREPARED_DATA   # its last checkpoint
  python benchmarks/memorisation.py --checkpoint CHECKPOINT --data PREPARED_DATA
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def image_tensor(arrays: dict):
    """Prepared ``arrays``' images [N, H, W, 3] uint8 -> [N, 3, H, W] float in [0, 1]."""
    import torch

    return torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255


def eq9_and_l1(unet, perceptual, images, edges, mask, ratio: float, patch: int) -> tuple[float, float]:
    """Eq. 9 and its pixel L1 for ``images`` rebuilt from ``edges`` with the fixed ``mask`` (no gradients)."""
    import torch
    import torch.nn.functional as F

    from models.reconstruction import reconstruction_loss

    with torch.no_grad():
        loss, rebuilt = reconstruction_loss(unet, perceptual, images, edges, ratio, patch, mask=mask)
    return loss.item(), F.l1_loss(rebuilt, images).item()


def last_checkpoint(run_dir: Path) -> Path:
    """The newest ``checkpoint_<time>`` folder of a Ray Train run folder (names sort by time)."""
    found = sorted(p for p in run_dir.glob("checkpoint_2*") if (p / "model.pt").exists())
    if not found:
        raise SystemExit(f"{run_dir}: no checkpoint_<time>/model.pt in it")
    return found[-1]


def score(model, arrays: dict, size: int, augment: bool, seed: int = 0) -> tuple[float, float]:
    """(mean error in px, spread ratio) of ``model`` on prepared ``arrays``; with ``augment``, images and labels
    moved by the training augmentation at full range (models/geometry.py, the full variant's ranges)."""
    import torch

    from models.config import LossConfig
    from models.geometry import sample_transforms, transform_keypoints, warp_images
    from models.metrics import spread_ratio

    images = image_tensor(arrays)
    target = torch.from_numpy(arrays["keypoints"] / size * 2 - 1).float()
    visible = arrays["visible"]
    if augment:
        torch.manual_seed(seed)
        T = sample_transforms(len(images), 1.0, LossConfig(variant="full"), "cpu")
        images, target = warp_images(images, T), transform_keypoints(target, T, model.flip_perm)
        visible = np.where(T.flip.numpy()[:, None], visible[:, model.flip_perm.numpy()], visible)
    with torch.no_grad():
        pred = model.detector(images).keypoints.numpy()
    target = target.numpy()
    error = np.where(visible, np.linalg.norm(pred - target, axis=-1), np.nan)
    return float(np.nanmean(error) * size / 2), float(spread_ratio(pred, target, visible))


def edge_use(model, arrays: dict, size: int, patch: int = 16, ratio: float = 0.9) -> dict[str, tuple[float, float]]:
    """Eq. 9 and its pixel L1 on ``arrays`` with the edge maps of the predicted keypoints, of the labels (every
    keypoint certain), and none (same masks): {"own" | "labels" | "none": (eq9, l1)}; and "alpha", the edge map's
    weight (Eq. 12)."""
    import torch

    from models.reconstruction import random_patch_mask

    images = image_tensor(arrays)
    labels = torch.from_numpy(arrays["keypoints"] / size * 2 - 1).float()
    with torch.no_grad():
        det = model.detector(images)
        torch.manual_seed(0)
        mask = random_patch_mask(len(images), size, patch, ratio)

        def eq9(edges):
            return eq9_and_l1(model.unet, model.perceptual, images, edges, mask, ratio, patch)

        own = model.edges(det.keypoints, det.certainty)
        true = model.edges(labels, torch.full_like(det.certainty, 10.0))
        return {"alpha": model.edges.alpha.item(), "own": eq9(own), "labels": eq9(true),
                "none": eq9(torch.zeros_like(own))}


def gradient_shares(model, labeled: dict, unlabeled: dict, size: int, job: dict, draws: int = 3) -> dict[str, float]:
    """Each loss's pull on the detector, as the full method would train this checkpoint now: the norm of its
    gradient over the detector's parameters (coefficients not applied), for one batch of the run's labeled images
    and 16 unlabeled ones at mid-run (Eq. 3's ranges half grown), mean over ``draws`` augmentation draws."""
    import torch

    from models.config import LossConfig
    from models.losses import compute_losses

    batch = {"labeled": image_tensor(labeled),
             "keypoints": torch.from_numpy(labeled["keypoints"] / size * 2 - 1).float(),
             "visible": torch.from_numpy(labeled["visible"]), "unlabeled": image_tensor(unlabeled)[:16]}
    cfg = LossConfig(variant="full", rotation_deg=float(job.get("rotation_deg", 60.0)),
                     flip_p=float(job.get("flip_p", 0.5)), mask_patch=int(job.get("mask_patch", 16)))
    params = [q for q in model.detector.parameters() if q.requires_grad]
    norms: dict[str, list[float]] = {}
    model.train()
    for draw in range(draws):
        torch.manual_seed(draw)
        losses = compute_losses(model, batch, 1, 2, cfg)
        for name in ("few_shot", "recon", "geo2d", "geo3d"):
            grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
            norms.setdefault(name, []).append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads
                                                                   if g is not None))))
    model.eval()
    return {name: float(np.mean(v)) for name, v in norms.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint folder or model.pt")
    src.add_argument("--run-dir", help="a Ray Train run folder: its last checkpoint")
    p.add_argument("--data", required=True, help="the prepared dataset the run trained on")
    p.add_argument("--n", type=int, default=64, help="unlabeled and test images scored (the first ones)")
    args = p.parse_args()

    from jobs.evaluation import load_checkpoint
    from models.variants import get_variant
    from pipeline.prepared import PreparedDataset, rows_to_arrays

    checkpoint = Path(args.checkpoint) if args.checkpoint else last_checkpoint(Path(args.run_dir))
    ds = PreparedDataset(args.data)
    model, state = load_checkpoint(checkpoint, card=ds.card)
    shots = {str(s) for s in state["shot_ids"]}
    train = ds.table("train").to_pylist()
    k = ds.card.num_keypoints
    groups = {"its labeled images (shots)": rows_to_arrays([r for r in train if str(r["id"]) in shots], k),
              "unlabeled train images": rows_to_arrays([r for r in train if str(r["id"]) not in shots][:args.n], k),
              "test images": rows_to_arrays(ds.table("test").slice(0, args.n).to_pylist(), k)}
    print(f"{checkpoint} (step {state['step']}, variant {state['job']['variant']}, {len(shots)} shots)")
    print("| images | as stored: mean error px / spread ratio | augmented as in training |")
    print("| --- | ---: | ---: |")
    for name, arrays in groups.items():
        plain, moved = score(model, arrays, ds.size, False), score(model, arrays, ds.size, True)
        print(f"| {name} ({len(arrays['images'])}) | {plain[0]:.1f} / {plain[1]:.3f} | {moved[0]:.1f} / {moved[1]:.3f} |")
    if get_variant(state["job"]["variant"]).recon:                      # the variant has a UNet to ask
        use = edge_use(model, groups["test images"], ds.size, patch=int(state["job"].get("mask_patch", 16)))
        print(f"\nEq. 9 on the test images (same masks), alpha = {use['alpha']:.4f} (initial softplus(-4) = 0.0181); "
              f"Eq. 9 / its pixel L1:")
        for name, what in (("own", "own edges"), ("labels", "the labels' edges"), ("none", "no edges")):
            print(f"  {what}: {use[name][0]:.4f} / {use[name][1]:.4f}")
    shares = gradient_shares(model, groups["its labeled images (shots)"], groups["unlabeled train images"], ds.size,
                             state["job"])
    print("\neach loss's gradient norm over the detector's parameters (coefficients not applied; Eq. 2 = 1): "
          + ", ".join(f"{name} {value:.4g} ({value / max(shares['few_shot'], 1e-12):.3f})"
                      for name, value in shares.items()))


if __name__ == "__main__":
    main()
