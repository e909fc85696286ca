"""A trained model ready for new images: SegmentationModel loads best.pt (the mask pathway of the kept twin, its
threshold and working scale) and predicts raw images of any size, tiled, at the working scale, with the result
at full resolution.

A model of layout "both" (core/method/ensemble.py trains it) loads as an ``EnsembleModel``: a 2D network on slices of
the volumes and a 3D network, each predicting at its own working scale, with their probabilities averaged at full
resolution (nnU-Net's ensemble of its 2d and 3d_fullres configurations). It stands wherever a ``SegmentationModel``
does: its own attributes (network, plan, working scale) are those of its 3D member, so block-by-block prediction
plans its halo for the 3D network, the larger context of the two."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..method.checkpoint import ModelCheckpoint, read_model_card
from ..errors import InputError, ModelError
from ..data.io import BEST, describe_kind, image_layout, to_channels_first
from .predict import (DEFAULT_TILE_2D, DEFAULT_TILE_3D, Probabilities, TileProgress, normalised_entropy,
                      predict_probabilities, probabilities_to_mask, run_to_completion)
from ..data.scale import resize_image, resize_probabilities, scaled_shape
from ..method.networks import fold_batch_norm
from ..method.planner import Plan
from ..method.teacher import DiffusionTwin, NetworkConfig


# the default 2D tile of each backend, measured side by side on a 2048 x 2048 image (benchmarks/predict_speed.md):
# torch ran 512-px tiles as fast as or faster than larger ones, OpenVINO 1024-px tiles faster than 512
PREDICT_TILE_2D = {"torch": (512, 512), "openvino": DEFAULT_TILE_2D}


@dataclass
class Prediction:
    mask: np.ndarray  # uint8 class ids, the image's spatial shape
    probabilities: np.ndarray  # (K, *spatial) float32
    uncertainty: np.ndarray | None  # float32 in [0, 1], when asked for


class SegmentationModel:
    """A trained predictor (the mask pathway of the kept twin) with its threshold and working scale, ready for new
    images."""

    def __init__(self, network: DiffusionTwin, threshold: float, card: dict, device: torch.device | str = "cpu",
                 bf16: bool = False, working_scale: float = 1.0, backend: str = "torch", plan: Plan | None = None):
        self.network = network.to(device).eval()
        # the plan it was trained in (None: a model from before plans, whose images have the network's dims): a 2D
        # network trained on slices of volumes predicts volumes slice by slice, at the plan's scale per axis
        self.plan = plan
        self.slice_axis = None if plan is None else plan.slice_axis
        self.backend = backend  # what runs the mask pathway: torch, or openvino (core/prediction/openvino_backend.py)
        self.threshold = threshold
        self.working_scale = working_scale
        self.card = card
        self.device = torch.device(device)
        self.bf16 = bf16
        self.mirror = False  # test-time mirroring for every prediction that does not say (diffseg predict --mirror)

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | str = "cpu", bf16: bool = False,
             backend: str = "torch") -> "SegmentationModel":
        """The model in ``model_dir`` for inference on ``device``; ``backend``: torch, openvino (CPU only, the
        optional extra) or auto (openvino on a CPU where it is installed). A model of layout "both" loads as an
        ``ensemble.EnsembleModel`` of its members."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: model folder not found")
        path = model_dir / BEST
        saved = ModelCheckpoint.load(path)
        card = read_model_card(model_dir)
        if saved.members:
            return EnsembleModel([cls.from_checkpoint(ModelCheckpoint.from_payload(member), path, card, device, bf16,
                                                      backend) for member in saved.members], card)
        return cls.from_checkpoint(saved, path, card, device, bf16, backend)

    @classmethod
    def from_checkpoint(cls, saved: ModelCheckpoint, path: Path, card: dict, device: torch.device | str = "cpu",
                        bf16: bool = False, backend: str = "torch") -> "SegmentationModel":
        """The model of one network stored in ``saved`` (read from ``path``, named in errors), checked."""
        threshold, working_scale = saved.threshold, saved.working_scale
        _check_network_settings(saved.network, path)
        try:
            plan = None if saved.plan is None else Plan.from_dict(saved.plan)
        except InputError as error:
            raise ModelError(f"{path}: {error}; the checkpoint is damaged: train again") from None
        if plan is not None and (plan.network_dims != saved.network.get("spatial_dims")
                                 or not all(0 < s <= 1 for s in plan.working_scale)):
            raise ModelError(f"{path}: its plan ({plan.layout}, scale {plan.working_scale}) does not fit "
                             "its network; the checkpoint is damaged: train again")
        try:
            network = DiffusionTwin(NetworkConfig(**saved.network))
            network.mask_path.load_state_dict(saved.mask_path)
            fold_batch_norm(network.mask_path.eval())  # inference only: one memory pass fewer per convolution
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise ModelError(f"{path}: checkpoint content does not fit napari-diffseg ({type(error).__name__})") from None
        if not (0 < threshold < 1 and 0 < working_scale <= 1):
            raise ModelError(f"{path}: threshold {threshold} or working scale {working_scale} out of range; "
                             "the checkpoint is damaged: train again")
        backend = _compile(network, backend, torch.device(device), bf16)
        return cls(network, threshold, card, device, bf16, working_scale, backend, plan)

    def layout_note(self) -> str:
        """How it takes volumes, in words for a log line ("" for a network of the images' dimensions)."""
        return "" if self.slice_axis is None else f" (2D slices across axis {self.slice_axis})"

    def describe_plan(self) -> str | None:
        """The plan it was trained in, one line (None: a model from before plans)."""
        return None if self.plan is None else self.plan.describe()

    @property
    def image_dims(self) -> int:
        """The spatial dimensions of the images it segments (3 for a 2D network on slices of volumes)."""
        return 3 if self.slice_axis is not None else self.config.spatial_dims

    @property
    def axis_scales(self) -> tuple[float, ...]:
        """The working scale per image axis: ``working_scale`` (best.pt's, which export and earlier versions read)
        on every axis but the slice axis, which slices are never resampled along."""
        return tuple(1.0 if axis == self.slice_axis else self.working_scale for axis in range(self.image_dims))

    def check_image(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Normalise a raw image and check it fits the model (dimensionality and channels)."""
        self.check_layout(image, name)
        return to_channels_first(image)

    def iter_predict(self, image: np.ndarray, uncertainty: bool = False, draws: int = 4, sampling_steps: int = 1,
                     tile: tuple[int, ...] | None = None, name: str = "image", mirror: bool | None = None,
                     ) -> Generator[TileProgress, None, Prediction]:
        """Predict one raw image (as read from disk or a layer) at the model's working scale, with the result at
        the image's full resolution; yields progress per batch of tiles. ``mirror``: test-time mirroring (the
        mean over the tiles flipped along each subset of the network's axes; 4x the time in 2D, 8x in 3D); None:
        the model's ``mirror``."""
        return (yield from self.iter_predict_normalised(self.check_image(image, name), uncertainty, draws,
                                                        sampling_steps, tile, mirror))

    def check_layout(self, image: np.ndarray, name: str = "image") -> None:
        """InputError unless a raw (channels-last) image has the dimensionality and channels of the model."""
        spatial_dims, channels = image_layout(image)
        if spatial_dims != self.image_dims or channels != self.config.image_channels:
            raise InputError(
                f"{name}: the model was trained on {describe_kind(self.image_dims, self.config.image_channels)} "
                f"images, this one is {describe_kind(spatial_dims, channels)}"
            )

    def iter_predict_normalised(self, image01: np.ndarray, uncertainty: bool = False, draws: int = 4,
                                sampling_steps: int = 1, tile: tuple[int, ...] | None = None,
                                mirror: bool | None = None) -> Generator[TileProgress, None, Prediction]:
        """``iter_predict`` for an image already normalised to float (C, *spatial) in [0, 1] (a block of a large
        image normalised with the whole image's intensity ranges, say)."""
        full_shape = image01.shape[1:]
        if any(s != 1.0 for s in self.axis_scales):
            image01 = resize_image(image01, scaled_shape(full_shape, self.axis_scales))
        if tile is None:
            tile = (PREDICT_TILE_2D[self.backend] if self.config.spatial_dims == 2 else DEFAULT_TILE_3D)
        probs: Probabilities = yield from predict_probabilities(
            [self.network], image01, tile, self.slice_axis, draws=draws if uncertainty else 0,
            sampling_steps=sampling_steps, device=self.device, bf16=self.bf16,
            mirror=self.mirror if mirror is None else mirror,
        )
        primary = resize_probabilities(probs.primary, full_shape)
        mask = probabilities_to_mask(primary, self.threshold)
        unc = (normalised_entropy(resize_probabilities(probs.ensemble, full_shape))
               if probs.ensemble is not None else None)
        return Prediction(mask, primary, unc)

    def predict(self, image: np.ndarray, **options) -> Prediction:
        return run_to_completion(self.iter_predict(image, **options))

    def predict_normalised(self, image01: np.ndarray, **options) -> Prediction:
        return run_to_completion(self.iter_predict_normalised(image01, **options))


class EnsembleModel(SegmentationModel):
    """Members of different layouts, one prediction: the mean of their probabilities, thresholded at the mean of
    their thresholds."""

    def __init__(self, members: list[SegmentationModel], card: dict):
        if len(members) < 2:
            raise ValueError("an ensemble needs two members or more")
        volume = next((member for member in members if member.slice_axis is None), members[-1])
        super().__init__(volume.network, float(np.mean([m.threshold for m in members])), card, volume.device,
                         volume.bf16, volume.working_scale, volume.backend, volume.plan)
        self.members = members

    def layout_note(self) -> str:
        return " (" + " and ".join(_member_words(m) for m in self.members) + ", probabilities averaged)"

    def describe_plan(self) -> str:
        return "plan: both, " + "; ".join(m.describe_plan().removeprefix("plan: ") for m in self.members)

    def iter_predict_normalised(self, image01: np.ndarray, uncertainty: bool = False, draws: int = 4,
                                sampling_steps: int = 1, tile: tuple[int, ...] | None = None,
                                mirror: bool | None = None) -> Generator[TileProgress, None, Prediction]:
        mirror = self.mirror if mirror is None else mirror
        mean = None  # the sum of the members' probabilities, in place (a block of a large volume holds one copy)
        for member in self.members:
            member_tile = tile if tile is not None and len(tile) == member.config.spatial_dims else None
            probabilities = (yield from member.iter_predict_normalised(image01, False, draws, sampling_steps,
                                                                       member_tile, mirror)).probabilities
            if mean is None:
                mean = np.asarray(probabilities, np.float32)
            else:
                np.add(mean, probabilities, out=mean)
            del probabilities
        mean /= len(self.members)
        # the uncertainty of an ensemble is the entropy of its mean probabilities (no diffusion draws: the members
        # are the ensemble), which grows where either member is unsure and where they disagree
        unc = normalised_entropy(mean) if uncertainty else None
        return Prediction(probabilities_to_mask(mean, self.threshold), mean, unc)


def _member_words(member: SegmentationModel) -> str:
    return ("a 3D network" if member.slice_axis is None
            else f"a 2D network on slices across axis {member.slice_axis}")


def _check_network_settings(settings: dict, path: Path) -> None:
    """ModelError unless a checkpoint's architecture is one napari-diffseg can have written: read from a file, it
    is data, and a width of 10**6 would build a network that fills the memory before its weights fail to load."""
    from ..method.config import LIMITS

    bounds = {"spatial_dims": (2, 3), "image_channels": (1, 3), "num_classes": (2, LIMITS["num_classes"].maximum),
              "base_channels": (1, LIMITS["base_channels"].maximum), "depth": (1, LIMITS["depth"].maximum),
              "timesteps": (1, 100_000)}
    for key, value in settings.items():
        low, high = bounds.get(key, (None, None))
        if low is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise ModelError(f"{path}: the network's {key} is {value!r}, not what napari-diffseg writes "
                             f"({low}..{high:g}); the checkpoint is damaged or foreign: train again")


def _compile(network: DiffusionTwin, backend: str, device: torch.device, bf16: bool) -> str:
    """Put the chosen backend behind ``network.mask_path``; returns the backend that runs."""
    from . import openvino_backend

    chosen = openvino_backend.choose(backend, device, network.config.spatial_dims)
    if chosen == "openvino":
        network.mask_path = openvino_backend.CompiledUNet(network.mask_path, torch.get_num_threads(), bf16,
                                                          openvino_backend.cache_dir())
    return chosen
