"""Out-of-core prediction (core/prediction/large.py): block-by-block prediction from TIFF (memory-mapped and compressed) and
zarr inputs into zarr, the completion mark, the tiled-TIFF copy, and agreement with in-memory prediction."""

from __future__ import annotations


import numpy as np
import pytest
import tifffile
import zarr

from napari_diffseg.core.prediction import large
from napari_diffseg.core.errors import InputError
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.prediction.predict import run_to_completion
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from test_predict import fitted_model_dir

BLOCK, HALO, TILE = (64, 64), (24, 24), (64, 64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fitted_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir) -> SegmentationModel:
    return SegmentationModel.load(model_dir)


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    (image, _), = make_blobs_dataset(1, shape=(200, 170), seed=3)
    return image.astype(np.uint16) * 200  # a microscope-like 16-bit image


def _write(kind: str, raw: np.ndarray, tmp_path):
    if kind == "zarr":
        path = tmp_path / "image.zarr"
        zarr.open_array(str(path), mode="w", shape=raw.shape, chunks=(50, 50), dtype=raw.dtype)[:] = raw
    else:
        path = tmp_path / "image.tif"
        options = {"tile": (64, 64), "compression": "zlib"} if kind == "compressed tiff" else {}
        tifffile.imwrite(path, raw, **options)
    return path


def _drain(generator) -> tuple[list, object]:
    """All progress events of a generator and its return value."""
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


@pytest.mark.parametrize("kind", ["tiff", "compressed tiff", "zarr"])
def test_block_prediction_matches_in_memory_prediction(model, raw, tmp_path, kind):
    image = large.open_lazy(_write(kind, raw, tmp_path))
    assert not isinstance(image, np.ndarray) or isinstance(image, np.memmap)  # read lazily, not loaded
    events, out_path = _drain(large.predict_large(model, image, tmp_path / "mask.zarr", block=BLOCK, halo=HALO,
                                                  tile=TILE))
    blocks = len(large.block_corners(raw.shape, BLOCK))
    assert [e.done for e in events] == list(range(1, blocks + 1)) and blocks == 12
    assert large.is_complete(out_path)
    mask = np.asarray(zarr.open_array(str(out_path), mode="r"))
    expected = model.predict(raw, tile=TILE)
    assert 0.05 < expected.mask.mean() < 0.9  # an informative mask, so agreement means something
    # blocks tile the image differently from one in-memory pass; this tiny network's own in-memory result moves
    # by ~0.2 % of pixels between tile sizes 64 and 128, all of them near the threshold
    different = mask != expected.mask
    assert different.mean() <= 0.005, different.mean()
    foreground = 1 - expected.probabilities[0]
    assert np.all(np.abs(foreground[different] - model.threshold) < 0.3)


def test_a_stopped_prediction_is_not_marked_complete(model, raw, tmp_path):
    generator = large.predict_large(model, raw, tmp_path / "mask.zarr", block=BLOCK, halo=HALO, tile=TILE)
    next(generator)
    generator.close()  # what Cancel does between blocks
    assert (tmp_path / "mask.zarr").exists() and not large.is_complete(tmp_path / "mask.zarr")
    assert not large.is_complete(tmp_path / "missing.zarr")


def test_tiff_copy_of_the_zarr_mask_is_identical(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(700, 530), (3, 300, 520)]:
        source = tmp_path / f"mask{len(shape)}.zarr"
        array = zarr.open_array(str(source), mode="w", shape=shape, chunks=(1,) * (len(shape) - 2) + (128, 128),
                                dtype=np.uint8)
        data = rng.integers(0, 3, shape, dtype=np.uint8)
        array[:] = data
        target = large.zarr_to_tiff(source, tmp_path / f"mask{len(shape)}.tif", tile=256)
        np.testing.assert_array_equal(tifffile.imread(target), data)
        assert not list(tmp_path.glob(".*partial"))


def test_intensity_ranges_of_a_subsample_are_close_to_the_exact_ones(raw):
    exact = large.subsample_ranges(raw, 2, max_samples=raw.size)
    sampled = large.subsample_ranges(raw, 2, max_samples=raw.size // 9)
    span = exact[0][1] - exact[0][0]
    assert abs(sampled[0][0] - exact[0][0]) < 0.02 * span and abs(sampled[0][1] - exact[0][1]) < 0.02 * span


def test_pixel_count_reads_only_the_header(raw, tmp_path):
    assert large.pixel_count(_write("compressed tiff", raw, tmp_path)) == raw.size
    assert large.pixel_count(_write("zarr", raw, tmp_path)) == raw.size
    assert large.pixel_count(tmp_path / "photo.png") == 0


def test_unreadable_inputs_give_clear_errors(model, tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match="zarr"):
        large.open_lazy(tmp_path / "empty.zarr")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="TIFF"):
        large.open_lazy(tmp_path / "broken.tif")
    with pytest.raises(InputError, match="trained on"):
        next(large.predict_large(model, np.zeros((100, 100, 3), np.uint8), tmp_path / "m.zarr"))


def test_predict_panel_job_sends_large_files_block_by_block_to_disk_only(model_dir, raw, tmp_path, monkeypatch):
    from napari_diffseg._widgets.predict import PredictProgress, PredictResult, PredictStatus, predict_job

    monkeypatch.setattr(large, "LARGE_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    path = _write("compressed tiff", raw, tmp_path)
    with pytest.raises(InputError, match="too large to segment in memory"):
        list(predict_job(model_dir, [("image", path, None)], None, uncertainty=False))
    events = list(predict_job(model_dir, [("image", path, None)], tmp_path / "out", uncertainty=False))
    assert isinstance(events[-1], PredictResult) and events[-1].path == tmp_path / "out" / "image.tif"
    # the status line says what happens before the first block: the model loads (OpenVINO may convert it first)
    assert [e.text.split(" (")[0] for e in events[:2]] == ["Loading the model", "Segmenting 1 image(s)…"]
    assert isinstance(events[0], PredictStatus) and isinstance(events[1], PredictStatus)
    fractions = [e.fraction for e in events if isinstance(e, PredictProgress)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 12
    assert large.is_complete(tmp_path / "out" / "image.zarr")
    assert tifffile.imread(events[-1].path).shape == raw.shape


def test_blocks_run_on_a_dask_cluster_like_in_one_process(model_dir, model, raw, tmp_path, monkeypatch):
    """A LocalCluster of 2 worker processes (1 thread each) predicts the blocks of a zarr input; the result equals
    the one-process block-by-block result; the CLI's --dask-scheduler takes the same path."""
    from distributed import Client, LocalCluster

    from napari_diffseg.core.prediction.large_cluster import predict_large_on_cluster
    from test_cli import run_cli

    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    path = _write("zarr", raw, tmp_path)
    local = run_to_completion(large.predict_large(model, large.open_lazy(path), tmp_path / "local.zarr"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        events, result = _drain(predict_large_on_cluster(model_dir, path, tmp_path / "cluster.zarr", client,
                                                         bf16=False))
        assert [e.done for e in events] == list(range(1, 13))
        assert large.is_complete(result)
        np.testing.assert_array_equal(np.asarray(zarr.open_array(str(result), mode="r")),
                                      np.asarray(zarr.open_array(str(local), mode="r")))
        code, out, err = run_cli(["predict", model_dir, path, "--out", tmp_path / "pred", "--dask-scheduler",
                                  cluster.scheduler_address])
        assert code == 0, err
        assert large.is_complete(tmp_path / "pred" / "image.zarr")


def test_predict_panel_shows_a_large_image_filling_in_then_at_full_resolution(make_napari_viewer, qtbot, model_dir,
                                                                              raw, tmp_path, monkeypatch):
    """While blocks are written the viewer shows every 4th pixel (in memory, scaled onto full-resolution
    coordinates); once complete, multiscale layers whose level 0 reads the written zarr and the image lazily."""
    from napari_diffseg._state import DiffsegState
    from napari_diffseg._widgets import _layers
    from napari_diffseg._widgets.predict import OUTPUT_DISK, SOURCE_FILE, PredictPanel

    monkeypatch.setattr(large, "LARGE_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(large, "BLOCK_2D", BLOCK)
    monkeypatch.setattr(large, "OVERVIEW_PIXELS", 3000)  # 200 x 170: every 4th pixel, 50 x 43
    shown, pasted = [], []
    original_show, original_paste = _layers.LargeOverview._show, _layers.LargeOverview._put

    def spy_show(overview, image_levels, mask_levels, scale):
        shown.append((len(mask_levels), scale, overview.mask.copy()))
        original_show(overview, image_levels, mask_levels, scale)

    def spy_paste(overview, piece):
        pasted.append(piece.region)
        original_paste(overview, piece)

    monkeypatch.setattr(_layers.LargeOverview, "_show", spy_show)
    monkeypatch.setattr(_layers.LargeOverview, "_put", spy_paste)
    path = _write("compressed tiff", raw, tmp_path)
    viewer = make_napari_viewer()
    panel = PredictPanel(viewer, DiffsegState())
    panel.model_row.setText(str(model_dir))
    panel.source_combo.setCurrentText(SOURCE_FILE)
    panel.source_row.setText(str(path))
    panel.output_combo.setCurrentText(OUTPUT_DISK)
    panel.out_row.setText(str(tmp_path / "out"))
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)

    assert len(pasted) == 12  # one piece per block (4 x 3 blocks of 64 x 64)
    (levels, scale, first_mask), (final_levels, final_scale, final_overview) = shown[0], shown[-1]
    assert levels == 1 and scale == (4, 4) and first_mask.shape == (50, 43)
    assert 0 < np.count_nonzero(first_mask) < np.count_nonzero(final_overview)  # it filled in block by block
    assert final_levels == 2 and final_scale == (1, 1)
    written = tifffile.imread(tmp_path / "out" / "image.tif")
    mask_layer, image_layer = viewer.layers[_layers.PREDICT_MASK], viewer.layers[_layers.PREDICT_IMAGE]
    assert mask_layer.multiscale and image_layer.multiscale
    np.testing.assert_array_equal(np.asarray(mask_layer.data[0][:]), written)
    np.testing.assert_array_equal(mask_layer.data[1], written[::4, ::4])
    np.testing.assert_array_equal(image_layer.data[1], raw[::4, ::4])
    assert isinstance(mask_layer.data[0], zarr.Array) and image_layer.data[0].shape == raw.shape  # read lazily


def test_predict_panel_refuses_to_write_masks_over_its_input_images(make_napari_viewer, model_dir, raw, tmp_path,
                                                                     monkeypatch):
    """Output folder = input folder: the masks would replace the images; the panel says so and writes nothing."""
    from napari_diffseg._state import DiffsegState
    from napari_diffseg._widgets import _common
    from napari_diffseg._widgets.predict import OUTPUT_DISK, SOURCE_FOLDER, PredictPanel

    errors = []
    monkeypatch.setattr(_common, "notify_error", errors.append)

    path = _write("compressed tiff", raw, tmp_path)
    before = path.read_bytes()
    panel = PredictPanel(make_napari_viewer(), DiffsegState())
    panel.model_row.setText(str(model_dir))
    panel.source_combo.setCurrentText(SOURCE_FOLDER)
    panel.source_row.setText(str(tmp_path))
    panel.output_combo.setCurrentText(OUTPUT_DISK)
    panel.out_row.setText(str(tmp_path))
    assert panel.run() is None and panel.worker is None
    assert len(errors) == 1 and "would overwrite an input image; choose another output folder" in errors[0]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]
