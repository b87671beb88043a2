"""Video inference end to end: frames per second and peak memory of `fskp predict --video` on a 640x480 video,
at two or more video lengths (memory flat in video length is the point of streaming).

For each length a synthetic 640x480, 30 frames/s H.264 video (a textured background with moving blobs, a
keyframe every 250 frames as a camera would write) is encoded once, then `fskp predict --checkpoint C --video V
--out O` runs as a user would type it, in its own process: Ray start, model actors, decoding, prediction and the
DeepLabCut CSV/HDF5 outputs all count.  Memory is sampled every ``--sample-every`` seconds (default 5; a sample
reads every process's smaps_rollup, CPU the run would otherwise have, reported as "sampler CPU s") over that process
and all its children (the Ray processes it starts): the peak of the summed PSS (each shared page split between the
processes that map it: what the run takes from the machine), of the summed RSS (shared pages such as Ray's object
store counted once per process that touched them: an over-count) and of the driver's own RSS; the summed PSS's
peak in each quarter of the run (flat in video length: once the stream of decoded frames has filled its share of
the object store, the quarters stay level); the same two for the "held" part of the PSS, its anonymous and
shared-memory pages (heaps and Ray's object store: what the OS cannot take back without swap, unlike the pages of
mapped files such as the prediction arrays, which are page cache); and the summed PSS by kind of process (the
driver, Ray's daemons, Ray workers by the task or actor they run, with how many processes of each kind there were)
at the run's peak, to tell where memory goes; with ``--by-mapping KIND``,
the processes of that kind by what their pages map (heap, object store, libraries).  Prints figures, asserts nothing.

    .venv/bin/python benchmarks/video_speed.py --minutes 1,4
    .venv/bin/python benchmarks/video_speed.py --minutes 60 --checkpoint runs/label-.../checkpoint_.../model.pt
    .venv/bin/python benchmarks/video_speed.py --minutes 4,15 --work DIR --by-mapping Predictor

Without ``--checkpoint`` the model is the architecture `fskp label` trains (jobs/commands/label.py's defaults:
resnet18 at 192 px) with untrained weights, said in the output: speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, FPS, GOP = 640, 480, 30, 250


def write_video(path: Path, frames: int, seed: int = 0) -> Path:
    """A 640x480 H.264 video: a fixed textured background and three blobs moving on smooth paths."""
    import av

    rng = np.random.default_rng(seed)
    background = (rng.integers(60, 120, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
                  .repeat(8, 0).repeat(8, 1))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"g": str(GOP), "preset": "veryfast", "crf": "23"}
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(video_frame(background, i), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def video_frame(background: np.ndarray, i: int, radius: int = 30) -> np.ndarray:
    """Frame ``i`` of ``write_video``: the background with three discs of ``radius`` px, each drawn inside its
    bounding box only (an hour of frames is encoded in minutes, not an hour)."""
    image = background.copy()
    for b in range(3):
        cx = WIDTH / 2 + 200 * np.sin(i / 40 + 2 * b)
        cy = HEIGHT / 2 + 150 * np.cos(i / 55 + b)
        y0, y1 = max(int(cy) - radius - 1, 0), min(int(cy) + radius + 2, HEIGHT)
        x0, x1 = max(int(cx) - radius - 1, 0), min(int(cx) + radius + 2, WIDTH)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1][(xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2] = (220, 80 + 60 * b, 60)
    return image


def untrained_checkpoint(path: Path) -> Path:
    """model.pt of `fskp label`'s architecture (synth_animal's keypoints) with untrained weights."""
    import torch

    from jobs.commands.label import LABEL_DEFAULTS
    from models.config import ModelConfig
    from models.model import KeypointModel
    from pipeline.card import load_card

    card = load_card("synth_animal")
    config = ModelConfig.from_card(card, backbone=LABEL_DEFAULTS["backbone"], image_size=LABEL_DEFAULTS["size"],
                                   backbone_weights="none", perceptual_weights="none")
    torch.save({**KeypointModel(config).checkpoint(), "step": 0, "card_name": card.name,
                "card_fingerprint": card.fingerprint, "num_keypoints": card.num_keypoints,
                "keypoint_names": list(card.keypoints)}, path)
    return path


def process_tree(pid: int) -> set[int]:
    """A process and all its descendants (Linux /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(children)
        frontier = children
    return tree


def rollup(pid: int) -> dict[str, int]:
    """Bytes of each /proc/<pid>/smaps_rollup field ({} for a process gone): ``Rss`` counts every page the
    process maps, shared ones (Ray's object store in /dev/shm, libraries) in full; ``Pss`` splits each shared
    page between its users, and splits into ``Pss_Anon`` (heap), ``Pss_Shmem`` (Ray's object store) and
    ``Pss_File`` (libraries and mapped files such as the prediction arrays: page cache the OS can drop)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[name] = int(rest.split()[0]) * 1024
    return fields


def process_kind(pid: int, driver: int) -> str:
    """What a process of the tree is, from its command line: "driver" (`fskp predict`), Ray's own daemons
    (raylet, gcs_server, dashboard, ...), or a Ray worker by the task or actor it runs (``ray::Name``)."""
    if pid == driver:
        return "driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    for word in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor", "runtime_env"):
        if any(word in a for a in argv[:3]):
            return word
    return Path(argv[0]).name or "?"


def pss_by_mapping(pid: int) -> dict[str, int]:
    """One process's Pss by what its pages map, from /proc/<pid>/smaps: "object store" (Ray's shared memory,
    /dev/shm), "libraries" (.so files), "heap" (anonymous memory: malloc, torch's tensors), "other files" (the
    rest that names a file), or the kernel's name for a special mapping ([stack], [vvar], ...)."""
    by_mapping: dict[str, int] = {}
    where = "heap"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return by_mapping
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):       # a mapping's header line
            name = fields[5] if len(fields) > 5 else ""
            where = ("object store" if "plasma" in name or name.startswith("/dev/shm") else
                     "libraries" if ".so" in name else
                     "heap" if name in ("", "[heap]") else
                     name if name.startswith("[") else "other files")
        elif fields and fields[0] == "Pss:":
            by_mapping[where] = by_mapping.get(where, 0) + int(fields[1]) * 1024
    return by_mapping


def tree_memory(pid: int) -> dict:
    """{"rss": summed Rss of the tree (shared pages counted once per process), "pss": summed Pss (what the
    tree takes from the machine), "held": the part of that PSS in anonymous and shared-memory pages (what the
    OS cannot drop without swap: the PSS less mapped files), "driver": the `fskp predict` process's own Rss,
    "driver_anon": the part of it in anonymous pages (its heap; the rest is files it maps: libraries and the
    file-backed prediction arrays, which the OS can drop), "pss_by_kind": {``process_kind``: summed Pss},
    "kinds": {pid: its ``process_kind``}}."""
    tree = process_tree(pid)
    memory = {p: rollup(p) for p in tree}
    kinds = {p: process_kind(p, pid) for p in tree}
    by_kind: dict[str, int] = {}
    for p, m in memory.items():
        by_kind[kinds[p]] = by_kind.get(kinds[p], 0) + m.get("Pss", 0)
    total = lambda field: sum(m.get(field, 0) for m in memory.values())       # noqa: E731
    return {"rss": total("Rss"), "pss": total("Pss"), "held": total("Pss_Anon") + total("Pss_Shmem"),
            "driver": memory[pid].get("Rss", 0), "driver_anon": memory[pid].get("Anonymous", 0),
            "pss_by_kind": by_kind, "kinds": kinds}


def run_predict(checkpoint: Path, video: Path, out: Path, extra: list[str],
                sample_every: float, by_mapping: str | None = None) -> tuple[float, dict, str]:
    """(wall seconds, peak of each ``tree_memory`` figure and the sampler's own CPU seconds, output) of one
    `fskp predict` run; its progress lines are echoed to stderr as they come.  With ``by_mapping`` (part of
    a ``process_kind``, or several comma-separated), also the peak of each ``pss_by_mapping`` category summed
    over the processes of those kinds."""
    command = [sys.executable, "-m", "jobs.cli", "predict", "--checkpoint", str(checkpoint), "--video", str(video),
               "--out", str(out), "--suggestions", "0", "--no-overlay", *extra]
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak: dict = {"rss": 0, "pss": 0, "held": 0, "driver": 0, "driver_anon": 0, "pss_by_kind": {},
                  "pss_by_kind_at_peak": {}, "count_at_peak": {}, "pss_by_mapping": {}}
    samples: list[tuple[float, int, int]] = []         # (seconds since start, summed PSS, its held part)
    mapped_kinds = by_mapping.split(",") if by_mapping else []

    def sample():
        # reading smaps_rollup walks each process's page tables: every 0.5 s this took ~40 % of a core from the
        # 2-core run it measured, so it samples every few seconds and reports what it cost
        while proc.poll() is None:
            memory = tree_memory(proc.pid)
            by_kind, kinds = memory.pop("pss_by_kind"), memory.pop("kinds")
            if memory["pss"] > peak["pss"]:
                peak["pss_by_kind_at_peak"] = by_kind
                peak["count_at_peak"] = Counter(kinds.values())
            for key, value in memory.items():
                peak[key] = max(peak[key], value)
            for kind, value in by_kind.items():
                peak["pss_by_kind"][kind] = max(peak["pss_by_kind"].get(kind, 0), value)
            samples.append((time.time() - t0, memory["pss"], memory["held"]))
            if mapped_kinds:
                mapped: dict[str, int] = {}
                for p, kind in kinds.items():
                    if any(part in kind for part in mapped_kinds):
                        for where, value in pss_by_mapping(p).items():
                            mapped[where] = mapped.get(where, 0) + value
                for where, value in mapped.items():
                    peak["pss_by_mapping"][where] = max(peak["pss_by_mapping"].get(where, 0), value)
            time.sleep(sample_every)
        peak["sampler_cpu_s"] = time.thread_time()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "frames/s" in line:
            print(f"  {time.time() - t0:6.0f} s  {line.strip()}", file=sys.stderr, flush=True)
    proc.wait()
    took = time.time() - t0
    sampler.join()
    output = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"fskp predict failed ({proc.returncode}):\n{output[-3000:]}")
    # flat in video length means: once the stream is full, memory stops growing -- the peak of each quarter
    for n, key in ((1, "pss_by_quarter"), (2, "held_by_quarter")):
        peak[key] = [max((s[n] for s in samples if q * took / 4 <= s[0] < (q + 1) * took / 4), default=0)
                     for q in range(4)]
    return took, peak, output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="1,4", help="video lengths in minutes, comma-separated")
    p.add_argument("--checkpoint", help="model.pt to run (default: fskp label's architecture, untrained)")
    p.add_argument("--work", help="folder for the videos and outputs (default: a temporary folder)")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between memory samples (each costs CPU the measured run would otherwise have)")
    p.add_argument("--by-mapping", metavar="KIND",
                   help="also break one kind of process down by what its pages map (heap, Ray's object store, "
                        "libraries, ...), e.g. Predictor for the model actors (processes whose kind contains KIND, "
                        "or one of several comma-separated: IDLE,video_frames for the decoding workers, idle or not); "
                        "reads their full smaps each sample")
    p.add_argument("predict_args", nargs="*", help="extra `fskp predict` options after --, e.g. -- --actors 1")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from models.precision import machine_summary

    work = Path(args.work or tempfile.mkdtemp(prefix="fskp-video-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(work / "untrained.pt")
    print(f"video inference, 640x480 H.264 at {FPS} frames/s; model: "
          f"{checkpoint if args.checkpoint else 'fskp label architecture, untrained weights'}; {machine_summary()}",
          flush=True)
    print("| video | frames | encode s | predict wall s | frames/s | peak PSS GiB | peak PSS by quarter of the run | "
          "peak held GiB | peak held by quarter | peak RSS sum GiB | driver RSS GiB | driver anonymous GiB | "
          "sampler CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for minutes in [float(m) for m in args.minutes.split(",")]:
        frames = int(round(minutes * 60 * FPS))
        video = work / f"video-{minutes:g}min.mp4"
        t0 = time.time()
        if not video.exists():
            write_video(video, frames)
        encode = time.time() - t0
        out = work / f"predict-{minutes:g}min"
        took, peak, output = run_predict(checkpoint, video, out, args.predict_args, args.sample_every, args.by_mapping)
        rates = [line for line in output.splitlines() if "frames/s" in line]
        gib = {k: peak[k] / 2 ** 30 for k in ("rss", "pss", "held", "driver", "driver_anon")}
        quarters, held = (" / ".join(f"{m / 2 ** 30:.2f}" for m in peak[key])
                          for key in ("pss_by_quarter", "held_by_quarter"))
        print(f"| {minutes:g} min | {frames} | {encode:.0f} | {took:.0f} | {frames / took:.1f} | {gib['pss']:.2f} | "
              f"{quarters} | {gib['held']:.2f} | {held} | {gib['rss']:.2f} | {gib['driver']:.2f} | "
              f"{gib['driver_anon']:.2f} | {peak['sampler_cpu_s']:.1f} |", flush=True)
        if rates:
            print(f"  (last progress line: {rates[-1].strip()})", flush=True)
        kinds = sorted(peak["pss_by_kind"], key=lambda k: -peak["pss_by_kind"][k])
        count = lambda k: f" x{peak['count_at_peak'][k]}" if peak["count_at_peak"].get(k, 1) > 1 else ""  # noqa: E731
        print("  PSS GiB by process, at the run's peak (xN: N processes then; each kind's own peak): " + ", ".join(
            f"{k} {peak['pss_by_kind_at_peak'].get(k, 0) / 2 ** 30:.2f}{count(k)} "
            f"({peak['pss_by_kind'][k] / 2 ** 30:.2f})"
            for k in kinds if peak["pss_by_kind"][k] >= 2 ** 24), flush=True)
        if args.by_mapping:
            mapped = sorted(peak["pss_by_mapping"].items(), key=lambda kv: -kv[1])
            print(f"  {args.by_mapping} PSS GiB by mapping, each one's own peak: " + (", ".join(
                f"{where} {value / 2 ** 30:.3f}" for where, value in mapped if value >= 2 ** 20) or
                "no such process seen"), flush=True)


if __name__ == "__main__":
    main()
