"""Tests for device / thread / bf16 selection (napari_diffseg.core.device)."""

from __future__ import annotations

import pytest
import torch

from napari_diffseg.core import device as dev
from napari_diffseg.core.errors import DiffsegError


@pytest.fixture(autouse=True)
def _clean_env_and_threads(monkeypatch):
    monkeypatch.delenv(dev.THREADS_ENV, raising=False)
    monkeypatch.delenv(dev.BF16_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_is_always_selectable():
    assert dev.select_device("cpu") == torch.device("cpu")
    assert dev.select_device(" CPU ") == torch.device("cpu")


def test_auto_picks_cpu_when_no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.select_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.select_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.select_device("auto").type == "mps"


def test_requesting_cuda_follows_this_machine():
    if torch.cuda.is_available():
        assert dev.select_device("cuda").type == "cuda"
        return
    with pytest.raises(DiffsegError, match="CUDA is not available"):
        dev.select_device("cuda")
    with pytest.raises(DiffsegError, match="CUDA is not available"):
        dev.select_device("cuda:0")


def test_cuda_message_names_cpu_only_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DiffsegError, match="CPU-only build"):
        dev.select_device("cuda")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DiffsegError, match="only 1 CUDA"):
        dev.select_device("cuda:3")


def test_requesting_mps_when_unavailable_raises(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DiffsegError, match="MPS is not available"):
        dev.select_device("mps")


def test_unknown_device_raises():
    with pytest.raises(DiffsegError, match="unknown device"):
        dev.select_device("tpu")
    with pytest.raises(DiffsegError, match="unknown device"):
        dev.select_device("cuda:x")


def test_configure_threads_default_is_cores_minus_one(monkeypatch):
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 4)
    assert dev.configure_threads() == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 1)
    assert dev.configure_threads() == 1
    monkeypatch.setattr(dev.os, "cpu_count", lambda: None)
    assert dev.configure_threads() == 1


def test_configure_threads_without_a_spare_core_uses_every_core(monkeypatch):
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 4)
    assert dev.configure_threads(spare_core=False) == 4
    assert torch.get_num_threads() == 4
    monkeypatch.setenv(dev.THREADS_ENV, "2")
    assert dev.configure_threads(spare_core=False) == 2  # the environment still decides


def test_configure_threads_explicit_and_env(monkeypatch):
    assert dev.configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setenv(dev.THREADS_ENV, "2")
    assert dev.configure_threads() == 2
    assert torch.get_num_threads() == 2
    assert dev.configure_threads(1) == 1  # an explicit number beats the environment


@pytest.mark.parametrize("value", ["zero", "0", "-2"])
def test_configure_threads_bad_env(monkeypatch, value):
    monkeypatch.setenv(dev.THREADS_ENV, value)
    with pytest.raises(DiffsegError, match=dev.THREADS_ENV):
        dev.configure_threads()


def test_configure_threads_rejects_bad_numbers():
    with pytest.raises(DiffsegError):
        dev.configure_threads(0)
    with pytest.raises(DiffsegError):
        dev.configure_threads(1.5)


def _fake_cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n")
    return path


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse2 avx2 avx512f avx512_bf16", True),
    ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ("fpu sse2 avx2 avx512f avx512bw", False),
    ("", False),
])
def test_bf16_on_cpu_follows_cpu_flags(monkeypatch, tmp_path, flags, expected):
    monkeypatch.setattr(dev, "CPUINFO_PATH", _fake_cpuinfo(tmp_path, flags))
    assert dev.bf16_supported("cpu") is expected
    assert dev.bf16_supported(torch.device("cpu")) is expected


def test_bf16_false_without_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, "CPUINFO_PATH", tmp_path / "missing")
    assert dev.cpu_flags() == frozenset()
    assert dev.bf16_supported("cpu") is False


def test_cpu_flags_parses_real_cpuinfo():
    flags = dev.cpu_flags()
    assert flags, "this Linux machine has /proc/cpuinfo with a flags line"
    assert dev.bf16_supported("cpu") is bool(flags & {"avx512_bf16", "amx_bf16"})


def test_bf16_env_override(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, "CPUINFO_PATH", _fake_cpuinfo(tmp_path, "avx2"))
    assert dev.bf16_supported("cpu") is False
    monkeypatch.setenv(dev.BF16_ENV, "1")
    assert dev.bf16_supported("cpu") is True
    monkeypatch.setattr(dev, "CPUINFO_PATH", _fake_cpuinfo(tmp_path, "avx512_bf16"))
    monkeypatch.setenv(dev.BF16_ENV, "0")
    assert dev.bf16_supported("cpu") is False
    monkeypatch.setenv(dev.BF16_ENV, "maybe")
    with pytest.raises(DiffsegError, match=dev.BF16_ENV):
        dev.bf16_supported("cpu")


def test_bf16_cuda_unavailable_is_false(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.bf16_supported("cuda") is False


def test_describe_torch():
    dev.configure_threads(1)
    text = dev.describe_torch("cpu")
    assert text.startswith(f"torch {torch.__version__} (")
    assert "device cpu" in text
    assert text.endswith("1 thread(s)")
    build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
    assert build in text


def test_describe_torch_reports_given_threads():
    assert dev.describe_torch("cpu", threads=3).endswith("3 thread(s)")


def test_describe_torch_defaults_to_auto_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "device cpu," in dev.describe_torch()
