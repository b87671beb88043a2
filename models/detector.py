"""Keypoint, uncertainty and depth detection (§3.1 Eq. 1, §3.4 Eq. 4).

A timm CNN backbone with deconvolutions on top (Xiao et al.'s simple baseline [92]) predicts, per
keypoint, a heatmap H_i, an uncertainty map V_i and a depth map D_i at 1/``heatmap_stride`` of the image.
The softmax of H_i over the pixels gives the weights w(p) of Eq. 1:

    k_i = sum_p w(p) p,   v_i = sum_p w(p) V_i(p)   (Eq. 1),   d_i = sum_p w(p) D_i(p)   (Eq. 4)

with p the pixel centre in normalised coordinates [-1, 1] (x = 2 * (col + 0.5) / W - 1, the
``align_corners=False`` convention).  The last layer starts at N(0, 0.001) weights and zero bias, as in
[92]: heatmaps start flat, v starts at 0 (edges at half strength) and depth starts near 0.

Under our reading of Eq. 6-7 (see models/edges.py) sigmoid(v_i) is the strength with which keypoint i's
edges are drawn, so a large v_i means *certain*; ``uncertainty = 1 - sigmoid(v)`` is what ``predict`` reports.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import timm
import torch
import torch.nn as nn

from models.config import ModelConfig
from models.pretrained import create_timm_model


class Detection(NamedTuple):
    keypoints: torch.Tensor   # [N, K, 2] in [-1, 1], (x, y)
    certainty: torch.Tensor   # [N, K] the paper's v_i (Eq. 1): logit of the edge strength, large = certain
    depth: torch.Tensor       # [N, K] d_i (Eq. 4), times depth_scale
    heatmaps: torch.Tensor    # [N, K, h, w] logits H_i


def pixel_centres(height: int, width: int, device=None) -> torch.Tensor:
    """[height * width, 2] normalised (x, y) of the pixel centres, row-major (align_corners=False)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (2.0 / width) - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def argmax_decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """Xiao et al.'s decoding: the heatmap's arg-max, moved a quarter pixel toward the higher neighbour.
    heatmaps [N, K, h, w] -> keypoints [N, K, 2] in [-1, 1] (pixel centres as in ``pixel_centres``)."""
    N, K, h, w = heatmaps.shape
    with torch.autocast(heatmaps.device.type, enabled=False):
        hm = heatmaps.float()
        index = hm.reshape(N, K, h * w).argmax(-1)
        row, col = index // w, index % w
        flat = hm.reshape(N * K, h, w)
        i, r, c = torch.arange(N * K, device=hm.device), row.reshape(-1), col.reshape(-1)
        dx = flat[i, r, (c + 1).clamp(max=w - 1)] - flat[i, r, (c - 1).clamp(min=0)]
        dy = flat[i, (r + 1).clamp(max=h - 1), c] - flat[i, (r - 1).clamp(min=0), c]
        x = c.float() + 0.25 * torch.sign(dx)
        y = r.float() + 0.25 * torch.sign(dy)
        return torch.stack([(x + 0.5) * (2.0 / w) - 1.0, (y + 0.5) * (2.0 / h) - 1.0], -1).reshape(N, K, 2)


def local_soft_argmax(heatmaps: torch.Tensor, radius: int) -> torch.Tensor:
    """Eq. 1 restricted to a (2 radius + 1)^2 window of heatmap pixels around each heatmap's arg-max: mass far
    from the peak (a second mode, the background's floor) no longer pulls the keypoint toward it.  An
    inference-time decoding of heatmaps trained with Eq. 1 over the whole map; measured (benchmarks/decoding.py,
    README) it is far worse there, whose weights spread wide with their peak away from the keypoint.
    heatmaps [N, K, h, w] -> keypoints [N, K, 2] in [-1, 1] (pixel centres as in ``pixel_centres``)."""
    N, K, h, w = heatmaps.shape
    with torch.autocast(heatmaps.device.type, enabled=False):
        hm = heatmaps.float().reshape(N * K, h * w)
        peak = hm.argmax(-1)
        offsets = torch.arange(-radius, radius + 1, device=hm.device)
        rows = (peak // w)[:, None, None] + offsets[None, :, None]                    # [NK, 2r+1, 1]
        cols = (peak % w)[:, None, None] + offsets[None, None, :]                     # [NK, 1, 2r+1]
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)                  # [NK, 2r+1, 2r+1]
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).reshape(N * K, -1)
        logits = hm.gather(1, index).masked_fill(~inside.reshape(N * K, -1), float("-inf"))
        weights = logits.softmax(-1)                                                  # [NK, (2r+1)^2]
        x = (cols.expand_as(inside).reshape(N * K, -1).float() + 0.5) * (2.0 / w) - 1.0
        y = (rows.expand_as(inside).reshape(N * K, -1).float() + 0.5) * (2.0 / h) - 1.0
        return torch.stack([(weights * x).sum(-1), (weights * y).sum(-1)], -1).reshape(N, K, 2)


def gaussian_heatmaps(keypoints: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """Xiao et al.'s targets: [N, K, 2] in [-1, 1] -> [N, K, h, w], a Gaussian of peak 1 and ``sigma``
    heatmap pixels around each keypoint."""
    centres = pixel_centres(h, w, keypoints.device)                        # [h*w, 2] in [-1, 1]
    scale = torch.tensor([w / 2.0, h / 2.0], device=keypoints.device)      # [-1, 1] -> heatmap pixels
    d2 = (((centres[None, None] - keypoints.float()[:, :, None]) * scale) ** 2).sum(-1)
    return torch.exp(-d2 / (2.0 * sigma ** 2)).reshape(*keypoints.shape[:2], h, w)


def soft_argmax(heatmaps: torch.Tensor, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Eq. 1 and 4.  heatmaps [N, K, h, w]; each of ``maps`` [N, K, h, w].

    Returns (keypoints [N, K, 2], then each map's heatmap-weighted sum [N, K]), all float32.
    """
    N, K, h, w = heatmaps.shape
    with torch.autocast(heatmaps.device.type, enabled=False):
        weights = heatmaps.float().reshape(N, K, h * w).softmax(dim=-1)
        keypoints = weights @ pixel_centres(h, w, heatmaps.device)
        sums = tuple((weights * m.float().reshape(N, K, h * w)).sum(-1) for m in maps)
    return (keypoints, *sums)


class Detector(nn.Module):
    """ResNet + deconvolutions -> (heatmaps, uncertainty maps, depth maps) -> ``Detection``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_keypoints = cfg.num_keypoints
        if cfg.keypoint_decoding not in ("soft-argmax", "argmax"):
            raise ValueError(f"keypoint_decoding must be soft-argmax or argmax, got {cfg.keypoint_decoding!r}")
        self.argmax = cfg.keypoint_decoding == "argmax"
        self.batch_norm = cfg.batch_norm
        self.depth_scale = cfg.depth_scale
        self.backbone, self.weights_source = create_timm_model(cfg.backbone, cfg.backbone_weights,
                                                               features_only=True, out_indices=(-1,))
        channels = self.backbone.feature_info.channels()[-1]
        reduction = self.backbone.feature_info.reduction()[-1]
        n_up = math.log2(reduction / cfg.heatmap_stride)
        if n_up < 0 or n_up != int(n_up):
            raise ValueError(f"{cfg.backbone}: output stride {reduction} cannot reach heatmap_stride "
                             f"{cfg.heatmap_stride} by doubling")
        layers: list[nn.Module] = []
        for _ in range(int(n_up)):
            layers += [nn.ConvTranspose2d(channels, cfg.head_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cfg.head_channels), nn.ReLU(inplace=True)]
            channels = cfg.head_channels
        self.upsample = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, 3 * cfg.num_keypoints, 1)   # heatmaps, uncertainty maps, depth maps
        for m in self.upsample.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.out.weight, std=0.001)
        nn.init.zeros_(self.out.bias)
        data = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1), persistent=False)
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "Detector":
        """Training mode, except the BatchNorm layers ``batch_norm`` freezes: those normalise by their running
        (for the backbone: pretrained) statistics and do not update them; their scale and shift still learn."""
        super().train(mode)
        if mode and self.batch_norm != "batch":
            frozen = self.backbone if self.batch_norm == "frozen-backbone" else self
            for m in frozen.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def inference_copy(self) -> "Detector":
        """An eval-mode copy with each BatchNorm that follows a convolution folded into its weights: the same
        outputs up to float rounding, one pass over the activations fewer per layer (inference only).  Backbone
        pairs are found by tracing it with torch.fx; a backbone that cannot be traced keeps its BatchNorm layers."""
        from torch.fx.experimental.optimization import fuse
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        detector = copy.deepcopy(self).eval()
        try:
            detector.backbone = fuse(detector.backbone)
        except Exception:                       # torch.fx raises many kinds for untraceable control flow
            pass
        layers, folded = list(detector.upsample), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.ConvTranspose2d) and layers and type(layers[0]) is nn.BatchNorm2d:
                layer = fuse_conv_bn_eval(layer, layers.pop(0), transpose=True)
            folded.append(layer)
        detector.upsample = nn.Sequential(*folded)
        return detector.to(memory_format=torch.channels_last)

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] -> [N, 3K, H/s, W/s] (the convolutional part; compilable)."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.out(self.upsample(self.backbone(x)[-1]))

    def forward(self, images: torch.Tensor) -> Detection:
        return self._detect(self.maps(images))

    def detect_and_embed(self, images: torch.Tensor) -> tuple[Detection, torch.Tensor]:
        """As ``forward``, plus the backbone's last feature map average-pooled: an image embedding [N, C]
        (used to tell frames unlike the labeled ones, pipeline/suggest.py)."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)[-1]
        return self._detect(self.out(self.upsample(features))), features.float().mean(dim=(2, 3))

    def _detect(self, maps: torch.Tensor) -> Detection:
        heatmaps, uncertainty_maps, depth_maps = maps.chunk(3, dim=1)
        keypoints, certainty, depth = soft_argmax(heatmaps, uncertainty_maps, depth_maps)
        if self.argmax:
            keypoints = argmax_decode(heatmaps)
        return Detection(keypoints, certainty, depth * self.depth_scale, heatmaps)
