"""Seconds per training step (models/train_step.py) at the paper's settings and at a small CPU setting.

Paper settings (Supplement A): 128x128 images, WFLW's 98 keypoints and its card's links/parts/smoothing,
resnet50 detector, 16 unlabeled + 10 labeled images per step, every loss of the full method.  The batch is
random tensors already in memory, so the figure is the step's compute alone (no data loading).  Burn-in
steps first, then timed steps with device synchronisation; prints figures, asserts nothing.

    .venv/bin/python benchmarks/train_step.py                      # both settings, fp32 and bf16 on a CPU
    .venv/bin/python benchmarks/train_step.py --settings paper --precision bf16 --steps 5

The last line is ``paper-settings: <seconds> s/step`` for the first precision given (default: fp32 on a CPU,
auto on CUDA); the line before the figures says what ``auto`` picks on this machine and why.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from models.precision import machine_summary, resolve_precision
from models.config import LossConfig, ModelConfig, OptimConfig
from models.model import KeypointModel
from models.train_step import make_optimizer, train_step
from pipeline.card import load_card


def settings(name: str) -> tuple[ModelConfig, int, int, str]:
    """(model config, unlabeled per step, labeled per step, description)."""
    if name == "paper":
        card = load_card("wflw")
        cfg = ModelConfig.from_card(card, backbone="resnet50", image_size=128, backbone_weights="none",
                                    perceptual_weights="none")
        return cfg, 16, 10, (f"resnet50, 128 px, K={card.num_keypoints} ({len(card.links)} links, "
                             f"{len(card.parts)} parts), 16 unlabeled + 10 labeled, full method")
    cfg = ModelConfig(num_keypoints=5, links=((0, 1), (1, 2), (2, 3), (3, 4)), parts=((0, 1, 2), (2, 3, 4)),
                      flip_permutation=(4, 3, 2, 1, 0), smoothing_groups=((0, 1, 2, 3, 4),), backbone="resnet18",
                      image_size=64, head_channels=64, unet_width=16, backbone_weights="none",
                      perceptual_vit="vit_tiny_patch16_224", perceptual_weights="none")
    return cfg, 8, 4, "resnet18, 64 px, K=5, 8 unlabeled + 4 labeled, full method"


def time_steps(cfg: ModelConfig, n_unlabeled: int, n_labeled: int, precision: str, device: torch.device,
               warmup: int, steps: int, compile_: bool) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each timed step."""
    torch.manual_seed(0)
    model = KeypointModel(cfg).to(device)
    if compile_:
        model.compile_networks()
    optimizer = make_optimizer(model, OptimConfig())
    K, S = cfg.num_keypoints, cfg.image_size
    batch = {"unlabeled": torch.rand(n_unlabeled, 3, S, S, device=device),
             "labeled": torch.rand(n_labeled, 3, S, S, device=device),
             "keypoints": torch.rand(n_labeled, K, 2, device=device) * 1.6 - 0.8,
             "visible": torch.ones(n_labeled, K, dtype=torch.bool, device=device)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(model, optimizer, batch, step=1000 + i, total_steps=20000, cfg=LossConfig(), precision=precision)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    p.add_argument("--precision", nargs="+", default=None, choices=["auto", "fp32", "bf16"],
                   help="default: auto, plus bf16 on a CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (GPU)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = args.precision or (["auto"] if device.type == "cuda" else ["fp32", "bf16"])
    auto = resolve_precision("auto", device.type)
    print(f"auto precision here: {auto.name} ({auto.reason})")
    print(f"machine: {machine_summary()}; {torch.get_num_threads()} CPU threads")
    paper_figure = None
    for name in args.settings:
        cfg, n_unlabeled, n_labeled, description = settings(name)
        print(f"{name}: {description}")
        for precision in precisions:
            times, cpu = time_steps(cfg, n_unlabeled, n_labeled, precision, device, args.warmup, args.steps,
                                    args.compile)
            median = statistics.median(times)
            # CPU seconds per thread: on a machine shared with other jobs, wall time also counts waiting
            per_thread = statistics.median(cpu) / torch.get_num_threads()
            print(f"  {precision:>4}: {median:.3f} s/step (median of {len(times)}; min {min(times):.3f}, "
                  f"max {max(times):.3f}; CPU time / threads {per_thread:.3f} s)", flush=True)
            if name == "paper" and paper_figure is None:
                paper_figure = median
    if paper_figure is not None:
        print(f"paper-settings: {paper_figure:.2f} s/step")


if __name__ == "__main__":
    main()
