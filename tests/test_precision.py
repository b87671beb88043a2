"""Precision by capability (models/precision.py): what ``auto`` picks from what the CPU reports, the probe's cache,
and the warning for bf16 where it is emulated.  The capability queries are mocked: these tests say what
happens on an AVX2-only laptop, an AMX server and an AVX-512 BF16 CPU, whatever CPU runs them."""
from __future__ import annotations

import json

import pytest
import torch

from models import precision as P


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("FSKP_CACHE_DIR", str(tmp_path / "cache"))
    P.resolve_precision.cache_clear()
    yield
    P.resolve_precision.cache_clear()


def cpu(monkeypatch, capability: str, onednn_bf16: bool, flags: set[str] = frozenset(), probe=None):
    """Make this process look like a CPU reporting ``capability``, oneDNN bf16 support and cpuinfo ``flags``."""
    calls = []
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(P, "_onednn_bf16", lambda: onednn_bf16)
    monkeypatch.setattr(P, "_cpu_flags", lambda: ("Test CPU", set(flags)))

    def fake_probe():
        calls.append(1)
        if probe is None:
            raise AssertionError("the probe should not run for a CPU whose capability is clear")
        return probe
    monkeypatch.setattr(P, "run_probe", fake_probe)
    return calls


def test_auto_is_float32_on_an_avx2_cpu(monkeypatch):
    calls = cpu(monkeypatch, "AVX2", onednn_bf16=False, flags={"avx2", "fma"})
    choice = P.resolve_precision("auto", "cpu")
    assert choice.name == "fp32" and choice.autocast_dtype is None
    assert "AVX2" in choice.reason and "no native bf16" in choice.reason
    assert not calls                                     # clear from the capability: no timing


def test_auto_is_bf16_on_an_amx_cpu(monkeypatch):
    calls = cpu(monkeypatch, "AVX512", onednn_bf16=True, flags={"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    choice = P.resolve_precision("auto", "cpu")
    assert choice.name == "bf16" and choice.autocast_dtype is torch.bfloat16
    assert "AMX" in choice.reason
    assert not calls


@pytest.mark.parametrize("speedup, expected", [(1.9, "bf16"), (1.05, "fp32")])
def test_an_unclear_cpu_is_probed_once_and_the_result_cached(monkeypatch, tmp_path, speedup, expected):
    calls = cpu(monkeypatch, "AVX512", onednn_bf16=True, flags={"avx512f", "avx512_bf16"}, probe=speedup)
    assert P.resolve_precision("auto", "cpu").name == expected
    assert len(calls) == 1
    cache = json.loads((tmp_path / "cache" / "precision-probe.json").read_text())
    assert [v["bf16_speedup"] for v in cache.values()] == [speedup]
    P.resolve_precision.cache_clear()                      # a new process on the same machine
    again = P.resolve_precision("auto", "cpu")
    assert again.name == expected and len(calls) == 1      # read from the cache, not measured again
    assert f"{speedup:.2f}x" in again.reason


def test_the_cache_is_per_machine(monkeypatch):
    calls = cpu(monkeypatch, "AVX512", onednn_bf16=True, flags={"avx512_bf16"}, probe=2.0)
    P.resolve_precision("auto", "cpu")
    P.resolve_precision.cache_clear()
    monkeypatch.setattr(P, "_cpu_flags", lambda: ("Another CPU", {"avx512_bf16", "avx512_vnni"}))
    P.resolve_precision("auto", "cpu")
    assert len(calls) == 2


def test_explicit_bf16_without_native_support_warns_with_the_measured_slowdown(monkeypatch):
    cpu(monkeypatch, "AVX2", onednn_bf16=False, flags={"avx2"}, probe=0.01)
    with pytest.warns(UserWarning, match=r"100\.0x slower than float32"):
        choice = P.resolve_precision("bf16", "cpu")
    assert choice.name == "bf16"                           # obeyed, not overridden
    assert "100.0x slower" in choice.reason


def test_fp32_is_always_float32(monkeypatch):
    cpu(monkeypatch, "AVX512", onednn_bf16=True, flags={"amx_bf16"})
    assert P.resolve_precision("fp32", "cpu").name == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("fp16", "cpu")


def test_the_probe_measures_both_precisions():
    speedup = P.run_probe()                                # real timing on this CPU, whatever it is
    assert 0.0 < speedup < 1000.0


def test_train_step_autocasts_as_resolved(monkeypatch):
    from models.train_step import autocast_dtype

    cpu(monkeypatch, "AVX2", onednn_bf16=False)
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    P.resolve_precision.cache_clear()
    cpu(monkeypatch, "AVX512", onednn_bf16=True, flags={"amx_bf16"})
    assert autocast_dtype(torch.device("cpu"), "auto") is torch.bfloat16
