"""Geometry-aware image reconstruction (§3.5, Eq. 9; Supplement A).

The image is cut into ``patch`` x ``patch`` squares and 90% of them are blanked at random (a fresh mask
per image and step); the masked image, concatenated with the edge map (Eq. 8), goes through a UNet [62]
that rebuilds the image.  The loss is L1 on pixels plus a ViT perceptual term (Eq. 9): L1 between the
keys of the last attention layer and between the global ([CLS]) tokens of a frozen timm ViT ([75]).

The perceptual network is a choice (``ModelConfig.perceptual_vit``, ``--perceptual-network``), one loss in
two variants: a timm ViT gives the paper's term (``VitPerceptual``); a timm CNN gives the offline
alternative (``CnnPerceptual``: L1 between channel-normalised feature maps of every level, as LPIPS without
learned weights), which a registry package's pretrained weights can serve where no hub is reachable
(``--perceptual-network efficientnet_lite0 --perceptual-weights package``).

The paper's network is [75]'s: a self-supervised DINO ViT (``vit_small_patch8_224.dino``, the default of
``fskp train``), its last layer's keys and its global token.  It runs at the working resolution with its
position embedding resampled by timm (128 px, patch 8: a 16 x 16 token grid), instead of upsampling images
to 224 px.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.pretrained import create_timm_model


def random_patch_mask(n: int, size: int, patch: int, ratio: float, device=None) -> torch.Tensor:
    """[n, 1, size, size] float mask, 1 on the kept patches: round(ratio * patches) masked per image."""
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the masking patch {patch}")
    g = size // patch
    n_masked = round(ratio * g * g)
    rank = torch.rand(n, g * g, device=device).argsort(dim=1).argsort(dim=1)   # a random permutation's ranks
    keep = (rank >= n_masked).float().reshape(n, 1, g, g)
    return keep.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Ronneberger et al.'s UNet [62]: ``levels`` resolutions, width doubled per level, bilinear upsampling,
    skip connections; the output goes through a sigmoid so the image stays in [0, 1]."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, width: int = 32, levels: int = 4):
        super().__init__()
        widths = [width * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i - 1], widths[i]) for i in range(1, levels)])
        self.up = nn.ModuleList([_double_conv(widths[i] + widths[i - 1], widths[i - 1])
                                 for i in range(levels - 1, 0, -1)])
        self.out = nn.Conv2d(widths[0], out_channels, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return torch.sigmoid(self.out(x))


class VitPerceptual(nn.Module):
    """Frozen timm ViT giving Eq. 9's features Gamma(I): (last-layer attention keys, final [CLS] token)."""

    def __init__(self, name: str, image_size: int, weights: str = "auto"):
        super().__init__()
        self.vit, self.weights_source = create_timm_model(name, weights, img_size=image_size, num_classes=0)
        if getattr(self.vit, "cls_token", None) is None:
            raise ValueError(f"{name}: the perceptual loss needs a ViT with a [CLS] token")
        data = timm.data.resolve_model_data_config(self.vit)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always in eval mode (no dropout, frozen)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] in [0, 1] -> (keys [N, T, D], cls [N, D])."""
        vit = self.vit
        x = vit.patch_embed((images - self.mean) / self.std)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        for block in vit.blocks[:-1]:
            x = block(x)
        last = vit.blocks[-1]
        attn = last.attn
        dim = x.shape[-1]
        keys = attn.qkv(last.norm1(x))[..., dim:2 * dim]                # heads' keys side by side
        keys = attn.k_norm(keys.unflatten(-1, (attn.num_heads, -1))).flatten(-2)
        cls = vit.norm(last(x))[:, 0]
        return keys, cls

    def loss(self, reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """||Gamma(I) - Gamma(I')||_1 of Eq. 9, as mean absolute differences of keys plus of [CLS] tokens."""
        with torch.no_grad():
            keys_t, cls_t = self(target)
        keys_r, cls_r = self(reconstructed)
        return F.l1_loss(keys_r.float(), keys_t.float()) + F.l1_loss(cls_r.float(), cls_t.float())


class CnnPerceptual(nn.Module):
    """Frozen timm CNN giving Eq. 9's features Gamma(I) as its feature maps at every level (offline variant)."""

    def __init__(self, name: str, image_size: int, weights: str = "auto"):
        super().__init__()
        self.net, self.weights_source = create_timm_model(name, weights, features_only=True)
        data = timm.data.resolve_model_data_config(self.net)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always in eval mode (BatchNorm statistics frozen)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [N, 3, H, W] in [0, 1] -> feature maps [N, C_l, H_l, W_l], unit length over channels."""
        return [F.normalize(f.float(), dim=1) for f in self.net((images - self.mean) / self.std)]

    def loss(self, reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """||Gamma(I) - Gamma(I')||_1 of Eq. 9 with CNN features: mean absolute difference per level, summed."""
        with torch.no_grad():
            wanted = self(target)
        return sum(F.l1_loss(r, t) for r, t in zip(self(reconstructed), wanted))


def is_vit(name: str) -> bool:
    """Is timm model ``name`` a vision transformer with the blocks and [CLS] token ``VitPerceptual`` reads?"""
    from timm.models import get_arch_name, model_entrypoint

    if not timm.is_model(name):
        raise ValueError(f"unknown perceptual network {name!r} (any timm ViT or CNN name; see timm.list_models())")
    return model_entrypoint(get_arch_name(name)).__module__ == "timm.models.vision_transformer"


def perceptual_network(name: str, image_size: int, weights: str = "auto") -> nn.Module:
    """The perceptual term's network: the paper's ViT keys + [CLS] for a ViT, the CNN variant otherwise."""
    return (VitPerceptual if is_vit(name) else CnnPerceptual)(name, image_size, weights)


def reconstruction_loss(unet: UNet, perceptual: nn.Module, images: torch.Tensor, edges: torch.Tensor,
                        mask_ratio: float, patch: int, mask: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9.  images [N, 3, H, W] in [0, 1]; edges [N, 1, R, R] (resized to H if R differs); mask [N, 1, H, W]
    (1 = kept) to reuse one, else a fresh ``random_patch_mask``.

    Returns (loss, reconstructed images [N, 3, H, W])."""
    N, _, H, W = images.shape
    if edges.shape[-1] != W:
        edges = F.interpolate(edges, size=(H, W), mode="bilinear", align_corners=False)
    if mask is None:
        mask = random_patch_mask(N, H, patch, mask_ratio, images.device)
    masked = images * mask
    reconstructed = unet(torch.cat([masked, edges.to(masked.dtype)], dim=1))
    loss = F.l1_loss(reconstructed.float(), images.float()) + perceptual.loss(reconstructed, images)
    return loss, reconstructed
