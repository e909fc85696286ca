"""Objects mode (#28), the pure parts behind napari: editing an instance mask object by object
(core/objects/edit.py: merge, delete, split at an erased line) and the per-object table of a whole project
(core/objects/measure.py: measure_project, measure_files, as the Predict panel and ``diffseg measure`` use them)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffseg.core.errors import InputError
from napari_diffseg.core.objects import edit, measure
from napari_diffseg.core.objects.files import objects_card
from napari_diffseg.core.project.store import Project


def _mask() -> np.ndarray:
    mask = np.zeros((20, 30), np.uint32)
    mask[2:8, 2:8] = 3
    mask[2:8, 8:14] = 7
    mask[12:18, 2:20] = 5
    return mask


def test_merge_makes_one_object_of_two_and_keeps_the_input():
    mask = _mask()
    merged = edit.merge_ids(mask, [7, 3])
    assert merged.dtype == mask.dtype and set(np.unique(merged)) == {0, 3, 5}
    assert (merged[2:8, 2:14] == 3).all()
    assert set(np.unique(mask)) == {0, 3, 5, 7}  # the input is unchanged
    assert set(np.unique(edit.merge_ids(mask, [3, 7], into=7))) == {0, 5, 7}
    with pytest.raises(InputError, match="two different"):
        edit.merge_ids(mask, [3, 3])
    with pytest.raises(InputError, match="no object with id 9"):
        edit.merge_ids(mask, [3, 9])
    with pytest.raises(InputError, match="background"):
        edit.merge_ids(mask, [0, 3])
    with pytest.raises(InputError, match="keeps one of"):
        edit.merge_ids(mask, [3, 7], into=5)


def test_delete_makes_an_object_background():
    mask = _mask()
    deleted = edit.delete_id(mask, 5)
    assert set(np.unique(deleted)) == {0, 3, 7} and (deleted[12:18, 2:20] == 0).all()
    with pytest.raises(InputError, match="no object with id 4"):
        edit.delete_id(mask, 4)


def test_split_at_an_erased_line_gives_the_pieces_new_ids():
    mask = _mask()
    with pytest.raises(InputError, match="one piece"):
        edit.split_by_components(mask, 5)
    cut = mask.copy()
    cut[12:18, 8] = 0  # the user erased a line across object 5: a small and a large piece
    split = edit.split_by_components(cut, 5)
    assert (split[12:18, 9:20] == 5).all()  # the largest piece keeps the id
    assert (split[12:18, 2:8] == 8).all()  # the other one: the next free id
    assert (split[2:8, 2:14] == mask[2:8, 2:14]).all()  # the other objects are untouched
    diagonal = np.zeros((6, 6), np.uint16)
    diagonal[:3, :3] = diagonal[3:, 3:] = 2  # touching at a corner only: two pieces
    assert set(np.unique(edit.split_by_components(diagonal, 2))) == {0, 2, 3}
    full = np.zeros((4, 4), np.uint8)
    full[0, 0], full[3, 3], full[0, 3] = 255, 255, 1
    with pytest.raises(InputError, match="beyond"):
        edit.split_by_components(full, 255)


def test_split_works_in_3d():
    volume = np.zeros((4, 10, 10), np.uint32)
    volume[:, 2:8, 2:8] = 1
    volume[2, :, :] = 0  # a cut plane
    split = edit.split_by_components(volume, 1)
    assert set(np.unique(split)) == {0, 1, 2} and (split[:2] != split[3:]).any()


def test_changed_pixels_is_an_edit_napari_can_undo():
    mask = _mask()
    after = edit.delete_id(mask, 3)
    where, values = edit.changed_pixels(mask, after)
    assert len(where) == 2 and len(values) == 36 and (values == 0).all()
    replayed = mask.copy()
    replayed[where] = values
    np.testing.assert_array_equal(replayed, after)


def test_measure_project_takes_each_images_current_mask(tmp_path):
    project = Project.create(tmp_path / "proj", config={"num_classes": 3, "objects": objects_card()})
    rng = np.random.default_rng(1)
    for index in range(3):
        project.add_image((rng.random((20, 30)) * 200).astype(np.uint8), name=f"img_{index}")
    project.save_label("img_0", _mask())
    classes = np.zeros((20, 30), np.uint8)
    classes[4:16, 4:24], classes[6:14, 6:12], classes[6:14, 15:22] = 2, 1, 1  # two interiors: two objects
    project.save_pseudo("img_1", classes, np.zeros((20, 30), np.float32), round_number=1, model_id="t", mean_uncertainty=0.1)
    results = list(measure.measure_project(project))
    assert [name for name, _ in results] == ["img_0", "img_1"]  # img_2 has no mask
    rows = results[0][1]
    assert [row["id"] for row in rows] == [3, 5, 7] and all(row["image"] == "img_0" for row in rows)
    first = _mask() == 3
    assert rows[0]["area"] == 36 and rows[0]["mean_intensity"] == pytest.approx(project.image("img_0")[first].mean())
    assert len(results[1][1]) == 2 == project.object_counts()["img_1"]  # as the Project table counts them
    regions = Project.create(tmp_path / "regions")
    with pytest.raises(InputError, match="regions project"):
        list(measure.measure_project(regions))


def test_measure_files_reads_and_checks_each_pair(tmp_path):
    import tifffile

    image = np.arange(600, dtype=np.uint8).reshape(20, 30)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_mask.tif", _mask().astype(np.uint16))
    tifffile.imwrite(tmp_path / "small.tif", image[:10])
    [(name, rows)] = list(measure.measure_files([("a", tmp_path / "a.tif", tmp_path / "a_mask.tif")]))
    assert name == "a" and [row["id"] for row in rows] == [3, 5, 7]
    with pytest.raises(InputError):
        list(measure.measure_files([("small", tmp_path / "small.tif", tmp_path / "a_mask.tif")]))
