"""How fast ``fskp synth`` makes a dataset: images per second per category, and the time for 10,000.

Each category renders --n images at --size through the same path as ``fskp synth`` (worker processes,
PNG encoding, Parquet writing into a temporary folder), after a small burn-in that loads the modules.
Two figures per category:
  wall  images/s on this machine as it is now, and the projected wall time for 10,000 images;
  cpu   CPU seconds per image summed over all processes, and the time that projects to on --cores idle
        cores.  Other processes sharing the CPU inflate the wall figure but hardly the CPU one, so the CPU
        figure is the one to compare between runs.  Both include starting the worker processes (a few
        seconds of importing torch each), which a pool of 10,000 amortises better than --n images.
Nothing is asserted: this prints figures.

  .venv/bin/python benchmarks/synth_speed.py [--n 384] [--size 128] [--workers N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synth import CATEGORIES  # noqa: E402
from pipeline.synth.dataset import default_workers, generate, resolve_device  # noqa: E402
from models.precision import machine_summary  # noqa: E402

TARGET = 10_000


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=384, help="images per category (default 384)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=default_workers(), help="rendering processes (default: cores)")
    p.add_argument("--cores", type=int, default=2, help="idle cores to project the CPU figure onto (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"synth speed: {args.n} images per category at {args.size}px, device {device}, {args.workers} worker(s); "
          f"load average {os.getloadavg()[0]:.1f}; {machine_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        generate(args.categories[0], Path(tmp) / "burn-in", 5, size=args.size, workers=1, device=device,
                 progress=False)
        for name in args.categories:
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            generate(name, Path(tmp) / name, args.n, size=args.size, workers=args.workers, device=device,
                     progress=False)
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            rate = args.n / wall
            print(f"  {name:7s} wall {rate:6.1f} images/s -> {TARGET:,} in {TARGET / rate / 60:5.1f} min   "
                  f"cpu {1000 * cpu / args.n:6.1f} ms/image -> {TARGET:,} in "
                  f"{TARGET * cpu / args.n / args.cores / 60:5.1f} min on {args.cores} idle cores")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
