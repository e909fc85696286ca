"""The optional OpenVINO backend (core/prediction/openvino_backend.py): the compiled U-Net computes what the torch module does,
in 2D and 3D at any size; the converted model is cached by its weights; SegmentationModel and `diffseg predict`
give the same masks with either backend."""

from __future__ import annotations


import numpy as np
import pytest
import tifffile
import torch

from napari_diffseg.core.prediction import openvino_backend
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.method.networks import TimeUNet
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from test_cli import run_cli
from test_predict import fitted_model_dir


@pytest.mark.parametrize("spatial_dims, shape", [(2, (1, 40, 56)), (3, (2, 16, 24, 32))])
def test_compiled_unet_computes_what_the_torch_module_does_and_is_cached(spatial_dims, shape, tmp_path,
                                                                         monkeypatch):
    torch.manual_seed(0)
    unet = TimeUNet(spatial_dims, 3, 2, base_channels=4, depth=2).eval()
    compiled = openvino_backend.CompiledUNet(unet, threads=1, bf16=False, cache=tmp_path)
    x = torch.rand(shape[0], 3, *shape[1:])
    t = torch.tensor([0, 500][: shape[0]])
    with torch.no_grad():
        expected = unet(x, t)
    np.testing.assert_allclose(compiled(x, t).numpy(), expected.numpy(), atol=1e-4)
    assert len(list(tmp_path.glob("*.xml"))) == 1  # cached by the weights
    monkeypatch.setattr(openvino_backend.CompiledUNet, "_convert", staticmethod(lambda *_: pytest.fail("converted")))
    again = openvino_backend.CompiledUNet(unet, threads=1, bf16=False, cache=tmp_path)  # read back, not converted
    np.testing.assert_allclose(again(x, t).numpy(), expected.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fitted_model_dir(tmp_path_factory.mktemp("model"))


def test_both_backends_give_the_same_masks(model_dir, tmp_path):
    (image, _), = make_blobs_dataset(1, shape=(150, 130), seed=8)
    torch_model = SegmentationModel.load(model_dir, backend="torch")
    openvino_model = SegmentationModel.load(model_dir, backend="openvino")
    assert (torch_model.backend, openvino_model.backend) == ("torch", "openvino")
    assert SegmentationModel.load(model_dir, backend="auto").backend == "openvino"  # installed, on a CPU, 2D
    assert openvino_backend.choose("auto", torch.device("cpu"), spatial_dims=3) == "torch"  # 3D: torch's memory
    with_torch = torch_model.predict(image, uncertainty=True, tile=(64, 64))
    with_openvino = openvino_model.predict(image, uncertainty=True, tile=(64, 64))
    assert 0 < with_torch.mask.mean() < 1
    assert (with_torch.mask == with_openvino.mask).mean() >= 0.999
    np.testing.assert_allclose(with_openvino.uncertainty, with_torch.uncertainty, atol=1e-3)  # draws alike
    with pytest.raises(InputError, match="backend must be one of"):
        SegmentationModel.load(model_dir, backend="onnx")

    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    for backend in ("torch", "openvino"):
        code, _, err = run_cli(["predict", model_dir, folder, "--out", tmp_path / backend, "--backend", backend,
                                "--tile", "64", "64", "--threads", "1"])
        assert code == 0, err
        assert f"prediction backend: {backend}" in err
    agree = tifffile.imread(tmp_path / "torch" / "a.tif") == tifffile.imread(tmp_path / "openvino" / "a.tif")
    assert agree.mean() >= 0.999
