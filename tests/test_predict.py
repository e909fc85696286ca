"""Tests for napari_diffseg.core.prediction.predict and core.method.checkpoint: threshold sweep, mask conversion, entropy, tiled
prediction (tiled equals untiled, odd and small sizes, 3D, ensembles, multi-step sampling), and loading models."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.core.method.checkpoint import BEST, save_checkpoint
from napari_diffseg.core.prediction.model import SegmentationModel
from napari_diffseg.core.method.networks import fold_batch_norm
from napari_diffseg.core.errors import InputError, ModelError
from napari_diffseg.core.data.io import to_channels_first
from napari_diffseg.core.data.metrics import THRESHOLDS, best_threshold, dice
from napari_diffseg.core.prediction.predict import (TileProgress, mirror_sets, normalised_entropy, probabilities_to_mask, run_to_completion,
                                         sample_mask, tiled_probabilities)
from napari_diffseg.core.prediction.tiling import gaussian_weight
from napari_diffseg.core.data.synthetic import make_blobs_dataset
from napari_diffseg.core.method.teacher import DiffusionTwin, NetworkConfig, supervised_loss


# ----- threshold sweep, masks, entropy -----

def test_best_threshold_known_optimum_and_pooled_dice():
    # two images; foreground: 90 pixels at 0.8 and 10 at 0.62; background: 850 at 0.1, 30 at 0.57, 5 at 0.71
    # predicted (fg + bg): 0.1 .. 0.55: 100 + 35; 0.6: 100 + 5; 0.65, 0.7: 90 + 5; 0.75: 90 + 0; 0.8 ..: nothing
    probs = np.concatenate([np.full(90, 0.8), np.full(10, 0.62), np.full(850, 0.1), np.full(30, 0.57),
                            np.full(5, 0.71)]).astype(np.float32)
    truth = np.concatenate([np.ones(100), np.zeros(885)]).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(probs))
    probs, truth = probs[order], truth[order]
    split = 400  # pooled over images, not averaged per image
    threshold, score = best_threshold([probs[:split], probs[split:]], [truth[:split], truth[split:]])
    assert threshold == pytest.approx(0.6)
    assert score == pytest.approx(2 * 100 / (105 + 100))
    assert score == pytest.approx(dice(probs > threshold, truth))
    # the hand values of the other thresholds are indeed lower
    assert dice(probs > 0.55, truth) == pytest.approx(200 / 235)
    assert dice(probs > 0.65, truth) == pytest.approx(180 / 195)
    assert dice(probs > 0.75, truth) == pytest.approx(180 / 190)
    assert 180 / 190 < score
    assert dice(probs > 0.8, truth) == 0.0


def test_best_threshold_noisy_probabilities():
    rng = np.random.default_rng(1)
    truth = rng.random((64, 64)) < 0.3
    probs = np.clip(truth * 0.7 + rng.normal(0.0, 0.12, truth.shape), 0, 1).astype(np.float32)
    threshold, score = best_threshold([probs], [truth])
    assert threshold in THRESHOLDS
    assert 0.25 <= threshold <= 0.45  # halfway between the two modes (0 and 0.7), nudged by the class imbalance
    exhaustive = max(dice(probs > t, truth) for t in THRESHOLDS)
    assert score == pytest.approx(exhaustive)
    assert score == pytest.approx(dice(probs > threshold, truth))


def test_best_threshold_empty_truth_and_empty_prediction():
    threshold, score = best_threshold([np.zeros((8, 8), np.float32)], [np.zeros((8, 8), np.uint8)])
    assert score == 1.0 and threshold in THRESHOLDS


def test_probabilities_to_mask_binary():
    fg = np.array([[0.1, 0.5, 0.51, 0.9]], np.float32)
    probs = np.stack([1 - fg, fg])
    mask = probabilities_to_mask(probs, 0.5)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 0, 1, 1]]
    assert probabilities_to_mask(probs, 0.05).tolist() == [[1, 1, 1, 1]]


def test_probabilities_to_mask_multi_class():
    probs = np.array([
        [[0.8, 0.1, 0.2, 0.45]],   # background
        [[0.1, 0.7, 0.3, 0.25]],   # class 1
        [[0.1, 0.2, 0.5, 0.30]],   # class 2
    ], np.float32)
    mask = probabilities_to_mask(probs, 0.5)
    assert mask.dtype == np.uint8
    # last pixel: background is the single most likely class, but the foreground total (0.55) passes 0.5
    assert mask.tolist() == [[0, 1, 2, 2]]
    assert probabilities_to_mask(probs, 0.6).tolist() == [[0, 1, 2, 0]]


def test_normalised_entropy():
    one_hot = np.zeros((3, 4, 4), np.float32)
    one_hot[1] = 1
    assert normalised_entropy(one_hot).dtype == np.float32
    assert float(normalised_entropy(one_hot).max()) < 1e-4
    uniform = np.full((3, 4, 4), 1 / 3, np.float32)
    np.testing.assert_allclose(normalised_entropy(uniform), 1.0, atol=1e-5)
    binary = np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.1)]).astype(np.float32)
    expected = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    np.testing.assert_allclose(normalised_entropy(binary), expected, rtol=1e-5)


def test_gaussian_weight_peaks_in_the_centre_and_stays_positive():
    weight = gaussian_weight((16, 24))
    assert weight.shape == (16, 24) and weight.dtype == np.float32
    assert weight.max() == pytest.approx(1.0, abs=0.01) and weight.min() >= 1e-3
    assert weight[8, 12] > weight[0, 12] and weight[8, 12] > weight[8, 0]


# ----- tiled prediction -----

def _fit(spatial_dims: int, depth: int, base: int, shape: tuple[int, ...], steps: int) -> DiffusionTwin:
    """A tiny teacher whose mask pathway is briefly trained on blobs, so that its output depends on the image
    (a fresh network predicts almost the same probability everywhere, which would make tiling tests vacuous)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # such tiny steps only lose time to thread hand-offs
    network = DiffusionTwin(NetworkConfig(spatial_dims, 1, 2, base_channels=base, depth=depth))
    pairs = make_blobs_dataset(4, shape=shape, seed=5)
    images = torch.from_numpy(np.stack([to_channels_first(image) for image, _ in pairs]))
    labels = torch.from_numpy(np.stack([mask for _, mask in pairs])).long()
    optimiser = torch.optim.Adam(network.mask_path.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = supervised_loss(network, images, labels, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return network.eval()


@pytest.fixture(scope="module")
def net2d() -> DiffusionTwin:
    return _fit(2, depth=2, base=4, shape=(32, 32), steps=30)


@pytest.fixture(scope="module")
def net3d() -> DiffusionTwin:
    # depth 1: a depth-2 3D U-Net sees about 44 voxels, more than the tiles that fit a quick CPU test, so its
    # tiles could not agree with the whole-volume pass for reasons unrelated to the tiling code
    return _fit(3, depth=1, base=4, shape=(16, 16, 16), steps=20)


def _image(shape, seed=2) -> np.ndarray:
    (image, _), = make_blobs_dataset(1, shape=shape, seed=seed)
    return to_channels_first(image)


def _compare_tiled_with_whole(network, image01, tile):
    events: list[TileProgress] = []
    tiled = run_to_completion(tiled_probabilities([network], image01, tile, overlap=0.5, batch_size=3), events.append).primary
    whole = run_to_completion(tiled_probabilities([network], image01, image01.shape[1:])).primary
    assert tiled.shape == whole.shape == (2, *image01.shape[1:])
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    # the comparison means something only if the network is informative
    whole_mask = whole.argmax(0)
    assert 0.01 < whole_mask.mean() < 0.9 and whole[1].std() > 0.05
    agreement = (tiled.argmax(0) == whole_mask).mean()
    interior = (slice(None),) + tuple(slice(8, s - 8) for s in image01.shape[1:])
    difference = np.abs(tiled - whole)[interior].mean()
    assert agreement >= 0.99, agreement
    assert difference < 0.02, difference
    assert events and events[-1].done == events[-1].total > 1
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_tiled_equals_untiled_2d(net2d):
    _compare_tiled_with_whole(net2d, _image((96, 96)), (48, 48))


def test_tiled_equals_untiled_2d_size_not_a_tile_multiple(net2d):
    _compare_tiled_with_whole(net2d, _image((88, 72), seed=3), (48, 48))


def test_tiled_equals_untiled_3d(net3d):
    _compare_tiled_with_whole(net3d, _image((32, 32, 32)), (24, 24, 24))


@pytest.mark.parametrize(
    "spatial_dims, shape, tile",
    [(2, (37, 45), (64, 64)), (2, (70, 61), (32, 32)), (2, (30, 50), (30, 30)), (3, (13, 19, 22), (16, 32, 32)),
     (3, (20, 18, 18), (8, 8, 8))],
)
def test_output_shape_equals_input_shape(spatial_dims, shape, tile):
    torch.manual_seed(0)
    network = DiffusionTwin(NetworkConfig(spatial_dims, 1, 3, base_channels=4, depth=2))
    image01 = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    result = run_to_completion(tiled_probabilities([network], image01, tile, overlap=0.5))
    assert result.primary.shape == (3, *shape) and result.primary.dtype == np.float32
    assert result.ensemble is None
    np.testing.assert_allclose(result.primary.sum(0), 1.0, atol=1e-5)


def test_image_smaller_than_tile_matches_a_direct_forward_pass(net2d):
    image01 = _image((40, 48))  # multiples of 4: no padding, one tile, the Gaussian weight divides out
    probs = run_to_completion(tiled_probabilities([net2d], image01, (64, 64))).primary
    with torch.no_grad():
        direct = torch.softmax(net2d.mask_logits(torch.from_numpy(image01)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_rgb_tiles():
    torch.manual_seed(0)
    network = DiffusionTwin(NetworkConfig(2, 3, 2, base_channels=4, depth=2))
    image01 = np.random.default_rng(0).random((3, 40, 36), dtype=np.float32)
    assert run_to_completion(tiled_probabilities([network], image01, (32, 32))).primary.shape == (2, 40, 36)


def test_mirror_sets_start_with_the_identity_and_cover_every_subset_of_axes():
    assert mirror_sets(2) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_sets(3)) == 8 and mirror_sets(3)[0] == () and len(set(mirror_sets(3))) == 8


@pytest.mark.parametrize("fixture, shape", [("net2d", (40, 48)), ("net3d", (16, 16, 24))])
def test_mirroring_makes_the_prediction_of_a_mirrored_image_the_mirrored_prediction(fixture, shape, request):
    """Averaged over the whole group of axis flips, the predictor commutes with each flip (one tile: no tile grid
    to break the symmetry); one pass alone does not, and the mirrored mean is the mean of the flipped passes."""
    network = request.getfixturevalue(fixture)
    image01 = _image(shape)
    flipped_image = np.ascontiguousarray(np.flip(image01, axis=-1))

    def predict(image, mirror):
        return run_to_completion(tiled_probabilities([network], image, shape, mirror=mirror)).primary

    plain, mirrored = predict(image01, False), predict(image01, True)
    np.testing.assert_allclose(np.flip(predict(flipped_image, True), axis=-1), mirrored, atol=1e-5)
    assert np.abs(np.flip(predict(flipped_image, False), axis=-1) - plain).max() > 1e-3
    with torch.no_grad():
        batch = torch.from_numpy(image01)[None]
        passes = [torch.softmax(network.mask_logits(batch.flip(d) if d else batch), 1).flip(d) if d else
                  torch.softmax(network.mask_logits(batch), 1) for d in mirror_sets(len(shape))]
    np.testing.assert_allclose(mirrored, (sum(passes) / len(passes))[0].numpy(), atol=1e-5)


def test_ensemble_with_draws_and_two_networks(net2d):
    torch.manual_seed(1)
    other = DiffusionTwin(net2d.config).eval()
    image01 = _image((40, 40))
    single = run_to_completion(tiled_probabilities([net2d], image01, (32, 32), draws=2, seed=3))
    again = run_to_completion(tiled_probabilities([net2d], image01, (32, 32), draws=2, seed=3))
    pair = run_to_completion(tiled_probabilities([net2d, other], image01, (32, 32), draws=2, seed=3))
    for result in (single, pair):
        assert result.ensemble.shape == result.primary.shape == (2, 40, 40)
        np.testing.assert_allclose(result.ensemble.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(single.ensemble, again.ensemble)  # seeded draws
    np.testing.assert_array_equal(single.primary, pair.primary)  # the primary pass is the first network's
    assert not np.allclose(single.ensemble, single.primary)  # the draws add something
    assert not np.allclose(single.ensemble, pair.ensemble)
    uncertainty = normalised_entropy(pair.ensemble)
    assert uncertainty.shape == (40, 40) and 0 <= uncertainty.min() and uncertainty.max() <= 1


def test_multi_step_sampling(net2d):
    image01 = torch.from_numpy(_image((32, 32)))[None]
    with torch.no_grad():
        probs = sample_mask(net2d, image01, steps=4, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (1, 2, 32, 32)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 32))
    tiled = run_to_completion(tiled_probabilities([net2d], image01[0].numpy(), (32, 32), sampling_steps=3)).primary
    assert tiled.shape == (2, 32, 32)


# ----- checkpoint loading -----

def save_model(model_dir: Path, network: DiffusionTwin, threshold: float = 0.5) -> Path:
    """A model folder whose best.pt holds ``network``'s mask pathway."""
    save_checkpoint(model_dir / BEST, {"network": asdict(network.config), "mask_path": network.mask_path.state_dict(),
                                       "threshold": threshold, "twin": "teacher"})
    return model_dir


def fitted_model_dir(model_dir: Path) -> Path:
    """A model folder with a tiny 2D teacher briefly trained on blobs (for the tests of prediction paths)."""
    return save_model(model_dir, _fit(2, depth=2, base=4, shape=(32, 32), steps=30))


def _model_dir(tmp_path, network: DiffusionTwin, threshold=0.4):
    return save_model(tmp_path / "model", network, threshold)


def test_model_round_trip_predicts_like_the_network(tmp_path, net2d):
    model = SegmentationModel.load(_model_dir(tmp_path, net2d, 0.4))
    assert model.threshold == 0.4 and model.config == net2d.config
    (raw, _), = make_blobs_dataset(1, shape=(50, 44), seed=7)
    prediction = model.predict(raw, uncertainty=True, draws=1, tile=(32, 32))
    assert prediction.mask.shape == raw.shape and prediction.mask.dtype == np.uint8
    assert prediction.uncertainty.shape == raw.shape and prediction.uncertainty.dtype == np.float32
    assert 0 <= prediction.uncertainty.min() and prediction.uncertainty.max() <= 1
    expected = run_to_completion(tiled_probabilities([net2d], to_channels_first(raw), (32, 32))).primary
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(prediction.mask, probabilities_to_mask(expected, 0.4))
    assert model.predict(raw, tile=(32, 32)).uncertainty is None


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batch_norm_folding_keeps_the_function_and_removes_the_norms(spatial_dims):
    network = DiffusionTwin(NetworkConfig(spatial_dims=spatial_dims, image_channels=1, base_channels=4, depth=2))
    generator = torch.Generator().manual_seed(0)
    for module in network.mask_path.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):  # statistics as after training
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    network.eval()
    image = torch.rand((2, 1) + (16,) * spatial_dims, generator=generator)
    with torch.no_grad():
        expected = network.mask_logits(image)
        folded = copy.deepcopy(network)
        fold_batch_norm(folded.mask_path)
        actual = folded.mask_logits(image)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in folded.mask_path.modules())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_load_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        SegmentationModel.load(tmp_path / "nope")


def test_load_folder_without_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="no checkpoint"):
        SegmentationModel.load(tmp_path)


def test_load_corrupt_checkpoint(tmp_path, net2d):
    model_dir = _model_dir(tmp_path, net2d)
    data = (model_dir / BEST).read_bytes()
    (model_dir / BEST).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated") as info:
        SegmentationModel.load(model_dir)
    assert "\n" not in str(info.value)
    (model_dir / BEST).write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        SegmentationModel.load(model_dir)


def test_load_foreign_torch_file(tmp_path, net2d):
    model_dir = tmp_path / "foreign"
    model_dir.mkdir()
    torch.save({"state_dict": net2d.mask_path.state_dict(), "epoch": 3}, model_dir / BEST)
    with pytest.raises(ModelError, match="not a napari-diffseg checkpoint"):
        SegmentationModel.load(model_dir)
    torch.save(torch.zeros(3), model_dir / BEST)
    with pytest.raises(ModelError, match="not a napari-diffseg checkpoint"):
        SegmentationModel.load(model_dir)


def test_load_checkpoint_with_mismatched_weights(tmp_path, net2d):
    model_dir = tmp_path / "mismatch"
    wrong = DiffusionTwin(NetworkConfig(2, 1, 2, base_channels=net2d.config.base_channels * 2, depth=2))
    save_checkpoint(model_dir / BEST, {"network": asdict(net2d.config), "mask_path": wrong.mask_path.state_dict(),
                                       "threshold": 0.5})
    with pytest.raises(ModelError, match="does not fit"):
        SegmentationModel.load(model_dir)
    save_checkpoint(model_dir / BEST, {"mask_path": wrong.mask_path.state_dict()})
    with pytest.raises(ModelError, match="does not fit"):
        SegmentationModel.load(model_dir)


def test_wrong_kind_of_image_raises_input_error(tmp_path, net2d):
    model = SegmentationModel.load(_model_dir(tmp_path, net2d))
    rgb = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(InputError, match="2D grey.*2D RGB"):
        model.predict(rgb)
    with pytest.raises(InputError, match="3D grey"):
        model.predict(np.zeros((12, 40, 40), np.uint8))


def test_padded_image_is_cropped_back_in_place(net2d):
    # 38 x 46 is padded (at the far end) to multiples of 4 inside tiled_probabilities; the crop must undo exactly
    # that: compare with a direct pass on an edge-padded copy (a different padding, so only the interior matches)
    image01 = _image((38, 46), seed=4)
    probs = run_to_completion(tiled_probabilities([net2d], image01, (64, 64))).primary
    padded = np.pad(image01, [(0, 0), (0, 2), (0, 2)], mode="edge")
    with torch.no_grad():
        direct = torch.softmax(net2d.mask_logits(torch.from_numpy(padded)[None]), dim=1)[0, :, :38, :46].numpy()
    assert 0.01 < direct.argmax(0).mean() < 0.9
    interior = (slice(None), slice(0, 30), slice(0, 38))
    assert np.abs(probs - direct)[interior].mean() < 0.01  # a crop shifted by the 2 px of padding: about 0.1
    assert (probs.argmax(0) == direct.argmax(0)).mean() > 0.98  # shifted: about 0.86


def test_a_tile_grows_a_little_when_that_saves_a_row_of_tiles():
    from napari_diffseg.core.prediction.tiling import MAX_TILE_GROWTH, fit_tile, tile_starts

    tile = fit_tile(2048, 1024, 128, 8)  # 2 tiles of 1088 (1.06x the pixels computed) instead of 3 of 768 (1.13x)
    assert tile == 1088 and tile_starts(2048, tile, 128) == [0, 960]
    assert fit_tile(2048, 1024, 128, 8, max_growth=1.0) == 768 and len(tile_starts(2048, 768, 128)) == 3
    for length in (300, 1100, 1500, 2304, 4096, 20000):
        edge = fit_tile(length, 1024, 128, 8)
        starts = tile_starts(length, edge, 128)
        assert edge <= 1024 * MAX_TILE_GROWTH and edge % 8 == 0 or edge == length
        assert starts[-1] + edge >= length and all(b - a <= edge - 128 for a, b in zip(starts, starts[1:]))
