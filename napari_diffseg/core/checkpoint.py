"""Model folders: checkpoints (last.pt for resuming, best.pt for predicting) and the JSON model card.

A model folder holds ``last.pt`` (teacher, student, optimisers, step and clock, for resume and warm start),
``best.pt`` (the mask pathway of the kept twin, with its threshold and working scale), ``model_card.json``
(config, data fingerprints, threshold, metrics, versions) and ``losses.csv``. Files are written atomically.
Loading checks the format tag so corrupt or foreign files give a one-line ``ModelError``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
import json
from pathlib import Path
import warnings

import numpy as np
import torch

from .errors import InputError, ModelError
from .io import BEST, LAST, atomic_write, image_layout, to_channels_first
from .predict import (DEFAULT_TILE_2D, DEFAULT_TILE_3D, Probabilities, TileProgress, normalised_entropy,
                      probabilities_to_mask, run, tiled_probabilities)
from .scale import resize_image, resize_probabilities, scaled_shape
from .teacher import DiffusionTeacher, NetworkConfig

FORMAT_TAG = "napari-diffseg"
FORMAT_VERSION = 1
CARD = "model_card.json"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically; a failed write (torch reports a full disk as a RuntimeError) is an
    InputError that says so, and the earlier file stays."""
    payload = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, **payload}
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except RuntimeError as error:
        message = " ".join(str(error).split())[:200]
        raise InputError(f"cannot write {path} ({message}); is the disk full? Free some space and resume") from error


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint here (train a model first, or check the model folder)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a garbage file before failing
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise ModelError(f"{path}: not a readable checkpoint ({type(error).__name__}); the file is corrupt or truncated") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise ModelError(f"{path}: not a napari-diffseg checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path}: written by a newer napari-diffseg (format {payload['format_version']}); upgrade")
    return payload


def write_model_card(model_dir: Path, card: dict) -> None:
    text = json.dumps(card, indent=2, sort_keys=True, default=str)
    atomic_write(Path(model_dir) / CARD, lambda handle: handle.write(text.encode()))


CARD_SECTIONS = {"config": dict, "network": dict, "training": dict, "metrics": dict, "environment": dict,
                 "data": list}  # the card's nested parts and their JSON types


def read_model_card(model_dir: Path) -> dict:
    """The model card as a dict ({} when there is none); ModelError when it is unreadable or of the wrong shape."""
    path = Path(model_dir) / CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable model card ({error})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{path}: the model card is a JSON {type(card).__name__}, not an object (edited by hand?)")
    for key, kind in CARD_SECTIONS.items():
        if key in card and not isinstance(card[key], kind):
            raise ModelError(f"{path}: the model card's {key!r} is a JSON {type(card[key]).__name__} "
                             "(edited by hand?); retrain, or restore the file")
    return card


@dataclass
class Prediction:
    mask: np.ndarray  # uint8 class ids, the image's spatial shape
    probabilities: np.ndarray  # (K, *spatial) float32
    uncertainty: np.ndarray | None  # float32 in [0, 1], when asked for


class SegmentationModel:
    """A trained predictor (the mask pathway of the kept twin) with its threshold and working scale, ready for new
    images."""

    def __init__(self, network: DiffusionTeacher, threshold: float, card: dict, device: torch.device | str = "cpu",
                 bf16: bool = False, working_scale: float = 1.0):
        self.network = network.to(device).eval()
        self.threshold = threshold
        self.working_scale = working_scale
        self.card = card
        self.device = torch.device(device)
        self.bf16 = bf16

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | str = "cpu", bf16: bool = False) -> "SegmentationModel":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: model folder not found")
        payload = load_checkpoint(model_dir / BEST)
        try:
            config = NetworkConfig(**payload["network"])
            network = DiffusionTeacher(config)
            network.mask_path.load_state_dict(payload["mask_path"])
            threshold = float(payload["threshold"])
            working_scale = float(payload.get("working_scale", 1.0))
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise ModelError(f"{model_dir / BEST}: checkpoint content does not fit napari-diffseg ({type(error).__name__})") from None
        if not (0 < threshold < 1 and 0 < working_scale <= 1):
            raise ModelError(f"{model_dir / BEST}: threshold {threshold} or working scale {working_scale} out of range; "
                             "the checkpoint is damaged: train again")
        return cls(network, threshold, read_model_card(model_dir), device, bf16, working_scale)

    def check_image(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Normalise a raw image and check it fits the model (dimensionality and channels)."""
        spatial_dims, channels = image_layout(image)
        if spatial_dims != self.config.spatial_dims or channels != self.config.image_channels:
            kind = lambda d, c: f"{d}D {'RGB' if c == 3 else 'grey'}"
            raise InputError(
                f"{name}: the model was trained on {kind(self.config.spatial_dims, self.config.image_channels)} "
                f"images, this one is {kind(spatial_dims, channels)}"
            )
        return to_channels_first(image)

    def iter_predict(self, image: np.ndarray, uncertainty: bool = False, draws: int = 4, sampling_steps: int = 1,
                     tile: tuple[int, ...] | None = None, name: str = "image",
                     ) -> Generator[TileProgress, None, Prediction]:
        """Predict one raw image (as read from disk or a layer) at the model's working scale, with the result at
        the image's full resolution; yields progress per batch of tiles."""
        image01 = self.check_image(image, name)
        full_shape = image01.shape[1:]
        if self.working_scale != 1.0:
            image01 = resize_image(image01, scaled_shape(full_shape, self.working_scale))
        if tile is None:
            tile = DEFAULT_TILE_2D if self.config.spatial_dims == 2 else DEFAULT_TILE_3D
        probs: Probabilities = yield from tiled_probabilities(
            [self.network], image01, tile, draws=draws if uncertainty else 0, sampling_steps=sampling_steps,
            device=self.device, bf16=self.bf16,
        )
        primary = resize_probabilities(probs.primary, full_shape)
        mask = probabilities_to_mask(primary, self.threshold)
        unc = (normalised_entropy(resize_probabilities(probs.ensemble, full_shape))
               if probs.ensemble is not None else None)
        return Prediction(mask, primary, unc)

    def predict(self, image: np.ndarray, **options) -> Prediction:
        return run(self.iter_predict(image, **options))
