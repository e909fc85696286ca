"""Optional OpenVINO backend for prediction on a CPU (``pip install 'napari-diffseg[openvino]'``): the U-Net of the
mask pathway converted by OpenVINO and compiled for the CPU, called by the same tiled predictor in place of the
torch module (training stays on torch). On the 2-core development machine one 1024-px tile of the default 2D
model ran 3.8x faster than torch with bf16 autocast; a whole 2048 x 2048 image, tiled and blended, 1.3-1.8x
(2.9-3.5 megapixels/s against 1.8-2.2 in the same runs; benchmarks/predict_speed.md), with the same masks.

Converting a model traces it (about 8 s); the converted model is cached as OpenVINO IR under the user's cache folder,
keyed by a hash of the weights, so later loads of the same model read it back. The cache is data, not trusted: an
entry is used only when its files hash to what was recorded when they were written (``<key>.sha256``, written last);
a tampered, torn or foreign entry is converted again, and a cache folder that cannot be written is skipped with a
warning (the prediction goes on).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
import warnings

import torch
from torch import nn

from ..errors import InputError
from ..data.io import one_line
from ..method.networks import TimeUNet

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "openvino")
TRACE_EDGE = 64  # spatial edge of the example input the conversion traces with (any multiple of 2**depth)


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path | None:
    """Where converted models are cached; None when there is no home folder to put it in (no cache then)."""
    try:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    except RuntimeError:  # no home directory could be determined
        log.warning("no cache folder for the converted OpenVINO model (no home folder); it is converted each time")
        return None
    return Path(base) / "napari-diffseg" / "openvino"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_files(xml: Path) -> tuple[Path, Path]:
    return xml, xml.with_suffix(".bin")


def _digest_record(xml: Path) -> Path:
    return xml.with_suffix(".sha256")


def read_cached(core, xml: Path):
    """The cached model at ``xml`` when its files hash to the recorded digests, else None (a damaged or tampered
    entry is reported and converted again)."""
    try:
        if not xml.is_file():
            return None
        if not _digest_record(xml).is_file():  # written before entries had a record: converted and recorded anew
            log.info("the cached OpenVINO model %s has no recorded hash; converting the model again", xml)
            return None
        recorded = json.loads(_digest_record(xml).read_text())
        actual = {path.name: _file_digest(path) for path in _entry_files(xml)}
        if recorded != actual:
            log.warning("the cached OpenVINO model %s does not match its recorded hash (changed since it was "
                        "written); converting the model again", xml)
            return None
        return core.read_model(str(xml))
    except Exception as error:  # unreadable, no record, not JSON, not a model: convert again
        log.warning("ignoring the cached OpenVINO model %s (%s); converting the model again", xml,
                    one_line(error))
        return None


def write_cached(ov, model, xml: Path) -> None:
    """Cache ``model`` at ``xml``: the IR under temporary names, renamed into place, then the digest record last
    (an entry without a matching record is never used). A cache that cannot be written is skipped with a
    warning."""
    temporary = xml.with_name(f".{xml.stem}.{os.getpid()}.tmp.xml")
    record = xml.with_name(f".{xml.stem}.{os.getpid()}.tmp.sha256")
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(temporary), compress_to_fp16=False)  # the weights as trained
        digests = {final.name: _file_digest(written) for final, written in zip(_entry_files(xml),
                                                                                _entry_files(temporary))}
        for final, written in zip(_entry_files(xml), _entry_files(temporary)):
            os.replace(written, final)
        record.write_text(json.dumps(digests))
        os.replace(record, _digest_record(xml))
    except Exception as error:  # a read-only or full cache folder, a file in its way: predict without it
        log.warning("could not cache the converted OpenVINO model in %s (%s); it is converted again next time",
                    xml.parent, one_line(error))
        for leftover in (*_entry_files(temporary), record):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass


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
        model = None if path is None else read_cached(core, path)
        if model is None:
            model = self._convert(ov, unet)
            if path is not None:
                write_cached(ov, model, path)
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
