"""Generate a synthetic prepared dataset: N rendered instances of one category, train and test splits.

Instance ``i`` of a pool is drawn from its own generator seeded by (seed, category, i) and rendered with
exactly rounded arithmetic, so it is the same whatever the pool size, batch size or number of workers:
the same seed gives byte-identical data, and a larger pool from one seed contains a smaller one.

Rendering runs in batches, on ``workers`` processes (one torch thread each) on the CPU, or in this process
on a GPU.  The images keep the render's pixels: crop_box is the whole image, so keypoints stay in image
pixels and keypoints_3d in the camera frame recorded in meta.json.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from pipeline.prepared import Instance

TEST_EVERY = 5              # instance i is a test instance when i % TEST_EVERY == TEST_EVERY - 1 (20%)
CPU_BATCH = 64              # instances per render call: amortises the per-step cost of the tracer's last rays
GPU_BATCH = 256
GENERATOR_VERSION = 1       # bump when a change alters what a seed renders


def split_of(index: int) -> str:
    """'test' for every fifth instance (index 4, 9, ...), 'train' for the rest."""
    return "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"


def default_workers() -> int:
    """One rendering process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: what a dataset keeps of a render (the rest, depth maps and occlusion flags, serves tests and previews)
KEPT = ("images", "keypoints", "keypoints_3d", "visible", "boxes")


def render_batch(category_name: str, seed: int, indices: list[int], size: int, device: str = "cpu",
                 fields: tuple[str, ...] = KEPT) -> dict:
    """Render instances ``indices`` of a pool: numpy arrays named like ``render.Rendered``'s ``fields``."""
    from pipeline.synth import load_category
    from pipeline.synth.render import render
    from pipeline.synth.scene import Camera, sample_scene

    category, camera = load_category(category_name), Camera(size)
    scenes = [sample_scene(category, seed, i, camera) for i in indices]
    rendered = render(category, scenes, camera, device=device)
    return {f: getattr(rendered, f) for f in fields}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _batches(n: int, batch: int) -> list[list[int]]:
    return [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]


def rendered_batches(category: str, n: int, *, seed: int = 0, size: int = 128, workers: int = 1,
                     device: str = "cpu", batch: int | None = None) -> Iterator[tuple[list[int], dict]]:
    """Yield (indices, rendered arrays) for instances 0..n-1 in order."""
    batch = batch or (GPU_BATCH if device.startswith("cuda") else CPU_BATCH)
    batches = _batches(n, batch)
    if workers <= 1 or device != "cpu" or len(batches) == 1:
        for indices in batches:
            yield indices, render_batch(category, seed, indices, size, device)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        pending: deque = deque()
        todo = iter(batches)
        for indices in todo:                 # keep a bounded number of batches in flight
            pending.append((indices, pool.submit(render_batch, category, seed, indices, size, device)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            indices, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(render_batch, category, seed, nxt, size, device)))
            yield indices, future.result()


def instances(category: str, n: int, *, seed: int = 0, size: int = 128, workers: int = 1, device: str = "cpu",
              batch: int | None = None) -> Iterator["Instance"]:
    """The pool's instances in index order, as pipeline.prepared.Instance objects."""
    from pipeline.prepared import Instance
    from pipeline.synth import load_category

    name = load_category(category).name
    for indices, r in rendered_batches(category, n, seed=seed, size=size, workers=workers, device=device,
                                       batch=batch):
        for j, i in enumerate(indices):
            yield Instance(id=f"{i:07d}", split=split_of(i), source=f"synth://{name}?seed={seed}&index={i}",
                           keypoints=r["keypoints"][j].astype(np.float64), visible=r["visible"][j],
                           origin=(f"fskp synth {category} --seed {seed}", i), box=tuple(map(float, r["boxes"][j])),
                           keypoints_3d=r["keypoints_3d"][j], image=r["images"][j],
                           crop_box=(0.0, 0.0, float(size), float(size)))


def generate(category: str, out: str | os.PathLike, n: int, *, seed: int = 0, size: int = 128,
             overwrite: bool = False, workers: int | None = None, device: str = "cpu",
             progress: bool = True) -> Path:
    """Render a pool of n instances and write it as a prepared dataset in ``out`` (atomically)."""
    from pipeline.card import load_card
    from pipeline.prepared import write_prepared
    from pipeline.synth import load_category
    from pipeline.synth.scene import Camera

    if n < TEST_EVERY:
        raise ValueError(f"--n must be at least {TEST_EVERY} so that both splits (train, test) are non-empty")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    cat = load_category(category)
    card = load_card(cat.name)
    device = resolve_device(device)
    workers = default_workers() if workers is None else workers
    meta = {"synth": {"category": cat.name, "seed": seed, "n": n, "generator_version": GENERATOR_VERSION,
                      "test_every": TEST_EVERY},
            "camera": Camera(size).as_dict()}
    return write_prepared(out, card, instances(category, n, seed=seed, size=size, workers=workers, device=device),
                          size=size, overwrite=overwrite, extra_meta=meta, progress=progress)
