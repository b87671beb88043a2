"""``KeypointModel``: the detector, the edge-map parameters, the UNet and the perceptual ViT in one module.

The config is stored on the module; ``checkpoint()`` returns ``{"config": dict, "state_dict": ...}`` and
``KeypointModel.from_checkpoint`` rebuilds exactly the same network from it (without touching the hub:
every weight, the frozen ViT's included, comes from the state dict).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn

from models.config import LossConfig, ModelConfig
from models.detector import Detection, Detector
from models.edges import EdgeMap
from models.geometry import part_masks, smoothing_triples
from models.losses import compute_losses
from models.reconstruction import UNet, perceptual_network


class KeypointModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.detector = Detector(config)
        self.edges = EdgeMap(config.links, config.edge_resolution or config.image_size)
        self.unet = UNet(in_channels=4, out_channels=3, width=config.unet_width, levels=config.unet_levels)
        self.perceptual = perceptual_network(config.perceptual_vit, config.image_size, config.perceptual_weights)
        # index tensors derived from the card (not saved: they follow from the config)
        self.register_buffer("flip_perm", torch.tensor(config.flip_perm, dtype=torch.long), persistent=False)
        self.register_buffer("smoothing_triples", smoothing_triples(config.smoothing_groups), persistent=False)
        self.register_buffer("part_masks", part_masks(config.parts, config.num_keypoints), persistent=False)

    def forward(self, images_or_batch: torch.Tensor | dict, step: int = 0, total_steps: int = 1,
                cfg: LossConfig | None = None) -> Detection | dict[str, torch.Tensor]:
        """images [N, 3, H, W] in [0, 1] -> Detection(keypoints, certainty, depth, heatmaps);
        a training batch (dict) -> the losses of ``cfg.variant`` (models/losses.py), like torchvision's
        detection models, so DistributedDataParallel wraps the whole training computation."""
        if isinstance(images_or_batch, dict):
            return compute_losses(self, images_or_batch, step, total_steps, cfg or LossConfig())
        return self.detector(images_or_batch)

    def weights_sources(self) -> dict[str, str]:
        """Where each pretrained network's weights came from, as MLflow tags."""
        return {"fskp.backbone_weights": self.detector.weights_source.loaded,
                "fskp.perceptual_weights": self.perceptual.weights_source.loaded}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Detector, edge thickness/weight, UNet (the perceptual ViT is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def compile_networks(self, **kwargs) -> None:
        """torch.compile the convolutional/transformer parts (GPU use; compiling on a 2-core CPU takes minutes)."""
        self.detector.maps = torch.compile(self.detector.maps, **kwargs)
        self.unet.forward = torch.compile(self.unet.forward, **kwargs)
        self.perceptual.forward = torch.compile(self.perceptual.forward, **kwargs)

    def checkpoint(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], map_location: str | torch.device = "cpu") -> "KeypointModel":
        config = ModelConfig.from_dict(checkpoint["config"])
        offline = dataclasses.replace(config, backbone_weights="none", perceptual_weights="none")
        model = cls(offline)
        model.config = config
        model.load_state_dict(checkpoint["state_dict"])
        return model.to(map_location)
