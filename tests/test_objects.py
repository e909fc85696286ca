"""Objects mode's core (napari_diffseg/core/objects): targets, watershed decoding, the per-object table and the
StarDist / DSB 2018 object scores, on tiny synthetic instance masks."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from napari_diffseg.core.errors import InputError
from napari_diffseg.core.objects import decode, measure, metrics, targets


def _discs(shape=(48, 64), centres=((16, 16), (16, 31), (34, 46)), radius=8) -> np.ndarray:
    """Instance mask of discs; the first two touch (their centres 15 px apart, radius 8)."""
    yy, xx = np.indices(shape)
    instances = np.zeros(shape, np.uint16)
    for object_id, (cy, cx) in enumerate(centres, start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        instances[disc & (instances == 0)] = object_id
    return instances


def _probabilities_of(instances: np.ndarray, width: int = 1) -> np.ndarray:
    classes = targets.instances_to_classes(instances, width)
    return np.stack([(classes == k).astype(np.float32) for k in range(3)])


# ------------------------------------------------------------------------------------------------- targets
def test_three_class_target_separates_touching_objects():
    instances = _discs()
    classes = targets.instances_to_classes(instances)
    assert classes.dtype == np.uint8 and set(np.unique(classes)) == {0, 1, 2}
    assert np.array_equal(classes > 0, instances > 0)
    # the interiors of the two touching discs are not connected: a seed each
    from skimage import measure as skmeasure

    interiors = skmeasure.label(classes == targets.INTERIOR, connectivity=1)
    assert interiors.max() == 3
    # where disc 1 meets disc 2 both sides are boundary
    touching = np.argwhere((instances[:, :-1] == 1) & (instances[:, 1:] == 2))
    assert len(touching) > 0
    for y, x in touching:
        assert classes[y, x] == targets.BOUNDARY and classes[y, x + 1] == targets.BOUNDARY


def test_boundary_width_widens_the_band():
    instances = _discs()
    thin = (targets.instances_to_classes(instances, 1) == targets.BOUNDARY).sum()
    thick = (targets.instances_to_classes(instances, 2) == targets.BOUNDARY).sum()
    assert thick > 1.6 * thin


def test_thin_objects_keep_a_seed():
    instances = np.zeros((20, 20), np.uint16)
    instances[5, 2:18] = 1  # a one-pixel line
    instances[10:13, 4:7] = 2  # 3 x 3: all outline at width 1 but its centre
    instances[15, 15] = 3  # a single pixel
    classes = targets.instances_to_classes(instances, boundary_width=2)
    for object_id in (1, 2, 3):
        assert (classes[instances == object_id] == targets.INTERIOR).any(), object_id


def test_three_class_target_in_3d():
    zz, yy, xx = np.indices((12, 24, 24))
    instances = np.zeros((12, 24, 24), np.uint16)
    instances[(zz - 6) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2 <= 25] = 1
    instances[(zz - 6) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 25] = 2
    classes = targets.instances_to_classes(instances)
    assert classes.shape == instances.shape
    # a voxel with a background neighbour along z only is boundary too (3D neighbourhood)
    top = np.argwhere(instances[6] == 1)[0]
    z = np.nonzero(instances[:, top[0], top[1]] == 1)[0].min()
    assert classes[z, top[0], top[1]] == targets.BOUNDARY
    assert classes[6, 8, 8] == targets.INTERIOR
    recovered = decode.probabilities_to_instances(_probabilities_of(instances))
    assert recovered.max() == 2
    assert metrics.object_scores(instances, recovered)["ap_50_95"] == 1.0


def test_semantic_mask_is_split_with_a_warning(caplog):
    semantic = (_discs(centres=((10, 10), (30, 45)), radius=5) > 0).astype(np.uint8)
    with caplog.at_level(logging.WARNING):
        instances = targets.as_instances(semantic, name="a.tif")
    assert instances.max() == 2 and instances.dtype == np.uint16
    assert "split into 2 objects" in caplog.text and "a.tif" in caplog.text


def test_instance_ids_are_kept_and_dtype_grows():
    instances = _discs()
    assert np.array_equal(targets.as_instances(instances.astype(np.int32)), instances)
    big = np.zeros((4, 4), np.int64)
    big[0, 0] = 70_000
    big[1, 1] = 3
    assert targets.as_instances(big).dtype == np.uint32
    with pytest.raises(InputError, match="negative"):
        targets.as_instances(np.array([[0, -1], [2, 3]]))
    with pytest.raises(InputError, match="non-integer"):
        targets.as_instances(np.array([[0, 0.5], [2, 3]]))


# ------------------------------------------------------------------------------------------------- decode
def test_watershed_recovers_touching_objects_that_components_merge():
    instances = _discs()
    probabilities = _probabilities_of(instances)
    recovered = decode.probabilities_to_instances(probabilities)
    assert recovered.dtype == np.uint16 and recovered.max() == 3
    assert metrics.object_scores(instances, recovered)["ap_50_95"] == 1.0  # boundaries given back exactly
    merged = decode.semantic_to_instances(instances > 0)
    assert merged.max() == 2  # the two touching discs are one component


def test_decode_of_soft_probabilities_and_seedless_fragments():
    instances = _discs()
    probabilities = _probabilities_of(instances)
    rng = np.random.default_rng(0)
    soft = 0.8 * probabilities + 0.2 * rng.dirichlet((1, 1, 1), size=instances.shape).transpose(2, 0, 1)
    assert decode.probabilities_to_instances(soft).max() == 3
    # an object with boundary probability only (no confident interior) is still found, a 2-px speck is not
    extra = np.zeros((3, *instances.shape), np.float32)
    extra[0] = 1
    extra[:, 40:46, 2:8] = np.array([0.1, 0.3, 0.6])[:, None, None]
    extra[:, 2, 60] = np.array([0.1, 0.3, 0.6])
    extra[:, 2, 61] = np.array([0.1, 0.3, 0.6])
    found = decode.probabilities_to_instances(extra)
    assert found.max() == 1 and (found[40:46, 2:8] == 1).all()


def _joined(instances: np.ndarray) -> np.ndarray:
    """Class probabilities of ``instances`` as an undertrained network gives them: the boundary between touching
    objects missed (painted interior), so their interiors join into one seed; the outer boundary kept."""
    probabilities = _probabilities_of(instances)
    outer = targets.instances_to_classes((instances > 0).astype(np.uint16)) == targets.BOUNDARY
    between = (probabilities[targets.BOUNDARY] == 1) & ~outer
    probabilities[:, between] = np.array([0, 1, 0], np.float32)[:, None]
    return probabilities


def test_seeds_joined_at_a_neck_are_split_and_round_objects_are_not(monkeypatch):
    instances = _discs()
    joined = _joined(instances)
    seeds = decode.split_seeds(joined[targets.INTERIOR] > 0.5)
    assert len(np.unique(seeds[seeds > 0])) == 3  # the joined pair is cut in two, the lone disc kept
    split = decode.probabilities_to_instances(joined)
    assert split.max() == 3 and metrics.object_scores(instances, split)["ap50"] == 1.0
    # without the split, the two touching discs are one object (what the decoding gave before)
    monkeypatch.setattr(decode, "SPLIT_DEPTH", 2.0)
    assert decode.probabilities_to_instances(joined).max() == 2
    monkeypatch.undo()
    # convex objects of any size and elongation stay whole: a large disc, a long ellipse, a thin bar
    yy, xx = np.indices((160, 160))
    shapes = np.zeros((160, 160), np.uint16)
    shapes[(yy - 50) ** 2 + (xx - 50) ** 2 <= 40 ** 2] = 1
    shapes[((yy - 130) / 12.0) ** 2 + ((xx - 80) / 60.0) ** 2 <= 1] = 2
    shapes[20:24, 110:158] = 3
    whole = decode.probabilities_to_instances(_probabilities_of(shapes))
    assert whole.max() == 3 and metrics.object_scores(shapes, whole)["ap50"] == 1.0


def test_split_seeds_keep_one_id_per_object_block_by_block():
    """Seeds joined across block borders are split alike in every window that holds them whole."""
    from napari_diffseg.core.objects import blocks

    truth = _discs_across_borders()
    classes = np.argmax(_joined(truth), axis=0).astype(np.uint8)
    assert decode.semantic_to_instances(classes == targets.INTERIOR).max() < truth.max()  # seeds do join
    whole = decode.classes_to_instances(classes)
    assert metrics.object_scores(truth, whole)["ap50"] == 1.0
    out = np.zeros(truth.shape, np.uint32)
    for _ in blocks.decode_blocks(classes, out, block=(32, 32), margin=(16, 16)):
        pass
    pairs = np.unique(np.stack([whole.ravel(), out.ravel().astype(whole.dtype)]), axis=1)
    assert pairs.shape[1] == int(whole.max()) + 1  # the same partition as the whole image's, ids aside


def test_decode_writes_uint32_beyond_65535_objects():
    classes = np.zeros((3 * 256, 3 * 256), np.uint8)
    classes[::3, ::3] = targets.INTERIOR  # 65,536 one-pixel objects
    instances = decode.classes_to_instances(classes, min_size=1)
    assert instances.dtype == np.uint32 and int(instances.max()) == 65_536


# ------------------------------------------------------------------------------------------------- measure
def test_object_table_and_csv(tmp_path):
    instances = np.zeros((10, 12), np.uint16)
    instances[1:3, 2:6] = 4  # 8 px
    instances[5:10, 7:10] = 9  # 15 px
    image = np.arange(120, dtype=np.float32).reshape(10, 12)
    rows = measure.object_table(instances, image, name="img")
    assert [row["id"] for row in rows] == [4, 9]
    first = rows[0]
    assert first["image"] == "img" and first["area"] == 8
    assert (first["centroid_y"], first["centroid_x"]) == (1.5, 3.5)
    assert first["mean_intensity"] == pytest.approx(image[1:3, 2:6].mean())
    assert (first["bbox_y_min"], first["bbox_x_min"], first["bbox_y_max"], first["bbox_x_max"]) == (1, 2, 3, 6)
    rgb = np.stack([image, 2 * image, 3 * image], axis=-1)
    assert measure.object_table(instances, rgb)[1]["mean_intensity_2"] == pytest.approx(3 * image[5:10, 7:10].mean())
    volume = measure.object_table(np.stack([instances, instances]))
    assert volume[1]["volume"] == 30 and "centroid_z" in volume[1]
    path = tmp_path / "table.csv"
    measure.write_table(rows, path)
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert [row["id"] for row in read] == ["4", "9"] and read[1]["area"] == "15"
    with pytest.raises(InputError, match="differ in shape"):
        measure.object_table(instances, image[:5])


# ------------------------------------------------------------------------------------------------- metrics
def test_scores_follow_the_stardist_definition():
    truth = np.zeros((20, 40), np.uint16)
    truth[0:10, 0:10] = 1  # matched exactly
    truth[0:10, 20:30] = 2  # predicted with IoU 0.833: TP up to 0.8, FN + FP above
    truth[12:18, 0:6] = 3  # missed: FN
    pred = np.zeros_like(truth)
    pred[0:10, 0:10] = 7
    pred[0:10, 20:32] = 8  # intersection 100, union 120
    pred[12:18, 30:36] = 9  # nothing there: FP
    scores = metrics.object_scores(truth, pred)
    assert (scores["n_true"], scores["n_pred"], scores["count_error"]) == (3, 3, 0)
    assert scores["ap50"] == pytest.approx(2 / 4)  # TP 2, FP 1, FN 1
    assert scores["f1"] == pytest.approx(4 / 6)
    at = {m.threshold: m for m in metrics.match(truth, pred)}
    assert at[0.8].tp == 2 and at[0.85].tp == 1  # 0.833 is above 0.8, below 0.85
    expected = np.mean([2 / 4] * 7 + [1 / 5] * 3)
    assert scores["ap_50_95"] == pytest.approx(expected)


def test_matching_is_one_to_one_below_one_half():
    truth = np.zeros((4, 8), np.uint16)
    truth[:, 0:4] = 1
    truth[:, 4:8] = 2
    pred = np.ones_like(truth)  # one object covering both: IoU 0.5 with each
    at = metrics.match(truth, pred, thresholds=(0.3, 0.5, 0.51))
    assert [m.tp for m in at] == [1, 1, 0]
    assert at[0].fn == 1 and at[0].fp == 0


def test_pooled_scores_sum_counts_over_images():
    truth = _discs()
    perfect = metrics.pooled_scores([(truth, truth), (truth, np.zeros_like(truth))])
    assert perfect["ap50"] == pytest.approx(3 / 6) and perfect["count_error_abs"] == 1.5
    assert perfect["images"] == 2


# ------------------------------------------------------------------------------------------------- blocks
def _discs_across_borders(shape=(96, 96), block=32, radius=6) -> np.ndarray:
    """Discs centred on block borders and corners (and some inside blocks), several touching."""
    yy, xx = np.indices(shape)
    instances = np.zeros(shape, np.uint32)
    centres = [(block, block), (block, 2 * block), (2 * block, block), (block - 5, 2 * block + 7), (16, block),
               (block, 80), (70, 70), (70, 81), (90, 10), (50, 50), (50, 61)]
    for object_id, (cy, cx) in enumerate(centres, start=1):
        instances[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (instances == 0)] = object_id
    return instances


def test_block_decoding_keeps_one_id_per_object_across_block_borders():
    from napari_diffseg.core.objects import blocks

    truth = _discs_across_borders()
    classes = targets.instances_to_classes(truth)
    whole = decode.classes_to_instances(classes)
    out = np.zeros(truth.shape, np.uint32)
    steps = blocks.decode_blocks(classes, out, block=(32, 32), margin=(16, 16))
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as stop:
            decoded = stop.value
            break
    assert [p.done for p in progress] == list(range(1, 10)) and decoded.cut == 0
    assert decoded.count == int(truth.max()) == int(whole.max())
    # every true object is one id of the block-by-block result, exactly as the whole-image decode gives it
    for object_id in range(1, int(truth.max()) + 1):
        ids = np.unique(out[truth == object_id])
        assert len(ids) == 1 and ids[0] > 0, (object_id, ids)
    assert metrics.object_scores(whole, out)["ap_50_95"] == 1.0
    # too small a margin cuts the objects wider than it, and says so
    small = np.zeros(truth.shape, np.uint32)
    steps = blocks.decode_blocks(classes, small, block=(32, 32), margin=(2, 2))
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            assert stop.value.cut > 0
            break


def test_block_decoding_in_3d_and_the_instance_tiff(tmp_path):
    import tifffile
    import zarr

    from napari_diffseg.core.objects import blocks

    zz, yy, xx = np.indices((24, 40, 40))
    truth = np.zeros((24, 40, 40), np.uint32)
    for object_id, (cz, cy, cx) in enumerate([(12, 20, 20), (12, 20, 29), (4, 8, 8), (20, 30, 10)], start=1):
        truth[((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= 20) & (truth == 0)] = object_id
    classes = targets.instances_to_classes(truth)
    zarr.open_array(str(tmp_path / "classes.zarr"), mode="w", shape=classes.shape, dtype=np.uint8,
                    chunks=(12, 20, 20))[:] = classes
    target = tmp_path / "objects.tif"
    steps = blocks.decode_large(tmp_path / "classes.zarr", target, block=(12, 20, 20), margin=(6, 8, 8))
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            assert stop.value.count == 4
            break
    written = tifffile.imread(target)
    assert written.dtype == np.uint16 and written.shape == truth.shape
    assert metrics.object_scores(truth, written)["ap50"] == 1.0
    assert not (tmp_path / ".objects.objects.zarr").exists()


def _touching_grid(shape=(96, 96), step=7, radius=4) -> np.ndarray:
    """A regular grid of discs that touch their neighbours: boundary pixels equidistant from two seeds abound."""
    yy, xx = np.indices(shape)
    instances = np.zeros(shape, np.uint32)
    object_id = 1
    for cy in range(3, shape[0], step):
        for cx in range(3, shape[1], step):
            instances[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (instances == 0)] = object_id
            object_id += 1
    return instances


@pytest.mark.parametrize("tie_break", [True, False])
def test_block_decoding_equals_the_whole_image_decoding_where_distances_tie(tie_break, monkeypatch):
    """Equal distances to two seeds are decided by the pixel's place in the whole image, not by the flood's order
    in a window; without that (TIE_BREAK 0) windows give some boundary pixels to other objects than the whole
    image does, and objects are lost or cut (found on a 25-megapixel image of touching discs)."""
    from napari_diffseg.core.objects import blocks

    if not tie_break:
        monkeypatch.setattr(decode, "TIE_BREAK", 0.0)
    classes = targets.instances_to_classes(_touching_grid((128, 128)), boundary_width=2)
    rng = np.random.default_rng(0)  # a network's classes are not that regular: some object pixels swap classes
    swap = (rng.random(classes.shape) < 0.15) & (classes > 0)
    classes[swap] = rng.integers(1, 3, size=classes.shape)[swap]
    whole = decode.classes_to_instances(classes)
    out = np.zeros(classes.shape, np.uint32)
    for _ in blocks.decode_blocks(classes, out, block=(32, 32), margin=(16, 16)):
        pass
    pairs = np.unique(np.stack([whole.ravel(), out.ravel().astype(whole.dtype)]), axis=1)
    same = pairs.shape[1] == int(whole.max()) + 1  # one-to-one: the same partition, ids aside
    assert same == tie_break
    ap50 = metrics.object_scores(whole, out)["ap50"]
    assert (ap50 == 1.0) == tie_break  # without it, windows that disagree even lose or cut objects
