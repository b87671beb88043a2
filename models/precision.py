"""Which precision a device should compute in: bf16 autocast only where the device runs bf16 natively and faster.

``auto`` (the default of every command) resolves, per device, to

- **CUDA**: bf16 where ``torch.cuda.is_bf16_supported()`` (Ampere and newer), else float32.
- **CPU, clear cases** from what the CPU reports: no native bf16 in oneDNN (AVX2-only x86, most laptops and
  many cluster nodes) → float32, because bf16 is emulated there: a 1024² matmul ran at 0.9 GFLOP/s in bf16
  against 97 in float32 on such a CPU.  AMX (``amx_bf16`` in the CPU flags) → bf16.
- **CPU, unclear cases** (AVX-512 BF16 without AMX, ARM, anything else oneDNN calls bf16-capable): a short
  timed probe — a matmul and a convolution in float32 and in bf16 — picks bf16 only if it is at least
  ``PROBE_MIN_SPEEDUP`` faster.  The probe's result is cached per machine (CPU model, flags, torch
  version, threads) in ``$FSKP_CACHE_DIR`` (default ``~/.cache/fskp``), so it runs once per machine.

An explicit ``bf16`` is obeyed; on a CPU without native bf16 it warns with the measured slowdown.
``fp32`` is always float32.  The resolved choice and its reason are what the training job prints once and
records in MLflow (tags ``fskp.precision`` and ``fskp.precision_reason``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
#: bf16 must beat float32 by this factor in the probe to be chosen by ``auto``
PROBE_MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is "bf16" (autocast) or "fp32"; ``reason`` says why, for people."""

    name: str
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain float32."""
        return torch.bfloat16 if self.name == "bf16" else None


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU reports about itself (the parts that decide bf16)."""

    model: str               # e.g. "AMD EPYC" (from /proc/cpuinfo; platform.processor() elsewhere)
    capability: str          # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, SVE256, ...
    onednn_bf16: bool        # oneDNN has native bf16 kernels here (AVX-512 BF16 or AMX)
    amx: bool                # AMX tiles with bf16 (Sapphire Rapids and newer)

    def describe(self) -> str:
        extra = "AMX" if self.amx else ("native bf16" if self.onednn_bf16 else "no native bf16")
        return f"{self.model}, {os.cpu_count()} cores, torch CPU capability {self.capability} ({extra})"


def _cpu_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; (platform.processor(), empty) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def _onednn_bf16() -> bool:
    """Whether oneDNN (PyTorch's CPU kernels) has native bf16 here (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_features() -> CpuFeatures:
    model, flags = _cpu_flags()
    return CpuFeatures(model=model, capability=torch.backends.cpu.get_cpu_capability(), onednn_bf16=_onednn_bf16(),
                       amx="amx_bf16" in flags)


def machine_summary() -> str:
    """One line naming the machine a figure was measured on (benchmarks print it with every figure)."""
    line = cpu_features().describe()
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line + f"; torch {torch.__version__}"


# ---- the probe ------------------------------------------------------------------------------------------
def _cache_file() -> Path:
    return Path(os.environ.get("FSKP_CACHE_DIR") or Path.home() / ".cache" / "fskp") / "precision-probe.json"


def _machine_key(features: CpuFeatures) -> str:
    _, flags = _cpu_flags()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"{features.model}|{features.capability}|{digest}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _time_ops(dtype: torch.dtype, seconds: float = 0.15) -> float:
    """Seconds per (512² matmul + 3x3 convolution of 8x64x32x32) in ``dtype``: the ops a training step is made of."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=g).to(dtype)
    x = torch.randn(8, 64, 32, 32, generator=g).to(dtype)
    w = torch.randn(64, 64, 3, 3, generator=g).to(dtype)
    with torch.inference_mode():
        a @ a, torch.nn.functional.conv2d(x, w, padding=1)         # warm-up (kernel selection)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            a @ a
            torch.nn.functional.conv2d(x, w, padding=1)
            n += 1
    return (time.perf_counter() - t0) / n


def run_probe() -> float:
    """bf16's speed-up over float32 on this CPU (> 1: bf16 is faster)."""
    return _time_ops(torch.float32) / _time_ops(torch.bfloat16)


def probed_speedup(features: CpuFeatures) -> float:
    """The probe's result for this machine: from the cache, else measured once and cached."""
    path, key = _cache_file(), _machine_key(features)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return float(cache[key]["bf16_speedup"])
    speedup = run_probe()
    cache[key] = {"bf16_speedup": round(speedup, 3), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:                                          # atomic: concurrent workers never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass                                      # a read-only home: the probe simply runs again next time
    return speedup


# ---- resolution -------------------------------------------------------------------------------------------
def _resolve_cpu(requested: str) -> Precision:
    f = cpu_features()
    if requested == "bf16":
        if not f.onednn_bf16:
            slowdown = 1.0 / max(probed_speedup(f), 1e-9)
            warnings.warn(f"--precision bf16 on a CPU without native bf16 ({f.capability}): bf16 measured "
                          f"{slowdown:.1f}x slower than float32 here; use --precision auto", stacklevel=3)
            return Precision("bf16", f"asked for; no native bf16 on this CPU ({f.capability}), "
                                     f"measured {slowdown:.1f}x slower than float32")
        return Precision("bf16", f"asked for; native on this CPU ({f.capability})")
    if not f.onednn_bf16:
        return Precision("fp32", f"auto: no native bf16 on this CPU (capability {f.capability})")
    if f.amx:
        return Precision("bf16", f"auto: AMX bf16 on this CPU (capability {f.capability})")
    speedup = probed_speedup(f)
    if speedup >= PROBE_MIN_SPEEDUP:
        return Precision("bf16", f"auto: bf16 measured {speedup:.2f}x faster than float32 on this CPU "
                                 f"(capability {f.capability}, native bf16)")
    return Precision("fp32", f"auto: bf16 measured only {speedup:.2f}x float32's speed on this CPU "
                             f"(capability {f.capability}); below {PROBE_MIN_SPEEDUP}x")


@functools.lru_cache(maxsize=None)
def resolve_precision(requested: str, device_type: str = "cpu") -> Precision:
    """``auto`` | ``bf16`` | ``fp32`` on a device type ("cpu", "cuda") → the precision to compute in, with why."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return Precision("fp32", "asked for")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "asked for" if requested == "bf16" else "auto: the GPU supports bf16")
        if requested == "bf16":
            warnings.warn("--precision bf16 on a GPU without bf16 support: emulated and slow", stacklevel=2)
            return Precision("bf16", "asked for; this GPU has no native bf16")
        return Precision("fp32", "auto: this GPU has no native bf16")
    if device_type != "cpu":
        return Precision("fp32", f"auto: no bf16 rule for device {device_type!r}") if requested == "auto" \
            else Precision("bf16", "asked for")
    return _resolve_cpu(requested)
