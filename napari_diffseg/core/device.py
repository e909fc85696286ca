"""Device, thread and precision selection: which torch device to run on, how many CPU threads, whether bf16 pays off.

Owns the policy "auto = cuda, then mps, then cpu", the default thread count (cores - 1, or ``DIFFSEG_THREADS``),
the bf16 decision (``DIFFSEG_BF16=0/1`` overrides it) and the one-line description of the torch setup that the CLI
and the GUI show to users. A device that was asked for but is not available is a ``DiffsegError`` with a message
saying what to do, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from napari_diffseg.core.errors import DiffsegError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
THREADS_ENV = "DIFFSEG_THREADS"
BF16_ENV = "DIFFSEG_BF16"
CPUINFO_PATH = Path("/proc/cpuinfo")
# CPU flags (as spelled in /proc/cpuinfo) that mean bf16 matrix arithmetic runs natively, not emulated.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def _cuda_build_note() -> str:
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build; install a CUDA build of torch"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU; check the NVIDIA driver"


def select_device(preference: str = "auto") -> torch.device:
    """Return the torch device for ``preference``: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N", "mps".

    Raises DiffsegError when a specific device is requested but unavailable, or the preference is unknown.
    """
    choice = str(preference).strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        logger.debug("auto device selection chose %s", device)
        return device
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        try:
            device = torch.device(choice)
        except RuntimeError as exc:
            raise DiffsegError(f"unknown device {preference!r}; use one of {', '.join(DEVICE_CHOICES)}") from exc
        if not torch.cuda.is_available():
            raise DiffsegError(f"device {choice!r} requested but CUDA is not available: {_cuda_build_note()}, "
                               "or use --device cpu / auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DiffsegError(f"device {choice!r} requested but only {torch.cuda.device_count()} CUDA "
                               "device(s) are visible")
        return device
    if choice == "mps":
        if not _mps_available():
            built = torch.backends.mps.is_built()
            reason = ("this machine or macOS version has no usable Metal GPU" if built
                      else "this torch build has no MPS support (Apple silicon macOS only)")
            raise DiffsegError(f"device 'mps' requested but MPS is not available: {reason}; "
                               "use --device cpu / auto")
        return torch.device("mps")
    raise DiffsegError(f"unknown device {preference!r}; use one of {', '.join(DEVICE_CHOICES)}")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def default_threads(spare_core: bool = True) -> int:
    """Threads to use when none are given: ``DIFFSEG_THREADS`` if set, else max(1, cpu_count - 1) (one core
    left to the GUI or to a second job) or, with ``spare_core=False``, every core (prediction from the command
    line: 1.8x faster than one thread on 2 cores, benchmarks/predict_speed.md)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise DiffsegError(f"{THREADS_ENV}={env!r} is not a whole number of threads") from None
        if n < 1:
            raise DiffsegError(f"{THREADS_ENV}={env!r} must be at least 1")
        return n
    return max(1, (os.cpu_count() or 1) - (1 if spare_core else 0))


def available_cores() -> int:
    """The machine's CPU cores (logical ones, as ``os.cpu_count`` counts them): the most threads worth running."""
    return max(1, os.cpu_count() or 1)


def configure_threads(n: int | None = None, spare_core: bool = True) -> int:
    """Set torch's intra-op thread count to ``n`` (default: :func:`default_threads`) and return it.

    Leaving one core free keeps the napari GUI responsive while a worker trains. More threads than the machine has
    cores (:func:`available_cores`) are clamped to that with a warning: they only slow a run down, and tens of
    thousands make OpenMP abort the process.
    """
    if n is None:
        n = default_threads(spare_core)
    elif int(n) != n or n < 1:
        raise DiffsegError(f"number of threads must be a whole number >= 1, got {n!r}")
    n = int(n)
    cores = available_cores()
    if n > cores:
        logger.warning("%d threads asked for, but this machine has %d CPU core(s): using %d", n, cores, cores)
        n = cores
    torch.set_num_threads(n)
    logger.debug("torch intra-op threads set to %d", n)
    return n


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise DiffsegError(f"{name}={value!r} is not understood; use 1 (force on) or 0 (force off)")


def cpu_flags(cpuinfo_path: Path | None = None) -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty on systems without it, e.g. macOS and Windows)."""
    try:
        text = Path(cpuinfo_path or CPUINFO_PATH).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` is native (fast) rather than emulated or unsupported.

    ``DIFFSEG_BF16=1`` / ``0`` overrides the detection on every device. CPU: True only when the CPU has native
    bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); where there is no /proc/cpuinfo the answer
    is False (fp32 is the safe, never-slower choice). CUDA: ``torch.cuda.is_bf16_supported()``. MPS: a one-element
    trial allocation.
    """
    override = _env_flag(BF16_ENV)
    if override is not None:
        return override
    device = torch.device(device)
    if device.type == "cpu":
        return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "mps":
        if not _mps_available():
            return False
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device).sum().item()
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def describe_torch(device: torch.device | str | None = None, threads: int | None = None) -> str:
    """One line for users, e.g. "torch 2.13.0+cpu (CPU-only build), device cpu, 1 thread(s)".

    ``device`` defaults to what ``select_device("auto")`` picks; ``threads`` to this thread's torch setting
    (torch's thread count is per thread: a GUI describing a worker's run passes the worker's count).
    """
    device = select_device("auto") if device is None else torch.device(device)
    build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
    where = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        where += f" ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads() if threads is None else threads
    return f"torch {torch.__version__} ({build}), device {where}, {threads} thread(s)"


def device_info(device: torch.device | str, threads: int | None = None):
    """What the planner (core/method/planner.py) needs to know of ``device``: kind, threads, free GPU memory."""
    from napari_diffseg.core.method.planner import DeviceInfo

    device = torch.device(device)
    free = None
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            free = int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:  # a GPU that cannot report it: plan as if its memory were unknown
            free = None
    return DeviceInfo(device.type, torch.get_num_threads() if threads is None else int(threads), free)


def memory_format_for(spatial_dims: int) -> torch.memory_format:
    """Channels-last layout: 1.2-3x faster convolutions on CPU (oneDNN) for training and inference."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU batch to ``device``; to a GPU through pinned memory, asynchronously (the copy overlaps the
    kernels still queued). Untested on a GPU in this project's CI (no GPU there)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def prepare_for_fixed_shapes(device: torch.device) -> None:
    """Training uses one patch size throughout: on CUDA let cuDNN benchmark its convolution algorithms once and
    keep the fastest (nothing to do elsewhere)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def fp16_training(device: torch.device, bf16_setting: bool | None) -> bool:
    """Whether training uses fp16 autocast with a gradient scaler: on a CUDA GPU without native bf16 (before
    Ampere) when the precision is left to the machine (``bf16`` None; ``--no-bf16`` means full precision)."""
    return device.type == "cuda" and bf16_setting is None and not bf16_supported(device)


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype = torch.bfloat16):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
