"""Training data in memory and random patch sampling at native resolution with flips and 90-degree rotations.

Images are float32 (C, *spatial) in [0, 1] (see ``io.to_channels_first``); labels are int64 class maps. Patches
that do not fit an image are taken from a reflect-padded copy, so small images work too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import logging

import numpy as np
import torch

from ..errors import InputError
from .io import (check_mask_matches, name_stem, normalise_mask, pair_images_with_labels, read_image, read_mask,
                 read_spacing, to_channels_first)

logger = logging.getLogger(__name__)

DEFAULT_PATCH_2D = (128, 128)
DEFAULT_PATCH_3D = (32, 64, 64)
MAX_FOREGROUND_COORDS = 20000


@dataclass
class TrainingData:
    """Normalised images with ground truth for some of them (``labels`` maps image index -> class map)."""

    images: list[np.ndarray]
    labels: dict[int, np.ndarray]
    names: list[str]
    num_classes: int = 2
    require_labels: bool = True  # False: stage-1 pretraining, which needs no label
    objects: dict | None = None  # objects mode: the labels are core.objects three-class targets (the model card says so)
    spacing: tuple[float, ...] | None = None  # voxel size per spatial axis when the files say (None: isotropic)
    spatial_dims: int = field(init=False)
    channels: int = field(init=False)

    def __post_init__(self):
        if not self.images:
            raise InputError("no images to train on")
        if self.require_labels and not self.labels:
            raise InputError("no labelled image: label at least one image before training")
        if len(self.names) != len(self.images):
            raise InputError(f"{len(self.images)} images but {len(self.names)} names: give one name per image")
        first = self.images[0]
        self.spatial_dims, self.channels = first.ndim - 1, first.shape[0]
        for image, name in zip(self.images, self.names):
            if image.ndim - 1 != self.spatial_dims or image.shape[0] != self.channels:
                raise InputError(
                    f"{name}: all images must have the same kind; expected {self.spatial_dims}D with "
                    f"{self.channels} channel(s), got {image.ndim - 1}D with {image.shape[0]}"
                )
        for index, label in self.labels.items():
            if label.shape != self.images[index].shape[1:]:
                raise InputError(
                    f"{self.names[index]}: label shape {label.shape} does not match image shape "
                    f"{self.images[index].shape[1:]}"
                )
            if label.min() < 0 or label.max() >= self.num_classes:
                raise InputError(f"{self.names[index]}: label values must lie in 0..{self.num_classes - 1}")
        if self.labels and all(not np.any(label) for label in self.labels.values()):
            raise InputError("every labelled image is all background: paint at least one object, or the network "
                             "can only learn 'nothing here'")
        if self.labels and all(np.all(label > 0) for label in self.labels.values()):
            raise InputError("every labelled image is foreground everywhere: paint the background as 0 somewhere")
        self._check_not_constant()

    def _check_not_constant(self) -> None:
        """A constant image (every pixel the same value) shows the network nothing: a warning naming it, an error
        when every labelled image is constant (the model could only learn noise)."""
        constant = {index for index, image in enumerate(self.images) if float(image.max()) == float(image.min())}
        if not constant:
            return
        if self.labels and set(self.labels) <= constant:
            raise InputError(f"every labelled image is constant (all pixels one value: "
                             f"{', '.join(self.names[i] for i in sorted(self.labels)[:5])}): there is nothing to "
                             "learn from; check the export of the images (bit depth, scaling)")
        names = [self.names[index] for index in sorted(constant)]
        logger.warning("%d image(s) are constant (all pixels one value) and teach the network nothing: %s",
                       len(names), ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))

    @property
    def labelled_indices(self) -> list[int]:
        return sorted(self.labels)

    @property
    def unlabelled_indices(self) -> list[int]:
        return [i for i in range(len(self.images)) if i not in self.labels]

    def fingerprints(self) -> list[dict]:
        """Name, sha256 of the normalised pixels and of the label (None when unlabelled) of each image."""
        def digest(array: np.ndarray) -> str:
            return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()

        return [
            {"name": name, "sha256": digest(image),
             "label_sha256": digest(self.labels[index]) if index in self.labels else None}
            for index, (name, image) in enumerate(zip(self.names, self.images))
        ]


def effective_patch_size(requested: tuple[int, ...] | None, data: TrainingData, multiple: int) -> tuple[int, ...]:
    """The requested patch (or the default), shrunk to the largest image and rounded down to ``multiple``."""
    if requested is None:
        requested = DEFAULT_PATCH_2D if data.spatial_dims == 2 else DEFAULT_PATCH_3D
    if len(requested) != data.spatial_dims:
        raise InputError(f"patch size {requested} does not match {data.spatial_dims}D images")
    return fit_patch(requested, np.max([image.shape[1:] for image in data.images], axis=0), multiple)


def fit_patch(requested: tuple[int, ...], largest: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """``requested`` shrunk to the ``largest`` image shape and rounded down to ``multiple``."""
    effective = tuple(max(multiple, (min(p, int(s)) // multiple) * multiple) for p, s in zip(requested, largest))
    if any(p % multiple for p, s in zip(requested, largest) if p <= s):
        logger.warning("patch size %s is not a multiple of %d: training on %s", "x".join(map(str, requested)),
                       multiple, "x".join(map(str, effective)))
    return effective


def _pad_to(array: np.ndarray, shape: tuple[int, ...], leading: int) -> np.ndarray:
    """Reflect-pad the trailing spatial axes of ``array`` up to at least ``shape``."""
    spatial = array.shape[leading:]
    if all(s >= p for s, p in zip(spatial, shape)):
        return array
    pad = [(0, 0)] * leading + [(0, max(0, p - s)) for s, p in zip(spatial, shape)]
    return np.pad(array, pad, mode="reflect" if min(spatial) > 1 else "edge")


class PatchSampler:
    """Draws augmented random patches; labelled patches are centred on foreground half of the time."""

    def __init__(self, data: TrainingData, patch_size: tuple[int, ...], seed: int = 0, foreground_fraction: float = 0.5):
        self.data = data
        self.patch_size = tuple(patch_size)
        self.rng = np.random.default_rng(seed)
        self.foreground_fraction = foreground_fraction
        self.images = [_pad_to(image, self.patch_size, 1) for image in data.images]
        self.labels = {i: _pad_to(label, self.patch_size, 0) for i, label in data.labels.items()}
        self._foreground = {index: self._foreground_coords(label > 0) for index, label in self.labels.items()}
        self.pseudo_labels: dict[int, np.ndarray] = {}
        self.pseudo_ignore = 255

    def _foreground_coords(self, foreground: np.ndarray) -> np.ndarray:
        """Coordinates of the foreground pixels that patches are centred on, at most MAX_FOREGROUND_COORDS."""
        coords = np.argwhere(foreground)
        if len(coords) > MAX_FOREGROUND_COORDS:
            coords = coords[self.rng.choice(len(coords), MAX_FOREGROUND_COORDS, replace=False)]
        return coords

    def _corner(self, index: int, centre_on_foreground: bool) -> tuple[int, ...]:
        shape = self.images[index].shape[1:]
        coords = self._foreground.get(index)
        if centre_on_foreground and coords is not None and len(coords):
            centre = coords[self.rng.integers(len(coords))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch_size, shape))
        return tuple(int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch_size, shape))

    def _augment(self, arrays: list[np.ndarray], leading: list[int]) -> list[np.ndarray]:
        dims = len(self.patch_size)
        for axis in range(dims):
            if self.rng.random() < 0.5:
                arrays = [np.flip(a, axis=lead + axis) for a, lead in zip(arrays, leading)]
        if self.patch_size[-1] == self.patch_size[-2]:
            k = int(self.rng.integers(4))
            arrays = [np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1)) for a in arrays]
        return [np.ascontiguousarray(a) for a in arrays]

    def _crop(self, array: np.ndarray, corner: tuple[int, ...], leading: int) -> np.ndarray:
        index = (slice(None),) * leading + tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size))
        return array[index]

    def labelled_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        indices = self.data.labelled_indices
        for _ in range(batch_size):
            index = indices[self.rng.integers(len(indices))]
            corner = self._corner(index, self.rng.random() < self.foreground_fraction)
            image, label = self._augment(
                [self._crop(self.images[index], corner, 1), self._crop(self.labels[index], corner, 0)], [1, 0]
            )
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)).long()

    def set_pseudo_labels(self, maps: dict[int, np.ndarray], ignore: int) -> None:
        """Pseudo-labels of unlabelled images (class maps of the padded images, ``ignore`` where unsure), drawn by
        ``pseudo_batch`` (offline self-training, core/method/offline.py)."""
        self.pseudo_labels, self.pseudo_ignore = dict(maps), ignore
        for index, label in self.pseudo_labels.items():
            self._foreground[index] = self._foreground_coords((label > 0) & (label != ignore))

    def pseudo_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches of pseudo-labelled images, as ``labelled_batch`` draws labelled ones (through foreground half of
        the time, the same flips and rotations): (images, class map, float mask of the pixels that count)."""
        images, labels = [], []
        indices = sorted(self.pseudo_labels)
        for _ in range(batch_size):
            index = indices[self.rng.integers(len(indices))]
            corner = self._corner(index, self.rng.random() < self.foreground_fraction)
            image, label = self._augment([self._crop(self.images[index], corner, 1),
                                          self._crop(self.pseudo_labels[index], corner, 0)], [1, 0])
            images.append(image)
            labels.append(label)
        labels = torch.from_numpy(np.stack(labels)).long()
        valid = labels != self.pseudo_ignore
        return torch.from_numpy(np.stack(images)), torch.where(valid, labels, 0), valid.float()

    def image_batch(self, batch_size: int, indices: list[int] | None = None) -> torch.Tensor:
        """Random patches of the given images (default: all images), no labels."""
        indices = list(range(len(self.images))) if indices is None else indices
        patches = []
        for _ in range(batch_size):
            index = indices[self.rng.integers(len(indices))]
            corner = self._corner(index, False)
            patches.append(self._augment([self._crop(self.images[index], corner, 1)], [1])[0])
        return torch.from_numpy(np.stack(patches))


class SliceSampler(PatchSampler):
    """Random 2D patches of slices of volumes (the plan's "2d" layout): ``data`` holds the volumes with the slice
    axis moved to the first spatial axis; batches are (B, C, Y, X) and (B, Y, X), with the flips, rotations and
    foreground centring of ``PatchSampler`` (a slice through labelled foreground half of the time)."""

    def __init__(self, data: TrainingData, patch_size: tuple[int, ...], seed: int = 0,
                 foreground_fraction: float = 0.5):
        super().__init__(data, (1, *patch_size), seed, foreground_fraction)

    def labelled_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().labelled_batch(batch_size)
        return images[:, :, 0], labels[:, 0]

    def image_batch(self, batch_size: int, indices: list[int] | None = None) -> torch.Tensor:
        return super().image_batch(batch_size, indices)[:, :, 0]

    def pseudo_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, valid = super().pseudo_batch(batch_size)
        return images[:, :, 0], labels[:, 0], valid[:, 0]


def training_data_from_arrays(
    images: list[np.ndarray], labels: dict[int, np.ndarray], names: list[str], num_classes: int = 2,
    require_labels: bool = True,
) -> TrainingData:
    """TrainingData from raw images (as read or from layers) and raw label images keyed by image index."""
    normalised = [to_channels_first(image, name=name) for image, name in zip(images, names)]
    masks = {}
    for index, label in labels.items():
        check_mask_matches(images[index], label, names[index])
        masks[index] = normalise_mask(label, num_classes, name=names[index]).astype(np.int64)
    return TrainingData(normalised, masks, list(names), num_classes, require_labels)


def training_data_from_folders(images_dir, labels_dir, num_classes: int = 2) -> TrainingData:
    """Every image of ``images_dir``; label files of ``labels_dir`` matched by name stem mark the labelled ones."""
    image_paths, label_paths = pair_images_with_labels(images_dir, labels_dir)
    names = [name_stem(path) for path in image_paths]
    images = [read_image(path) for path in image_paths]
    labels = {i: read_mask(label_paths[name], num_classes) for i, name in enumerate(names) if name in label_paths}
    data = training_data_from_arrays(images, labels, names, num_classes)
    data.spacing = common_spacing([read_spacing(path) for path in image_paths], data.spatial_dims)
    return data


def common_spacing(spacings: list[tuple[float, ...] | None], spatial_dims: int) -> tuple[float, ...] | None:
    """The median voxel size per axis of the images that carry one of ``spatial_dims`` axes (None: none does)."""
    known = [s for s in spacings if s is not None and len(s) == spatial_dims]
    return tuple(float(v) for v in np.median(np.asarray(known, float), axis=0)) if known else None


def cutmix_boxes(pairs: int, spatial: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """One random box per pair of patches for ``teacher.swap_in_pairs``: bool (pairs, 1, *spatial), each box
    covering a quarter to a half of the patch (as CutMix in cross pseudo supervision), aspect ratios up to 2:1."""
    boxes = torch.zeros((pairs, 1, *spatial), dtype=torch.bool)
    for pair in range(pairs):
        area = 0.25 + 0.25 * float(torch.rand((), generator=generator))
        aspect = torch.exp((torch.rand(len(spatial), generator=generator) - 0.5) * np.log(2.0))
        aspect = aspect / aspect.prod() ** (1 / len(spatial))
        region = []
        for edge, ratio in zip(spatial, aspect.tolist()):
            length = int(round(min(edge, max(1, edge * area ** (1 / len(spatial)) * ratio))))
            start = int(torch.randint(0, edge - length + 1, (), generator=generator))
            region.append(slice(start, start + length))
        boxes[(pair, 0, *region)] = True
    return boxes


def augment_intensity(images: torch.Tensor, generator: torch.Generator | None = None,
                      strength: float = 1.0) -> torch.Tensor:
    """Random intensity and colour perturbations of a batch (B, C, *spatial) in [0, 1], one draw per sample:
    contrast x0.7-1.3 and brightness +-0.1 around the patch mean, gamma 0.7-1.4, per-channel gain x0.9-1.1 and
    offset +-0.05 on RGB (stain variation), and Gaussian noise of sd up to 0.03. Geometry is untouched, so masks
    and predictions stay aligned. ``strength`` scales every range (0 = identity)."""
    if strength <= 0:
        return images
    batch, channels = images.shape[:2]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        values = torch.rand((batch, *shape), generator=generator)
        return (low + (high - low) * values).view(batch, *shape, *([1] * (images.dim() - 1 - len(shape))))

    s = strength
    x = images.float()
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    x = (x - mean) * uniform(1 - 0.3 * s, 1 + 0.3 * s) + mean + uniform(-0.1 * s, 0.1 * s)
    if channels > 1:
        gain = uniform(1 - 0.1 * s, 1 + 0.1 * s, channels)
        offset = uniform(-0.05 * s, 0.05 * s, channels)
        x = x * gain + offset
    x = x.clamp(0, 1)
    gamma = torch.exp(uniform(np.log(0.7) * s, np.log(1.4) * s))
    x = x.clamp_min(1e-6).pow(gamma)
    noise_sd = uniform(0.0, 0.03 * s)
    x = x + noise_sd * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1).to(images.dtype)
