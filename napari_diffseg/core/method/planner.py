"""The planner: how a project's images are trained and predicted, decided from the data and the device before the
trainer runs (as nnU-Net's ExperimentPlanner plans its 2d / 3d_fullres / 3d_lowres configurations apart from its
trainer). Torch-free, so the GUI can show a plan on its thread.

Input: the images' spatial shapes, their voxel spacing when the files carry it (``io.read_spacing``; else
isotropic), the labelled masks (``scale.choose_working_scale`` measures their structures) and the device
(``DeviceInfo``: CPU threads, or a GPU and its free memory). Output: a ``Plan``: the layout, the working scale per
axis, the patch and batch of the network, and one line saying why.

The rules for volumes, in order (nnU-Net's constants where it has one):
1. anisotropic spacing (largest / smallest >= ``ANISOTROPY_RATIO`` = 3, nnU-Net's threshold for treating the
   out-of-plane axis apart): a 2D network on slices across the coarse axis; a 3D network would see a few blurred
   planes in every patch;
2. an axis too thin for the 3D network's poolings (< ``MIN_3D_EDGE`` voxels at the working scale): slices across it;
3. a CUDA GPU: a 3D network with the largest patch whose training memory (``training_bytes``, an estimate from
   the network's width) fits half the free GPU memory, starting from the median volume as nnU-Net does, batch 2;
4. otherwise (CPU, MPS), ``CPU_VOLUME_LAYOUT``: what trains in a CPU budget (see its comment for the evidence).

"both" (a 2D and a 3D network with their probabilities averaged, nnU-Net's ensemble) is two runs
(core/method/ensemble.py), each planned here in its own layout; the planner never chooses it (on a CPU the 3D
member's share of the budget costs more than the average gains: benchmarks/quality/ABLATIONS.md). Any of the planner's choices can be overridden (the
config's ``layout``, ``patch_size``, ``batch_size``, ``working_scale``); the plan then says "given". A patch of
2 numbers for volumes under "auto" means slices, of 3 numbers a 3D network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
import math

import numpy as np

from ..errors import InputError
from .config import Layout

ANISOTROPY_RATIO = 3.0  # nnU-Net's RESAMPLING_SEPARATE_Z_ANISOTROPY_THRESHOLD
MIN_3D_EDGE = 16  # voxels: a 3D U-Net of depth 3 needs 8 per axis; below twice that its patches are mostly padding
PATCH_2D = (128, 128)  # measured on 2 CPU cores (docs/how-it-works.md): a 2D step of 8 x 128 x 128
PATCH_3D_CPU = (32, 64, 64)
BATCH_2D_CPU, BATCH_3D = 8, 2
GPU_MEMORY_SHARE = 0.5  # of the free GPU memory: the estimate below is rough, and cuDNN wants workspace
MAX_PATCH_2D_GPU, MAX_BATCH_2D_GPU = 512, 32
MAX_PATCH_3D_GPU = (128, 192, 192)
# bytes of training memory per voxel per sample and per base channel: the teacher's two pathways and the student,
# forward and backward, with a pseudo-label round. Measured on a CPU in fp32 (a co-training step with rounds, width
# 16, batch 2: peak RSS grew by 695 MiB from 16x64x64 to 32x64x64 patches, 5,560 bytes per voxel per sample);
# bf16 autocast on a GPU stores most activations in half the bytes, so on a GPU it errs on the safe side. Not yet
# checked on a GPU (no GPU in this project's CI).
BYTES_PER_VOXEL_PER_CHANNEL = 350
# On a CPU, volumes train as 2D slices unless rules 1-2 already decided. Evidence (one seed, benchmarks/quality/
# ABLATIONS.md, "Volumes: 2d slices vs 3d patches"): la_mri_3d, K = 2, 120 CPU seconds: slices made 4x the steps
# of 3D patches and scored 0.707 vs 0.522 test Dice (DiffSeg) and 0.768 vs 0.499 (labels-only).
CPU_VOLUME_LAYOUT = "2d"


@dataclass(frozen=True)
class DeviceInfo:
    """What the planner needs to know of the device: its kind (cpu, cuda, mps), the CPU threads training uses and,
    on a GPU, the free memory in bytes (None: unknown)."""

    kind: str = "cpu"
    threads: int = 1
    free_memory: int | None = None


@dataclass(frozen=True)
class Plan:
    """How a run trains and predicts. ``layout`` "2d" or "3d"; ``slice_axis``: for "2d" on volumes, the image axis
    the slices are taken across (None for 2D images and for "3d"); ``working_scale``: one factor per image axis
    (1 across the slice axis: slices are never resampled along it); ``patch_size`` and ``batch_size``: of the
    network (2 numbers for "2d", 3 for "3d"); ``reason``: one line for people."""

    layout: str
    slice_axis: int | None
    working_scale: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    reason: str
    spacing: tuple[float, ...] | None = None

    def __post_init__(self):  # plain values: the plan is stored in checkpoints loaded with weights_only
        object.__setattr__(self, "layout", str(Layout(self.layout).value))
        object.__setattr__(self, "working_scale", tuple(float(s) for s in self.working_scale))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "batch_size", int(self.batch_size))

    @property
    def network_dims(self) -> int:
        return 2 if self.layout == Layout.SLICES else 3

    @property
    def scale(self) -> float:
        """The in-plane working scale (the single number earlier versions stored)."""
        axes = [s for axis, s in enumerate(self.working_scale) if axis != self.slice_axis]
        return float(min(axes)) if axes else 1.0

    def describe(self) -> str:
        """One line: what the plan is and why."""
        where = "" if self.slice_axis is None else f" across axis {self.slice_axis}"
        scale = ", ".join(f"{s:g}" for s in self.working_scale)
        return (f"plan: {self.layout} network{where}, working scale ({scale}), patch "
                f"{'x'.join(map(str, self.patch_size))}, batch {self.batch_size}: {self.reason}")

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("working_scale", "patch_size", "spacing"):
            if values[key] is not None:
                values[key] = list(values[key])
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Plan":
        """From a stored plan (model card, checkpoint); InputError when it is not one."""
        try:
            plan = cls(layout=values["layout"],
                       slice_axis=None if values.get("slice_axis") is None else int(values["slice_axis"]),
                       working_scale=tuple(float(s) for s in values["working_scale"]),
                       patch_size=tuple(int(p) for p in values["patch_size"]), batch_size=int(values["batch_size"]),
                       reason=str(values.get("reason", "")),
                       spacing=None if values.get("spacing") is None else tuple(float(s) for s in values["spacing"]))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"not a stored plan ({type(error).__name__}: {error})") from None
        if plan.layout not in (Layout.SLICES, Layout.VOLUME) or len(plan.patch_size) != plan.network_dims:
            raise InputError(f"not a stored plan: layout {plan.layout!r} with patch {plan.patch_size}")
        return plan


def training_bytes(patch: Sequence[int], batch: int, base_channels: int) -> int:
    """Estimated training memory of one step (``BYTES_PER_VOXEL_PER_CHANNEL``)."""
    return int(math.prod(patch) * batch * base_channels * BYTES_PER_VOXEL_PER_CHANNEL)


def _round_down(value: float, multiple: int) -> int:
    return max(multiple, int(value // multiple) * multiple)


def _gpu_patch_3d(median: Sequence[int], budget: float, base_channels: int, multiple: int) -> tuple[int, ...]:
    """nnU-Net's way: start from the median volume (capped), shrink the axis largest relative to the median until
    a batch of 2 fits the memory budget."""
    patch = [min(_round_down(m, multiple) if m >= multiple else multiple, cap)
             for m, cap in zip(median, MAX_PATCH_3D_GPU)]
    while training_bytes(patch, BATCH_3D, base_channels) > budget and max(patch) > multiple:
        axis = int(np.argmax([p / m for p, m in zip(patch, median)]))
        if patch[axis] <= multiple:
            axis = int(np.argmax(patch))
        patch[axis] = max(multiple, patch[axis] - multiple)
    return tuple(patch)


def _gpu_plan_2d(inplane: Sequence[int], budget: float, base_channels: int, multiple: int) -> tuple[tuple, int]:
    patch = tuple(min(MAX_PATCH_2D_GPU, _round_down(s, multiple) if s >= multiple else multiple) for s in inplane)
    batch = BATCH_2D_CPU
    while batch < MAX_BATCH_2D_GPU and training_bytes(patch, batch * 2, base_channels) <= budget:
        batch *= 2
    return patch, batch


def coarse_axis(spacing: Sequence[float]) -> tuple[int, float]:
    """The axis of the largest spacing and the ratio largest / smallest."""
    spacing = [float(s) for s in spacing]
    return int(np.argmax(spacing)), max(spacing) / min(spacing)


def plan_training(shapes: Sequence[Sequence[int]], labels: Sequence[np.ndarray] = (), *,
                  spacing: Sequence[float] | None = None, device: DeviceInfo = DeviceInfo(),
                  layout: str = Layout.AUTO, patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                  working_scale: float | None = None, base_channels: int = 16, depth: int = 3) -> Plan:
    """The plan for images of these spatial ``shapes`` with these labelled masks (see the module's rules)."""
    from ..data.scale import choose_working_scale

    if not shapes:
        raise InputError("no images to plan for")
    dims = len(shapes[0])
    if layout == Layout.BOTH:
        raise InputError("layout 'both' is two networks, each planned in its own layout (2d, 3d): "
                         "core/method/ensemble.py trains them")
    if layout not in (Layout.AUTO, Layout.SLICES, Layout.VOLUME):
        raise InputError(f"layout must be auto, 2d, 3d or both, got {layout!r}")
    scale_given = working_scale is not None
    scale = float(working_scale) if scale_given else choose_working_scale(list(labels))
    scale_note = "" if scale_given else ("" if scale == 1.0 else f"; scale {scale:g} from the labelled objects")
    multiple = 2 ** depth
    gpu = device.kind == "cuda" and device.free_memory
    budget = GPU_MEMORY_SHARE * device.free_memory if gpu else 0.0
    if dims == 2:
        if layout == Layout.VOLUME:
            raise InputError("layout 3d needs volumes; these are 2D images")
        plan_patch, plan_batch = (_gpu_plan_2d(np.median(np.asarray(shapes), 0) * scale, budget, base_channels,
                                               multiple) if gpu else (PATCH_2D, BATCH_2D_CPU))
        return _with_overrides(Plan(Layout.SLICES, None, (scale, scale), tuple(plan_patch), plan_batch,
                                    "2D images" + scale_note, None), patch_size, batch_size)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else None
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        spacing = None
    median = np.median(np.asarray(shapes, float), axis=0) * scale
    axis, ratio = coarse_axis(spacing) if spacing is not None else (0, 1.0)
    if layout == Layout.AUTO and patch_size is not None:  # a patch of 2 numbers means slices, of 3 a 3D network
        layout = Layout.SLICES if len(patch_size) == 2 else Layout.VOLUME
        chosen, reason = layout, f"a {len(patch_size)}D patch given"
    elif layout == Layout.AUTO:
        thin = [a for a in range(3) if median[a] < MIN_3D_EDGE]
        if ratio >= ANISOTROPY_RATIO:
            chosen, reason = Layout.SLICES, (f"anisotropic spacing {_spacing_text(spacing)} (ratio {ratio:.1f} >= "
                                             f"{ANISOTROPY_RATIO:g}): slices across the coarse axis {axis}")
        elif thin:
            axis = min(thin, key=lambda a: median[a])
            chosen, reason = Layout.SLICES, (f"axis {axis} has {median[axis]:.0f} voxels at the working scale, too "
                                             f"few for a 3D network (< {MIN_3D_EDGE}): slices across it")
        elif gpu:
            chosen, reason = Layout.VOLUME, (f"a GPU with {device.free_memory / 2**30:.0f} GiB free: a 3D network "
                                             "with the patch that fits half of it")
        elif CPU_VOLUME_LAYOUT == Layout.SLICES:
            chosen, reason = Layout.SLICES, (f"{device.kind.upper()} with {device.threads} thread(s): 2D slices "
                                             f"across axis {axis} make many more steps in a CPU budget than 3D patches")
        else:
            chosen, reason = Layout.VOLUME, f"{device.kind.upper()} with {device.threads} thread(s): a 3D network"
    else:
        chosen, reason = layout, "layout given"
    if chosen == Layout.SLICES and layout != Layout.AUTO and spacing is not None and ratio >= ANISOTROPY_RATIO:
        reason += f"; slices across the coarse axis {axis}"
    reason += scale_note
    if chosen == Layout.SLICES:
        inplane = [median[a] for a in range(3) if a != axis]
        plan_patch, plan_batch = (_gpu_plan_2d(inplane, budget, base_channels, multiple) if gpu
                                  else (PATCH_2D, BATCH_2D_CPU))
        scales = tuple(1.0 if a == axis else scale for a in range(3))
        plan = Plan(Layout.SLICES, axis, scales, tuple(plan_patch), plan_batch, reason, spacing)
    else:
        plan_patch = _gpu_patch_3d(median, budget, base_channels, multiple) if gpu else PATCH_3D_CPU
        plan = Plan(Layout.VOLUME, None, (scale,) * 3, tuple(plan_patch), BATCH_3D, reason, spacing)
    return _with_overrides(plan, patch_size, batch_size)


def _with_overrides(plan: Plan, patch_size: Sequence[int] | None, batch_size: int | None) -> Plan:
    from dataclasses import replace

    if patch_size is not None:
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != plan.network_dims:
            raise InputError(f"patch size {'x'.join(map(str, patch_size))} has {len(patch_size)} numbers, but the "
                             f"plan trains a {plan.network_dims}D network ({plan.layout}"
                             f"{'' if plan.slice_axis is None else ' slices of volumes'}): give "
                             f"{plan.network_dims} numbers, or choose the layout too (--layout)")
        plan = replace(plan, patch_size=patch_size,
                       reason=plan.reason + ("" if "patch given" in plan.reason else "; patch given"))
    if batch_size is not None:
        plan = replace(plan, batch_size=int(batch_size), reason=plan.reason + "; batch given")
    return plan


def _spacing_text(spacing: Sequence[float] | None) -> str:
    return "isotropic" if spacing is None else " x ".join(f"{s:g}" for s in spacing)
