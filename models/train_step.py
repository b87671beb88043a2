"""One training iteration of the method (§3) for any loop, Ray Train's included, and ``predict``.

Batch contract (what the data side delivers; tensors on any device, moved to the model's):
    "unlabeled": float32 [B, 3, H, W] in [0, 1]   (B may be 0, or the key absent, for the supervised variant)
    "labeled":   float32 [L, 3, H, W] in [0, 1]
    "keypoints": float32 [L, K, 2] in [-1, 1], x = 2 * x_px / W - 1 (pixel centres at integer + 0.5)
    "visible":   bool [L, K]

``train_step`` returns the losses as detached tensors; it never reads a value back to the host, so on a
GPU the caller decides when to synchronise (e.g. ``{k: v.item() ...}`` only on logging steps).

The losses are computed inside the model's forward (``model(batch, step=..., total_steps=..., cfg=...)``,
see models/losses.py), so ``model`` may be a ``KeypointModel`` or one wrapped by DistributedDataParallel
(Ray Train's ``prepare_model``): every parameter is then used inside DDP's forward, as DDP requires.
"""
from __future__ import annotations


import torch

from models.config import LossConfig, OptimConfig
from models.losses import LOSS_NAMES  # noqa: F401  (re-exported: the names train_step returns)
from models.model import KeypointModel
from models.precision import resolve_precision
from models.variants import get_variant


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (auto | bf16 | fp32) on ``device``: bf16, or None for float32.
    ``auto`` is bf16 only where the device runs it natively and faster (models/precision.py)."""
    return resolve_precision(precision, device.type).autocast_dtype


def prepare_for_training(model: KeypointModel, loss_cfg: LossConfig, optim_cfg: OptimConfig,
                         device: str | torch.device) -> KeypointModel:
    """Before wrapping (DDP) and building the optimiser: freeze what the variant never uses (the UNet and
    the edge parameters without reconstruction, so DDP needs no unused-parameter search), move to
    ``device``, set TF32 as configured and torch.compile the networks if asked."""
    uses_recon = get_variant(loss_cfg.variant).recon
    model.unet.requires_grad_(uses_recon)
    model.edges.requires_grad_(uses_recon)
    torch.backends.cuda.matmul.allow_tf32 = optim_cfg.tf32
    torch.backends.cudnn.allow_tf32 = optim_cfg.tf32
    model = model.to(device)
    if optim_cfg.compile:
        model.compile_networks()
    return model


def make_optimizer(model: KeypointModel | torch.nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    """Adam, lr 1e-4, betas (0.9, 0.99) (Supplement A) over everything but the frozen ViT; the edge map's
    weight gamma (Eq. 12) at ``cfg.edge_weight_lr_scale`` times the rate (each group's ``lr_scale``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own_rate = cfg.edge_weight_lr_scale != 1.0           # else one group, as checkpoints before this option hold
    edge_weight = [p for n, p in named if own_rate and n.endswith("edges.gamma")]
    rest = [p for n, p in named if not (own_rate and n.endswith("edges.gamma"))]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if edge_weight:
        groups.append({"params": edge_weight, "lr_scale": cfg.edge_weight_lr_scale})
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=named[0][1].device.type == "cuda")


def train_step(model: KeypointModel | torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, step: int,
               total_steps: int, cfg: LossConfig, precision: str = "auto",
               after_backward=None) -> dict[str, torch.Tensor]:
    """One iteration: forward under autocast, backward, Adam step.  Returns detached losses (no host sync).

    ``after_backward(model)`` runs between backward and the optimiser step (e.g. averaging gradients
    across data-parallel workers)."""
    model.train()
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    dtype = autocast_dtype(device, precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = model(batch, step=step, total_steps=total_steps, cfg=cfg)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if after_backward is not None:
        after_backward(model)
    optimizer.step()
    return {name: value.detach() for name, value in losses.items()}


@torch.inference_mode()
def predict(model: KeypointModel | torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
            precision: str = "auto") -> dict[str, torch.Tensor]:
    """images [N, 3, H, W] in [0, 1] -> {"keypoints" [N, K, 2] in [-1, 1], "uncertainty" [N, K] in (0, 1)
    (0 = certain: 1 - sigmoid(v), the complement of the edge strength of Eq. 7), "depth" [N, K]}, float32,
    on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    out: dict[str, list[torch.Tensor]] = {"keypoints": [], "uncertainty": [], "depth": []}
    for chunk in images.split(batch_size):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            det = model(chunk.to(device))
        out["keypoints"].append(det.keypoints.float())
        out["uncertainty"].append(1.0 - torch.sigmoid(det.certainty.float()))
        out["depth"].append(det.depth.float())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}
