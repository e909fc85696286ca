"""Fourier appearance transfer (core/method/appearance.py): labelled patches take the pool's low-frequency
appearance and keep their structures."""

from __future__ import annotations

import pytest
import torch

from napari_diffseg.core.method.appearance import low_frequency_mask, transfer_appearance


def _structures(batch: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Bright discs-like blobs (high-frequency content) on a dim background, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((batch, 1, *shape), generator=generator)
    return (0.1 + 0.6 * (noise > 0.9).float()).clamp(0, 1)


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    return (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])


def test_the_low_frequency_box_holds_the_zero_frequency_and_its_neighbours_only():
    mask = low_frequency_mask((64, 40), 0.05)
    assert mask[0, 0] and mask[1, 1] and mask[-1, -2] and mask[3, 2]
    assert not mask[32, 0] and not mask[0, 20] and not mask[4, 0] and not mask[0, 3]
    assert low_frequency_mask((8, 16, 16)).shape == (8, 16, 16)
    assert low_frequency_mask((64, 40), 0.0).sum() == 1  # the mean alone


def test_labelled_patches_take_the_pools_brightness_and_keep_their_structures():
    images = _structures(6, (64, 64))
    references = torch.full_like(images, 0.8) + 0.05 * torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    out = transfer_appearance(images, references, torch.Generator().manual_seed(2), probability=1.0)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    shift = out.mean(dim=(1, 2, 3)) - images.mean(dim=(1, 2, 3))
    assert bool((shift >= -1e-6).all()) and float(shift.max()) > 0.1  # brighter, as the pool is, by a random amount
    for index in range(images.shape[0]):  # the structures (high frequencies) are where they were
        a, b = _laplacian(images[index, 0]).flatten(), _laplacian(out[index, 0]).flatten()
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9


def test_nothing_changes_without_a_draw_and_the_same_seed_gives_the_same_views():
    images = _structures(4, (32, 32))
    references = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(transfer_appearance(images, references, torch.Generator(), probability=0.0), images)
    same = transfer_appearance(images, images, torch.Generator().manual_seed(0), probability=1.0)
    assert torch.allclose(same, images, atol=1e-5)  # its own appearance: the patch itself
    first = transfer_appearance(images, references, torch.Generator().manual_seed(5), probability=0.5)
    second = transfer_appearance(images, references, torch.Generator().manual_seed(5), probability=0.5)
    assert torch.equal(first, second)
    many = _structures(64, (16, 16))
    out = transfer_appearance(many, torch.full_like(many, 0.9), torch.Generator().manual_seed(6), probability=0.5)
    changed = sum(not torch.equal(out[i], many[i]) for i in range(64))
    assert 16 <= changed <= 48  # about half the patches drawn (probability 0.5), the others kept as they were


def test_volumes_and_colour_and_a_shape_mismatch():
    volumes = _structures(2, (8, 16, 16))
    out = transfer_appearance(volumes, torch.full_like(volumes, 0.7), torch.Generator().manual_seed(0), 1.0)
    assert out.shape == volumes.shape and float(out.mean()) > float(volumes.mean())
    rgb = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert transfer_appearance(rgb, torch.rand((2, 3, 32, 32)), torch.Generator(), 1.0).shape == rgb.shape
    with pytest.raises(ValueError, match="shape"):
        transfer_appearance(rgb, torch.rand((2, 3, 16, 16)), torch.Generator(), 1.0)


def test_the_method_gives_labelled_patches_the_pools_appearance_and_labels_only_never_does(tmp_path, monkeypatch):
    from napari_diffseg.core.data.synthetic import make_blobs_dataset
    from napari_diffseg.core.data.training_set import training_data_from_arrays
    from napari_diffseg.core.method import steps
    from napari_diffseg.core.method.training import train
    from conftest import tiny_train_config

    calls = []
    real = steps.transfer_appearance

    def recording(images, references, generator, probability, fraction):
        calls.append((tuple(images.shape), tuple(references.shape), probability))
        return real(images, references, generator, probability, fraction)

    monkeypatch.setattr(steps, "transfer_appearance", recording)
    pairs = make_blobs_dataset(3, (48, 48), seed=1)
    data = training_data_from_arrays([p[0] for p in pairs], {0: pairs[0][1]}, ["a", "b", "c"])
    list(train(data, tiny_train_config(appearance=0.5, max_steps=4), tmp_path / "method"))
    assert len(calls) == 4 and all(shape == refs and p == 0.5 for shape, refs, p in calls)  # every step, from step 1
    calls.clear()
    list(train(data, tiny_train_config(appearance=0.5, max_steps=4, labels_only=True), tmp_path / "labels_only"))
    list(train(data, tiny_train_config(max_steps=4), tmp_path / "default"))  # off by default
    assert calls == []
