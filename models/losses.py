"""The training objective of §3: every loss of a variant, from one batch (Eq. 2, 3, 5, 9, Supplement A).

``compute_losses`` is what ``KeypointModel.forward(batch, step=..., total_steps=..., cfg=...)`` runs, so a
DistributedDataParallel wrapper sees the whole computation.  Batch layout: see models/train_step.py.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from models.config import LossConfig
from models.detector import Detection, gaussian_heatmaps
from models.geometry import (equivariance_loss, inside, part_weights, permute_flipped, sample_transforms,
                             similarity_loss_3d, smoothing_loss, transform_depth, transform_keypoints, warp_images)
from models.reconstruction import reconstruction_loss
from models.variants import XIAO_AUGMENTATION, get_variant

if TYPE_CHECKING:
    from models.model import KeypointModel

LOSS_NAMES = ("loss", "few_shot", "recon", "geo2d", "geo3d", "smooth", "depth", "heatmap_target")


def mean_over_visible(per_keypoint: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean of a per-keypoint loss [L, K] over the annotated (visible [L, K]) keypoints; 0 without any."""
    v = visible.float()
    return (per_keypoint * v).sum() / v.sum().clamp_min(1.0)


def label_gaussians(target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Xiao et al.'s Gaussians around the labels [L, K, 2] -> [L, K, h, w], sigma = h / 32 heatmap pixels (their
    2 at 64 x 48), at least 1."""
    return gaussian_heatmaps(target, h, w, sigma=max(1.0, h / 32.0))


def few_shot_loss(predicted: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over the annotated (visible) keypoints of |k - k'|_1.  [L, K, 2], [L, K, 2], [L, K]."""
    return mean_over_visible((predicted.float() - target).abs().sum(-1), visible)


def heatmap_loss(heatmaps: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Xiao et al.'s loss (the ``xiao`` variant's few-shot term): half the mean squared error between the
    heatmaps [L, K, h, w] and ``label_gaussians`` around the labels [L, K, 2], over the annotated (visible
    [L, K]) keypoints."""
    L, K, h, w = heatmaps.shape
    per_keypoint = ((heatmaps.float() - label_gaussians(target, h, w)) ** 2).mean(dim=(2, 3))
    return 0.5 * mean_over_visible(per_keypoint, visible)


def heatmap_target_loss(heatmaps: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """KL(g || w): how far Eq. 1's weights w(p) (the softmax of each heatmap [L, K, h, w]) are from g, the
    ``label_gaussians`` around the labels [L, K, 2] normalised to sum to 1, in nats, mean over the annotated
    (visible [L, K]) keypoints.  Not the paper's: Eq. 2 alone says where the weights' mean must lie, not how
    wide they may spread; this asks them to be one narrow mode at the label."""
    L, K, h, w = heatmaps.shape
    g = label_gaussians(target, h, w).reshape(L, K, h * w)
    g = g / g.sum(-1, keepdim=True).clamp_min(1e-12)
    log_w = heatmaps.float().reshape(L, K, h * w).log_softmax(-1)
    return mean_over_visible((g * (g.clamp_min(1e-12).log() - log_w)).sum(-1), visible)


def depth_loss(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Table 2's baseline's depth term: half the mean squared error between the predicted depths of Eq. 4
    [L, K], centred over each instance's keypoints, and the labels' relative depths [L, K]
    (models/geometry.py::depth_targets; NaN = unknown, left out)."""
    known = torch.isfinite(target)
    k = known.float()
    d = depth.float() * k
    centred = d - (d.sum(-1, keepdim=True) / k.sum(-1, keepdim=True).clamp_min(1.0))
    error = torch.where(known, centred - torch.nan_to_num(target), torch.zeros_like(centred))
    return 0.5 * error.square().sum() / k.sum().clamp_min(1.0)


def compute_losses(model: "KeypointModel", batch: dict, step: int, total_steps: int,
                   cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Forward pass and every loss of the variant ``cfg.variant``; the others are 0."""
    variant = get_variant(cfg.variant)
    labeled, target, visible = batch["labeled"], batch["keypoints"], batch["visible"]
    depth_target = batch.get("depth")
    if variant.depth_supervised and depth_target is None:
        raise ValueError(f"variant {variant.name!r} learns depth from 3D labels: the batch needs \"depth\" [L, K]")
    unlabeled = batch.get("unlabeled", labeled[:0])
    perm, zero = model.flip_perm, labeled.new_zeros(())
    if variant.augment_labeled:               # every variant but no-label-aug: augmentation at full range
        ranges = dataclasses.replace(cfg, **XIAO_AUGMENTATION) if variant.heatmap_regression else cfg
        T = sample_transforms(len(labeled), 1.0, ranges, labeled.device)
        labeled, target = warp_images(labeled, T), transform_keypoints(target, T, perm)
        visible = permute_flipped(visible, T.flip, perm) & inside(target)
        if depth_target is not None:
            depth_target = transform_depth(depth_target, T, perm)
    images = torch.cat([unlabeled, labeled]) if variant.unlabeled else labeled
    n_unlabeled, n_images = len(images) - len(labeled), len(images)
    geo2d = variant.geo2d and n_unlabeled > 0
    apart = cfg.labeled_apart and n_unlabeled > 0        # the labeled images' BN statistics their own
    detected = unlabeled if apart else images
    if geo2d:    # Eq. 3's T(I), detected in the same pass as I (one batch: faster, one set of BN statistics)
        T = sample_transforms(n_unlabeled, cfg.transform_strength(step, total_steps), cfg, images.device)
        det_all = model(torch.cat([detected, warp_images(unlabeled, T)]))
        det, kp_transformed = Detection(*(x[:len(detected)] for x in det_all)), det_all.keypoints[len(detected):]
    else:
        det = model(detected)
    if apart:
        det = Detection(*(torch.cat([u, l]) for u, l in zip(det, model(labeled))))

    if variant.heatmap_regression:                                                                # Xiao et al.
        losses = {"few_shot": heatmap_loss(det.heatmaps[n_unlabeled:], target, visible)}
    else:                                                                                         # Eq. 2
        losses = {"few_shot": few_shot_loss(det.keypoints[n_unlabeled:], target, visible)}
        if cfg.heatmap_target:                                                                    # not the paper's
            losses["heatmap_target"] = heatmap_target_loss(det.heatmaps[n_unlabeled:], target, visible)
    if variant.depth_supervised:                                                                  # Table 2
        losses["depth"] = depth_loss(det.depth[n_unlabeled:], depth_target)
    if variant.recon:                                                                             # Eq. 6-9
        edges = model.edges(det.keypoints, det.certainty if variant.uncertainty else None)
        losses["recon"] = reconstruction_loss(model.unet, model.perceptual, images, edges,
                                              cfg.mask_ratio, cfg.mask_patch)[0]
    if geo2d:                                                                                     # Eq. 3
        losses["geo2d"] = equivariance_loss(kp_transformed, det.keypoints[:n_unlabeled], T, perm,
                                             variant.scale_invariant)
    if variant.geo3d:                                                                             # Eq. 4-5
        kp3d = torch.cat([det.keypoints, det.depth.unsqueeze(-1)], dim=-1)
        weights = part_weights(len(model.config.parts), cfg.whole_object_weight, images.device)
        losses["geo3d"] = similarity_loss_3d(kp3d, model.part_masks, weights, step < cfg.random_pairing_steps,
                                              variant.scale_invariant)
    if variant.smoothing and len(model.smoothing_triples):                                        # Suppl. A
        losses["smooth"] = smoothing_loss(det.keypoints, model.smoothing_triples)
    for name in LOSS_NAMES[1:]:
        losses.setdefault(name, zero)
    losses["loss"] = (cfg.few_shot * losses["few_shot"] + cfg.recon * losses["recon"] + cfg.geo2d * losses["geo2d"]
                      + cfg.geo3d * losses["geo3d"] + cfg.smoothing * losses["smooth"] + cfg.depth * losses["depth"]
                      + cfg.heatmap_target * losses["heatmap_target"])
    return {name: losses[name] for name in LOSS_NAMES}
