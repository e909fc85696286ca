"""Export a trained model as a bioimage.io model package (bioimageio.spec format 0.5), Qt-free.

The package holds the kept mask pathway as TorchScript behind one input (the image) and one output (the uint8
class-id mask), so bioimage.io tools (bioimageio.core, deepImageJ, ilastik, the BioImage Model Zoo) run it
without napari-diffseg:

- preprocessing, as the spec expresses it: per channel, percentiles (1, 99.8) of the whole image map to 0 and 1
  (``scale_range``, the same linear percentile method as numpy), then ``clip`` to [0, 1], which is
  ``core.data.io.to_channels_first``. What the spec cannot express: napari-diffseg falls back to the channel's min / max
  where the two percentiles coincide (a sparse image); the package documentation says so.
- inside the TorchScript module: the working scale (shrink by area averaging, probabilities back to full
  resolution by linear interpolation, as ``SegmentationModel``), napari-diffseg's overlapping tiles with Gaussian
  blending (reflect padding where the image is smaller than a tile), the network at t = 0 on concat(empty mask,
  image in [-1, 1]), softmax and the model's threshold (``probabilities_to_mask``). The spec has no resampling
  step, so the working scale lives in the model; the tiles live there too, so a whole image run by a bioimage.io
  tool gives ``diffseg predict``'s mask.

The dependency (bioimageio.spec) is the optional ``[export]`` extra; bioimageio.core tests the package.
"""

from __future__ import annotations

import math
import os
import string
from pathlib import Path
import tempfile

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..errors import DiffsegError, InputError
from ..data.io import PERCENTILES, describe_kind, one_line, read_image, to_channels_first
from ..method.networks import TimeUNet
from .model import PREDICT_TILE_2D
from .predict import DEFAULT_TILE_3D
from .tiling import MAX_TILE_GROWTH

TILE_OVERLAP = 0.125  # core.prediction.predict.tiled_probabilities' default overlap
GAUSSIAN_SIGMA = 0.125  # core.prediction.tiling.gaussian_weight's default sigma_scale

PAPER_DOI = "10.48550/arXiv.2504.01547"
PAPER_URL = "https://arxiv.org/abs/2504.01547"
PAPER_TEXT = ("Diffusion-based semi-supervised segmentation with a diffusion teacher and a co-trained student "
              "(arXiv 2504.01547)")
DEFAULT_LICENSE = "CC-BY-4.0"
EPS = 1e-6  # scale_range's epsilon: (x - lo) / (hi - lo + eps); diffseg divides by (hi - lo)
INPUT_ID, OUTPUT_ID = "image", "mask"
_INSTALL_HINT = "bioimage.io export needs bioimageio.spec: pip install 'napari-diffseg[export]'"


class ExportError(DiffsegError):
    """The export cannot be done (missing extra, unusable sample image, output exists)."""


# ----------------------------------------------------------------------------------------------- the module
def _round_half_even(value: float) -> int:
    """Python's round() (half to even), written out so TorchScript computes the same sizes as core.data.scale."""
    low = math.floor(value)
    rest = value - low
    if rest > 0.5 or (rest == 0.5 and low % 2 == 1):
        low += 1
    return int(low)


class ExportedMaskPathway(nn.Module):
    """image (B, C, *spatial) in [0, 1] -> uint8 class ids (B, 1, *spatial): what ``SegmentationModel.predict``
    computes (torch backend, one deterministic step, its tiles and Gaussian blending), in one scriptable module."""

    def __init__(self, unet: TimeUNet, num_classes: int, threshold: float, working_scale: float):
        super().__init__()
        from ..method.diffusion import timestep_embedding

        self.unet = unet
        self.spatial_dims = int(unet.spatial_dims)
        self.upsample_mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        self.multiple = int(unet.size_multiple)
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.working_scale = float(working_scale)
        # napari-diffseg's torch tiles (core.prediction.model.PREDICT_TILE_2D, core.prediction.predict.DEFAULT_TILE_3D)
        self.tile = list(PREDICT_TILE_2D["torch"] if self.spatial_dims == 2 else DEFAULT_TILE_3D)
        self.growth = float(MAX_TILE_GROWTH if self.spatial_dims == 2 else 1.0)
        self.overlap = float(TILE_OVERLAP)
        self.sigma = float(GAUSSIAN_SIGMA)
        with torch.no_grad():  # t = 0 always: the time embedding is a constant per-channel bias
            bias = unet.time_mlp(timestep_embedding(torch.zeros(1, dtype=torch.long), unet.time_dim))
        self.register_buffer("time_bias", bias.reshape([1, -1] + [1] * self.spatial_dims).clone())

    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet.forward_with_bias(x, self.time_bias)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of (B, C, *spatial) in [0, 1] in overlapping tiles blended with Gaussian weights,
        tile for tile what ``core.prediction.predict.tiled_probabilities`` does."""
        spatial: list[int] = [int(s) for s in x.shape[2:]]
        growth = self.growth
        tile: list[int] = []
        starts: list[list[int]] = []
        padded: list[int] = []
        for axis in range(len(spatial)):
            edge = max(self.multiple, (self.tile[axis] // self.multiple) * self.multiple)
            overlap = int(edge * self.overlap)
            fitted = _fit_tile(spatial[axis], edge, overlap, self.multiple, growth)
            tile.append(fitted)
            padded.append(max(spatial[axis], fitted))
            starts.append(_tile_starts(padded[axis], fitted, overlap))
        pad: list[int] = []
        for axis in range(len(spatial) - 1, -1, -1):  # F.pad lists the last axis first
            pad += [0, padded[axis] - spatial[axis]]
        if sum(pad) > 0:
            x = F.pad(x, pad, mode="reflect")
        weight = self._gaussian(tile, x.device)
        probs = torch.zeros([x.shape[0], self.num_classes] + padded, dtype=torch.float32, device=x.device)
        weights = torch.zeros(padded, dtype=torch.float32, device=x.device)
        if self.spatial_dims == 2:
            for y in starts[0]:
                for z in starts[1]:
                    part = x[:, :, y:y + tile[0], z:z + tile[1]]
                    probs[:, :, y:y + tile[0], z:z + tile[1]] += self._tile_probabilities(part) * weight
                    weights[y:y + tile[0], z:z + tile[1]] += weight
            return (probs / weights)[:, :, : spatial[0], : spatial[1]]
        for a in starts[0]:
            for b in starts[1]:
                for c in starts[2]:
                    part = x[:, :, a:a + tile[0], b:b + tile[1], c:c + tile[2]]
                    probs[:, :, a:a + tile[0], b:b + tile[1], c:c + tile[2]] += self._tile_probabilities(part) * weight
                    weights[a:a + tile[0], b:b + tile[1], c:c + tile[2]] += weight
        return (probs / weights)[:, :, : spatial[0], : spatial[1], : spatial[2]]

    def _tile_probabilities(self, part: torch.Tensor) -> torch.Tensor:
        empty = torch.full([part.shape[0], self.num_classes] + [int(s) for s in part.shape[2:]], -1.0,
                           dtype=part.dtype, device=part.device)
        empty[:, 0] = 1.0
        return torch.softmax(self._unet(torch.cat([empty, part * 2.0 - 1.0], dim=1)).float(), dim=1)

    def _gaussian(self, tile: list[int], device: torch.device) -> torch.Tensor:
        """core.prediction.tiling.gaussian_weight in torch."""
        total = torch.zeros(tile, dtype=torch.float64, device=device)
        for axis in range(len(tile)):
            n = tile[axis]
            grid = (torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2.0) / (self.sigma * n)
            shape = [1] * len(tile)
            shape[axis] = n
            total = total + (grid * grid / 2.0).reshape(shape)
        weight = torch.exp(-total)
        weight = weight / weight.max()
        return torch.clamp(weight, min=1e-3).float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        full: list[int] = [int(s) for s in x.shape[2:]]
        scaled: list[int] = []
        for s in full:
            scaled.append(max(1, _round_half_even(s * self.working_scale)))
        if scaled != full:
            x = F.interpolate(x, size=scaled, mode="area")
        probs = self._probabilities(x)
        if scaled != full:
            probs = F.interpolate(probs, size=full, mode=self.upsample_mode, align_corners=False)
        foreground = 1.0 - probs[:, 0]
        if self.num_classes == 2:
            mask = (foreground > self.threshold).to(torch.uint8)
        else:
            classes = probs[:, 1:].argmax(dim=1).to(torch.uint8) + 1
            mask = torch.where(foreground > self.threshold, classes, torch.zeros_like(classes))
        return mask.unsqueeze(1)


def _tile_count(length: int, tile: int, min_overlap: int) -> int:
    """core.prediction.tiling._tile_count, scriptable."""
    if length <= tile:
        return 1
    step = max(1, tile - min_overlap)
    return max(2, (length - min_overlap + step - 1) // step)


def _fit_tile(length: int, tile: int, min_overlap: int, multiple: int, max_growth: float) -> int:
    """core.prediction.tiling.fit_tile, scriptable."""
    largest = max(tile, int(tile * max_growth) // multiple * multiple)
    count = _tile_count(length, largest, min_overlap)
    needed = (length + (count - 1) * min_overlap + count - 1) // count
    return min(largest, (needed + multiple - 1) // multiple * multiple)


def _tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """core.prediction.tiling.tile_starts, scriptable."""
    count = _tile_count(length, tile, min_overlap)
    if count == 1:
        return [0]
    return [_round_half_even(i * (length - tile) / (count - 1)) for i in range(count)]


def scripted_module(model) -> torch.jit.ScriptModule:
    """The TorchScript module of a loaded ``SegmentationModel`` (torch backend)."""
    unet = model.network.mask_path
    if not isinstance(unet, TimeUNet):
        raise ExportError("export needs the torch backend of the model (load it with backend='torch')")
    if getattr(model, "slice_axis", None) is not None:
        raise ExportError("this model segments volumes slice by slice (a 2D network, layout 2d); exporting that "
                          "layout to bioimage.io is not built yet: train with --layout 3d to export a volume model")
    module = ExportedMaskPathway(unet, model.config.num_classes, model.threshold, model.working_scale).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return torch.jit.script(module.cpu().float().to(memory_format=torch.contiguous_format))


# ----------------------------------------------------------------------------------------------- preprocessing
def spec_preprocess(image: np.ndarray) -> np.ndarray:
    """(B, C, *spatial) raw float32 -> what the package's preprocessing gives: scale_range per sample and channel
    over the spatial axes (percentiles 1, 99.8; eps 1e-6), then clip to [0, 1]."""
    axes = tuple(range(2, image.ndim))
    lo = np.percentile(image, PERCENTILES[0], axis=axes, keepdims=True)
    hi = np.percentile(image, PERCENTILES[1], axis=axes, keepdims=True)
    return np.clip((image - lo) / (hi - lo + EPS), 0.0, 1.0).astype(np.float32)


def raw_to_tensor(image: np.ndarray) -> np.ndarray:
    """A raw channels-last image as read by napari-diffseg -> the package's input (1, C, *spatial) float32,
    unscaled (alpha dropped, (Y, X, 1) squeezed, as ``core.data.io`` reads it)."""
    from ..data.io import _planes

    planes = _planes(np.asarray(image), None)
    return np.stack([p.astype(np.float32) for p in planes])[None]


# ----------------------------------------------------------------------------------------------- the package
def _sample_image(model, sample: Path | np.ndarray | None) -> np.ndarray:
    if sample is None:
        from ..data.synthetic import make_blobs_dataset

        spatial_dims, channels = model.config.spatial_dims, model.config.image_channels
        shape = (128, 128) if spatial_dims == 2 else (32, 64, 64)
        return make_blobs_dataset(1, shape, rgb=channels == 3, ndim=spatial_dims, seed=0)[0][0]
    image = read_image(Path(sample)) if not isinstance(sample, np.ndarray) else sample
    model.check_layout(image, "sample image")
    return image


def _cover(image01: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the sample image beside it with the mask outlined in colour (the middle plane of a volume)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    if image01.ndim == 4:  # (C, Z, Y, X)
        image01, mask = image01[:, image01.shape[1] // 2], mask[mask.shape[0] // 2]
    grey = image01.mean(0) if image01.shape[0] != 3 else None
    rgb = np.stack([grey] * 3, -1) if grey is not None else np.moveaxis(image01, 0, -1)
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    overlay = rgb.copy()
    colours = np.array([[0, 0, 0], [255, 200, 0], [0, 200, 255], [255, 60, 160], [120, 255, 80]], np.uint8)
    fill = mask > 0
    overlay[fill] = (0.55 * overlay[fill] + 0.45 * colours[np.minimum(mask[fill], 4)]).astype(np.uint8)
    overlay[find_boundaries(mask, mode="inner")] = [255, 0, 0]
    imsave(path, np.concatenate([rgb, overlay], axis=1), check_contrast=False)


def _documentation(model, name: str, size_min: int, sample_text: str) -> str:
    card = model.card or {}
    training = card.get("training", {}) if isinstance(card.get("training"), dict) else {}
    data = card.get("data", []) if isinstance(card.get("data"), list) else []
    labelled = sum(1 for entry in data if isinstance(entry, dict) and entry.get("label_sha256"))
    config = model.config
    kind = describe_kind(config.spatial_dims, config.image_channels)
    tile = " x ".join(str(t) for t in (PREDICT_TILE_2D["torch"] if config.spatial_dims == 2 else DEFAULT_TILE_3D))
    return f"""# {name}

A napari-diffseg segmentation model ({kind} images, {config.num_classes} classes), exported for bioimage.io.
napari-diffseg trains a diffusion teacher and a co-trained student on a few labelled and many unlabelled images
(arXiv 2504.01547); this package holds the kept mask pathway, run in one deterministic step (t = 0).

## Input and output
- input `{INPUT_ID}`: the raw image, axes batch, channel ({config.image_channels}), {'z, ' if config.spatial_dims == 3 else ''}y, x,
  float32 (cast the stored integers), any size of at least {size_min} px per spatial axis.
- output `{OUTPUT_ID}`: uint8 class ids (0 = background, 1..{config.num_classes - 1} = classes), one channel,
  the input's spatial size.

## Preprocessing
- in the package (bioimage.io `scale_range` then `clip`): per channel, the 1st and 99.8th percentiles of the
  whole image map to 0 and 1, clipped to [0, 1]; this is napari-diffseg's normalisation.
- **not expressible in the spec**: where the two percentiles coincide (a sparse image, mostly one value),
  napari-diffseg uses the channel's minimum and maximum instead; the package then gives a different (usually
  empty) mask. Normalise such images yourself to [0, 1] beforehand.
- **working scale {model.working_scale:g}**: the model was trained on images shrunk by this factor (chosen from
  the labelled structures). The spec has no resampling step, so the TorchScript module does it: it shrinks the
  image by area averaging, predicts, and brings the class probabilities back to full resolution by linear
  interpolation before the threshold ({model.threshold:.2f} on the foreground probability). Feed images at their
  native resolution.
- napari-diffseg predicts in overlapping tiles of {tile} px (at the working scale) blended with Gaussian weights;
  the TorchScript module does the same, so give it whole images. Where a bioimage.io tool cuts an image into its
  own blocks, the masks can differ near the blocks' edges.

## Training
- {len(data)} image(s), {labelled} labelled; {training.get('steps', '?')} steps.
- network: U-Net width {config.base_channels}, depth {config.depth}; threshold {model.threshold:.2f}.

## Validation
The package's test input is {sample_text}; its test output is what this TorchScript module gives for it.
`bioimageio test` reproduces it. napari-diffseg's own tests export a model trained on synthetic blobs, run
bioimageio.core's `test_model` offline and compare a prediction through bioimageio.core with `diffseg predict`
(at least 99.9 % of the pixels agree). The model's accuracy on your images is not validated here: check a few
masks, or score them against ground truth with `diffseg eval`.

## Citation
{PAPER_TEXT}. {PAPER_URL}

Exported by napari-diffseg (`diffseg export`).
"""


def export_bioimageio(model_dir: Path, out: Path, *, sample: Path | np.ndarray | None = None,
                      name: str | None = None, authors: list[str] | None = None,
                      license: str = DEFAULT_LICENSE, overwrite: bool = False) -> Path:
    """Write the model in ``model_dir`` as a bioimage.io model package (a .zip) to ``out``; returns ``out``.

    ``sample``: an image (path or raw array) for the test input, output and cover; default a synthetic one of
    the model's kind. ``authors``: the names in the package (default: the user name)."""
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as spec
    except ImportError:
        raise ExportError(_INSTALL_HINT) from None
    from .model import SegmentationModel

    try:
        spec.LicenseId(license)
    except ValueError:
        raise ExportError(f"licence {license!r} is not an SPDX identifier that bioimage.io accepts "
                          "(e.g. CC-BY-4.0, MIT, BSD-3-Clause)") from None
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: the package is a .zip file; give --out MODEL.zip")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; give --overwrite to replace it")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: folder not found")
    model = SegmentationModel.load(Path(model_dir), backend="torch")
    if getattr(model, "members", None):
        raise ExportError(f"{model_dir} is a model of layout 'both' (a 2D and a 3D network, their probabilities "
                          "averaged), which one bioimage.io network cannot hold: export a member instead, "
                          f"{Path(model_dir) / 'members' / '2d'} or {Path(model_dir) / 'members' / '3d'} (each a "
                          "complete model folder)")
    config = model.config
    if name is not None and not _valid_name(name):
        raise ExportError(f"name {name!r}: a bioimage.io name has 5 to 128 letters, digits, spaces and _+-() only")
    name = name or default_name(Path(model_dir))
    image = _sample_image(model, sample)
    raw = raw_to_tensor(image)
    module = scripted_module(model)
    with torch.inference_mode():
        mask = module(torch.from_numpy(spec_preprocess(raw))).numpy()
    size_min = max(_min_size(module.multiple, model.working_scale), 8)
    if any(s < size_min for s in raw.shape[2:]):
        raise InputError(f"sample image: every axis needs at least {size_min} px, this one is {raw.shape[2:]}")

    with tempfile.TemporaryDirectory(prefix="diffseg-export-") as tmp:
        folder = Path(tmp)
        torch.jit.save(module, str(folder / "mask_pathway.pt"))
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", mask)
        import tifffile  # the sample tensors (a human-readable example; the .npy are the test tensors)

        tifffile.imwrite(folder / "sample_input.tif", raw[0].squeeze(0) if raw.shape[1] == 1 else raw[0])
        tifffile.imwrite(folder / "sample_output.tif", mask[0, 0])
        _cover(to_channels_first(image), mask[0, 0], folder / "cover.png")
        (folder / "README.md").write_text(_documentation(model, name, size_min, "a synthetic image (bright blobs)" if sample is None else "an image chosen at export"), encoding="utf-8")

        spatial = ["z", "y", "x"][3 - config.spatial_dims:]
        channel_names = ["red", "green", "blue"] if config.image_channels == 3 else ["grey"]
        size = spec.ParameterizedSize(min=size_min, step=1)
        input_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channel_names])]
        input_axes += [spec.SpaceInputAxis(id=spec.AxisId(a), size=size) for a in spatial]
        output_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("class_id")])]
        output_axes += [spec.SpaceOutputAxis(id=spec.AxisId(a), size=spec.SizeReference(
            tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a))) for a in spatial]
        percentile_axes = [spec.AxisId(a) for a in spatial]
        inputs = [spec.InputTensorDescr(
            id=spec.TensorId(INPUT_ID), axes=input_axes, test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            description="the raw image (stored integers cast to float32)",
            preprocessing=[
                spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                    axes=percentile_axes, min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1], eps=EPS)),
                spec.ClipDescr(kwargs=spec.ClipKwargs(min=0.0, max=1.0)),
            ])]
        outputs = [spec.OutputTensorDescr(
            id=spec.TensorId(OUTPUT_ID), axes=output_axes, test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
            data=spec.NominalOrOrdinalDataDescr(values=list(range(config.num_classes)), type="uint8"),
            description="class ids: 0 background, 1.. the classes")]
        people = authors or [_user_name()]
        try:
            descr = _describe(spec, folder, name, people, license, config, inputs, outputs)
        except ValueError as error:  # pydantic's ValidationError: a name or author the spec refuses
            raise ExportError(f"the package description is not valid: {one_line(error)}") from None
        partial = out.with_name(f".{out.name}.partial")
        try:
            save_bioimageio_package(descr, output_path=partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out


def _describe(spec, folder: Path, name: str, people: list[str], license: str, config, inputs, outputs):
    """The ModelDescr of the package whose files lie in ``folder``."""
    return spec.ModelDescr(
        name=name,
        description=f"napari-diffseg semantic segmentation of {describe_kind(config.spatial_dims, config.image_channels)} "
                    f"images ({config.num_classes} classes), semi-supervised diffusion teacher-student",
        covers=[spec.FileDescr(source=folder / "cover.png")],
        authors=[spec.Author(name=person) for person in people],
        cite=[spec.CiteEntry(text=PAPER_TEXT, doi=spec.Doi(PAPER_DOI))],
        license=spec.LicenseId(license),
        documentation=spec.FileDescr(source=folder / "README.md"),
        tags=["segmentation", "semantic-segmentation", f"{config.spatial_dims}d", "napari-diffseg",
              "diffusion", "semi-supervised", "pytorch"],
        inputs=inputs, outputs=outputs,
        weights=spec.WeightsDescr(torchscript=spec.TorchscriptWeightsDescr(
            source=folder / "mask_pathway.pt", pytorch_version=spec.Version(torch.__version__.split("+")[0]))),
    )


_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_+- ()")


def _valid_name(name: str) -> bool:
    return 5 <= len(name) <= 128 and set(name) <= _NAME_CHARACTERS


def default_name(model_dir: Path) -> str:
    """The folder's name in the characters a bioimage.io name allows (letters, digits, _+- () and spaces; 5 to
    64 characters)."""
    name = "".join(c if c in _NAME_CHARACTERS else "-" for c in model_dir.resolve().name).strip()[:48]
    return name if len(name) >= 5 and name.strip("-_ ") else f"napari-diffseg {name}".strip()


def _min_size(multiple: int, working_scale: float) -> int:
    """The smallest axis whose working-scale size is at least the network's size multiple (reflect padding needs
    an axis longer than the pad)."""
    size = multiple
    while _round_half_even(size * working_scale) < multiple:
        size += 1
    return size


def _user_name() -> str:
    import getpass

    try:
        return getpass.getuser() or "napari-diffseg user"
    except (KeyError, OSError):
        return "napari-diffseg user"
