"""Two sets of `benchmarks/dlc_reaching.py` runs compared seed by seed: each side's mean ± std, and A − B paired.

Each folder is one variant's output of dlc_reaching.py (``--out OUT`` writes ``OUT/<variant>/held_out.json``);
the i-th folder of A is paired with the i-th of B (same seed or frame set), so list them in the same order.

  python benchmarks/paired_runs.py --a benchmarks/out/lite0_fbn_seed{0,1,2}/full \\
      --b benchmarks/out/lite0_fbn_sup_seed{0,1,2}/supervised
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FIGURES = (("mean error", "mean_error_px", "px"), ("median", "median_error_px", "px"), ("PCK", "pck", "%"))


def held_out(folder: Path) -> dict:
    path = folder / "held_out.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a finished dlc_reaching.py variant folder has it)")
    return json.loads(path.read_text())


def spread(values: list[float]) -> str:
    """'v1 / v2 / v3 = mean ± std' (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{' / '.join(f'{v:.1f}' for v in values)} = {statistics.mean(values):.1f} ± {std:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs="+", required=True, help="variant folders of side A, one per seed")
    p.add_argument("--b", nargs="+", required=True, help="variant folders of side B, in the same seed order")
    args = p.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit(f"--a has {len(args.a)} folders and --b {len(args.b)}: pairs need the same number")
    a = [held_out(Path(f)) for f in args.a]
    b = [held_out(Path(f)) for f in args.b]
    print(f"A: {', '.join(args.a)}\nB: {', '.join(args.b)}")
    print("| figure | A | B | A − B, paired |\n| --- | --- | --- | --- |")
    for name, key, unit in FIGURES:
        va, vb = [r[key] for r in a], [r[key] for r in b]
        diff = [x - y for x, y in zip(va, vb)]
        std = statistics.stdev(diff) if len(diff) > 1 else 0.0
        print(f"| {name} ({unit}) | {spread(va)} | {spread(vb)} | "
              f"{' / '.join(f'{d:+.1f}' for d in diff)} = {statistics.mean(diff):+.1f} ± {std:.1f} |")


if __name__ == "__main__":
    main()
