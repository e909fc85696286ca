"""Optional OpenVINO backend for prediction on a CPU (``pip install 'napari-diffseg[openvino]'``): the U-Net of the
mask pathway converted by OpenVINO and compiled for the CPU, called by the same tiled predictor in place of the
torch module (training stays on torch). On the 2-core development machine one 1024-px tile of the default 2D
model ran 3.8x faster than torch with bf16 autocast; a whole 2048 x 2048 image, tiled and blended, 1.3-1.8x
(2.9-3.5 megapixels/s against 1.8-2.2 in the same runs; benchmarks/predict_speed.md), with the same masks.

Converting a model traces it (about 8 s); the converted model is cached as OpenVINO IR under the user's cache folder,
keyed by a hash of the weights, so later loads of the same model read it back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
import warnings

import torch
from torch import nn

from .errors import InputError
from .networks import TimeUNet

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "openvino")
TRACE_EDGE = 64  # spatial edge of the example input the conversion traces with (any multiple of 2**depth)


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-diffseg" / "openvino"


def _weights_key(unet: TimeUNet) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class CompiledUNet(nn.Module):
    """A TimeUNet run by OpenVINO on the CPU: called like the module it replaces, ``(x, t) -> logits`` with any
    batch and spatial size (multiples of ``size_multiple``); inference only."""

    def __init__(self, unet: TimeUNet, threads: int, bf16: bool, cache: Path | None = None):
        super().__init__()
        import openvino as ov

        self.size_multiple = unet.size_multiple
        self.spatial_dims = unet.spatial_dims
        core = ov.Core()
        path = None if cache is None else Path(cache) / f"{_weights_key(unet)}.xml"
        model = None
        if path is not None and path.is_file():
            try:
                model = core.read_model(str(path))
            except Exception as error:  # a damaged cache entry: convert again
                log.warning("ignoring the cached OpenVINO model %s (%s)", path, error)
        if model is None:
            model = self._convert(ov, unet)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ov.save_model(model, str(path), compress_to_fp16=False)  # the weights as trained
                except OSError as error:  # a read-only home: convert again next time
                    log.info("could not cache the OpenVINO model in %s (%s)", path.parent, error)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                          "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})

    @staticmethod
    def _convert(ov, unet: TimeUNet):
        in_channels = unet.encoder[0][0].in_channels
        example = (torch.rand(1, in_channels, *(TRACE_EDGE,) * unet.spatial_dims), torch.zeros(1, dtype=torch.long))
        shapes = [ov.PartialShape([-1, in_channels] + [-1] * unet.spatial_dims), ov.PartialShape([-1])]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit (torch 2.13 warns)
            return ov.convert_model(unet.eval(), example_input=example, input=shapes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        result = self.compiled([x.detach().float().contiguous().cpu().numpy(), t.detach().cpu().numpy()])
        return torch.from_numpy(result[0])


def choose(backend: str, device: torch.device, spatial_dims: int = 2) -> str:
    """The backend that runs: ``auto`` is OpenVINO for a 2D model on a CPU where it is installed, else torch (3D
    stays on torch: on a 200 x 2048 x 2048 volume OpenVINO's peak memory went over 2 GB, torch's stayed at 1.4 GB;
    benchmarks/scale_large.md). InputError for a backend that cannot run here."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "openvino" if device.type == "cpu" and spatial_dims == 2 and available() else "torch"
    if backend == "openvino" and not available():
        raise InputError("the openvino backend needs OpenVINO: pip install 'napari-diffseg[openvino]'")
    if backend == "openvino" and device.type != "cpu":
        raise InputError(f"the openvino backend runs on the CPU, not on {device}: use --backend torch")
    return backend
