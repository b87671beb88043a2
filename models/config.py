"""The model's, the losses' and the optimiser's settings: three frozen dataclasses, a comment per field.

Defaults are the paper's (§3.6, Supplement A) where it gives a number; a comment says so, or says what we
chose where it gives none.  ``to_dict``/``from_dict`` round-trip through JSON/YAML (lists become tuples
again), so a checkpoint ``{"config": cfg.to_dict(), "state_dict": ...}`` rebuilds exactly the same network.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from models.variants import get_variant


def _tuplify(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


class _Dict:
    """to_dict / from_dict for a flat frozen dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {unknown} (known: {sorted(names)})")
        return cls(**{k: _tuplify(v) for k, v in d.items()})


#: ModelConfig.batch_norm: which of the detector's BatchNorm layers normalise by the batch while training
BATCH_NORM_MODES = ("batch", "frozen-backbone", "frozen")


@dataclass(frozen=True)
class ModelConfig(_Dict):
    # --- the keypoint set (from the dataset card) ---
    num_keypoints: int                                  # K
    links: tuple[tuple[int, int], ...]                  # user links (i, j) drawn in the edge map (Eq. 6-8)
    parts: tuple[tuple[int, ...], ...] = ()             # keypoint subsets for the 3D similarity loss (Eq. 5)
    flip_permutation: tuple[int, ...] = ()              # kp of the flipped image = flip_x(kp)[perm]; () = identity
    smoothing_groups: tuple[tuple[int, ...], ...] = ()  # chains smoothed in Supplement A ("jaws and noses")
    # --- detector (§3.1: Xiao et al.'s simple baseline) ---
    backbone: str = "resnet50"                          # any timm CNN with features_only; paper: resnet50
    backbone_weights: str = "auto"                      # auto | hub | package | none | a file (models/pretrained.py)
    image_size: int = 128                               # square input side in pixels (Supplement A: 128)
    heatmap_stride: int = 4                             # heatmaps at image_size / stride (Xiao: 4 -> 32x32)
    keypoint_decoding: str = "soft-argmax"              # soft-argmax (Eq. 1) | argmax (Xiao et al.'s baseline)
    head_channels: int = 256                            # width of each deconvolution layer (Xiao: 256)
    depth_scale: float = 1.0                            # multiplies Eq. 4's depth; the head starts near 0 anyway
    batch_norm: str = "batch"                           # batch: BatchNorm normalises by each training batch (the
                                                        # paper's, which does not say); frozen-backbone: the
                                                        # backbone's at its pretrained statistics; frozen: every
                                                        # detector BatchNorm at its running statistics
    # --- edge map and reconstruction (§3.5) ---
    edge_resolution: int = 0                            # side at which edge maps are drawn; 0 = image_size
    unet_width: int = 16                                # channels of the UNet's first level, doubled per level
    unet_levels: int = 5                                # resolutions (128 px: 128 down to 8); 2**(l-1) | size
    perceptual_vit: str = "vit_small_patch8_224.dino"   # timm network of Eq. 9's features, run at image_size:
                                                        # a ViT (paper: keys + [CLS]) or a CNN (offline variant)
    perceptual_weights: str = "auto"                    # the ViT's weights, chosen the same way

    def __post_init__(self):
        K = self.num_keypoints
        if K < 1:
            raise ValueError(f"num_keypoints must be positive, got {K}")
        for name in ("links", "parts", "smoothing_groups"):
            for group in getattr(self, name):
                if any(not 0 <= i < K for i in group):
                    raise ValueError(f"{name}: index out of range 0..{K - 1} in {group}")
        if self.flip_permutation and sorted(self.flip_permutation) != list(range(K)):
            raise ValueError(f"flip_permutation is not a permutation of 0..{K - 1}")
        if self.batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {self.batch_norm!r}")
        if self.image_size % self.heatmap_stride or self.image_size % 2 ** (self.unet_levels - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by heatmap_stride "
                             f"{self.heatmap_stride} and by 2**(unet_levels-1) = {2 ** (self.unet_levels - 1)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Also reads checkpoints written before weights were a choice (pretrained / weights_file flags)."""
        d = dict(d)
        for flag, file, field in (("pretrained", "weights_file", "backbone_weights"),
                                  ("perceptual_pretrained", "perceptual_weights_file", "perceptual_weights")):
            if flag in d or file in d:
                pretrained, path = d.pop(flag, True), d.pop(file, None)
                d.setdefault(field, path or ("auto" if pretrained else "none"))
        return super().from_dict(d)

    @property
    def flip_perm(self) -> tuple[int, ...]:
        return self.flip_permutation or tuple(range(self.num_keypoints))

    @classmethod
    def from_card(cls, card, **overrides) -> "ModelConfig":
        """The model for a ``pipeline.card.Card``; ``overrides`` set any other field."""
        return cls(num_keypoints=card.num_keypoints, links=tuple(card.links), parts=tuple(card.parts.values()),
                   flip_permutation=tuple(card.flip_permutation),
                   smoothing_groups=tuple(card.smoothing_groups.values()), **overrides)


@dataclass(frozen=True)
class LossConfig(_Dict):
    variant: str = "full"                 # models/variants.py: full | supervised | xiao | the ablations
    few_shot: float = 1.0                 # coefficient of Eq. 2 (§3.6)
    recon: float = 1.0                    # coefficient of Eq. 9 (§3.6)
    geo2d: float = 1.0                    # coefficient of Eq. 3 (§3.6)
    geo3d: float = 0.1                    # coefficient of Eq. 5 (§3.6)
    smoothing: float = 0.02               # landmark smoothing weight (Supplement A); needs smoothing_groups
    depth: float = 1.0                    # the depth term of xiao-depth, Table 2's baseline (the paper gives none)
    heatmap_target: float = 0.0           # KL from a Gaussian at each label to Eq. 1's weights on the labeled
                                          # images (models/losses.py::heatmap_target_loss; not the paper's: 0 = off)
    whole_object_weight: float = 0.5      # Eq. 5 term of the whole object; each part has 1 (paper: "lower")
    mask_ratio: float = 0.9               # fraction of patches masked out (Supplement A)
    mask_patch: int = 16                  # masking patch side in pixels (Supplement A)
    random_pairing_steps: int = 200       # Eq. 5 pairs at random before this iteration (§3.4)
    labeled_apart: bool = False           # detect the labeled images in a forward pass of their own, so BatchNorm's
                                          # batch statistics are not shared with the unlabeled images (not the
                                          # paper's, which does not say; README: it rescues the supervised
                                          # signal, but the full method then collapses on the unlabeled pass)
    transform_ramp: float = 1.0           # share of the run over which Eq. 3's ranges grow from 0 to full
                                          # (Supplement A: 1.0, the whole run; 0: full from the first step)
    rotation_deg: float = 60.0            # Eq. 3 / supervised augmentation: rotation in +-deg (Supplement A)
    translation: float = 0.1              # translation in +- fraction of the image side
    scale_min: float = 0.9                # scale drawn in [scale_min, scale_max]
    scale_max: float = 1.0                # (Supplement A: no enlargement; Xiao et al.'s baseline: 1.35)
    flip_p: float = 0.5                   # probability of a horizontal flip (flip pairs swapped)
    colour: float = 0.5                   # brightness/contrast/saturation factor 1 +- colour; hue shift +- colour turns

    def __post_init__(self):
        get_variant(self.variant)  # raises on an unknown name
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.transform_ramp <= 1.0:
            raise ValueError(f"transform_ramp must be in [0, 1] (a share of the run), got {self.transform_ramp}")

    def transform_strength(self, step: int, total_steps: int) -> float:
        """How far Eq. 3's transformation ranges have grown at ``step``: 0 (identity) to 1 (the full ranges),
        linearly over the first ``transform_ramp`` of ``total_steps`` (Supplement A: over the whole run)."""
        ramp_steps = self.transform_ramp * max(total_steps, 1)
        return 1.0 if ramp_steps <= 0 else min(step / ramp_steps, 1.0)


@dataclass(frozen=True)
class OptimConfig(_Dict):
    lr: float = 1e-4                              # Adam learning rate (Supplement A)
    lr_schedule: str = "constant"                 # constant (Supplement A gives no schedule) | cosine (to lr/100)
    betas: tuple[float, float] = (0.9, 0.99)      # Adam betas (Supplement A)
    edge_weight_lr_scale: float = 1.0             # the edge map weight gamma's (Eq. 12) rate over lr: at 1.0 Adam moves
                                                  # it ~lr per step, so alpha stays ~softplus(-4) = 0.018 for thousands
                                                  # of steps; AutoLink's code [20] learns its edge weights at 512x
    iterations: int = 20000                       # training steps; the 2D ranges grow over them (Supplement A)
    unlabeled_batch: int = 16                     # unlabeled images per step (Supplement A)
    max_labeled_batch: int = 16                   # labeled per step = min(this, n_examples) (Supplement A)
    seed: int = 0                                 # Supplement A fixes every seed to 0
    precision: str = "auto"                       # auto (bf16 where the device runs it natively, models/precision.py) | bf16 | fp32
    tf32: bool = False                            # allow TF32 matmuls on CUDA (suspected to hurt AutoLink)
    compile: bool = False                         # torch.compile detector, UNet and ViT (GPU; slow to start)

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of iteration ``step`` (0-based)."""
        if self.lr_schedule == "constant":
            return self.lr
        t = min(step / max(self.iterations - 1, 1), 1.0)
        return self.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))

    def labeled_batch(self, n_examples: int) -> int:
        return min(self.max_labeled_batch, n_examples)
